#!/usr/bin/env python3
"""Writes dashboards/jetflow.json: one panel per question an operator asks at 3 AM.

Edit the PANELS list and run `python3 deploy/grafana/generate.py`. The Prometheus test in
integration/tests/prometheus.rs runs every panel's query against a real Prometheus scraping a
loaded `jetflow all` and fails if any returns no data.
"""
import json, os

# (title, unit, [(expr, legend)], description)
PANELS = [
    ("Orders by status", "short", [("sum by (status) (jetflow_orders_by_status)", "{{status}}")],
     "Orders in each status right now (from the order role's database)."),
    ("Order rate by outcome", "ops", [("sum by (status) (rate(jetflow_orders_total[1m]))", "{{status}}")],
     "Orders reaching each status per second."),
    ("Mailbox depth per actor", "short", [("sum by (actor) (jetflow_actor_mailbox_depth)", "{{actor}}")],
     "Messages sent to an actor and not yet handled. Bounded by the mailbox capacity: a flat line at the cap means backpressure."),
    ("Handle time p99 per actor", "s", [("histogram_quantile(0.99, sum by (actor, le) (rate(jetflow_actor_handle_seconds_bucket[1m])))", "{{actor}}")],
     "From enqueue to reply, 99th percentile."),
    ("Actor restarts", "short", [("sum by (actor) (increase(jetflow_actor_restarts_total[5m]))", "{{actor}}")],
     "Restarts by the supervisor (after a panic or a stop). An actor over its budget is reported by jetflow_actor_failed."),
    ("Consumer pending", "short", [("sum by (consumer) (jetflow_consumer_pending)", "{{consumer}}")],
     "Messages in the stream not yet delivered to each durable consumer (read from JetStream)."),
    ("Consumer ack pending", "short", [("sum by (consumer) (jetflow_consumer_ack_pending)", "{{consumer}}")],
     "Delivered, not yet acked."),
    ("Dead letters (15 min)", "short", [("sum by (subject) (increase(jetflow_dlq_messages_total[15m]))", "{{subject}}")],
     "Messages dead-lettered by original subject. `jetflow dlq list` shows them; `jetflow dlq replay` sends them back."),
    ("Circuit breaker state", "short", [("max by (breaker) (jetflow_breaker_state)", "{{breaker}}")],
     "0 closed, 1 half-open, 2 open."),
    ("Breaker calls", "ops", [("sum by (result) (rate(jetflow_breaker_calls_total[1m]))", "{{result}}")],
     "Calls through the payment breaker by result (success, failure, timeout, rejected while open)."),
    ("HTTP requests", "reqps", [("sum by (route, status) (rate(jetflow_http_requests_total[1m]))", "{{route}} {{status}}")],
     "Gateway requests per second by route and status."),
    ("HTTP errors", "percentunit", [("(sum(rate(jetflow_http_requests_total{status=~\"5..\"}[1m])) or vector(0)) / clamp_min(sum(rate(jetflow_http_requests_total[1m])), 1e-9)", "5xx ratio"),
                                    ("(sum(rate(jetflow_http_requests_total{status=~\"4..\"}[1m])) or vector(0)) / clamp_min(sum(rate(jetflow_http_requests_total[1m])), 1e-9)", "4xx ratio")],
     "Share of requests answered 5xx (our fault, e.g. NATS down) and 4xx (the client's)."),
    ("HTTP latency", "s", [("histogram_quantile(0.5, sum by (le) (rate(jetflow_http_request_seconds_bucket[1m])))", "p50"),
                           ("histogram_quantile(0.99, sum by (le) (rate(jetflow_http_request_seconds_bucket[1m])))", "p99")],
     "Gateway latency; POST /orders includes the JetStream PubAck."),
    ("NATS connected", "short", [("min by (instance) (jetflow_nats_connected)", "{{instance}}")],
     "1 while the bridge is connected."),
    ("Published and consumed", "ops", [("sum by (subject) (rate(jetflow_nats_published_total[1m]))", "pub {{subject}}"),
                                       ("sum by (outcome) (rate(jetflow_nats_consumed_total[1m]))", "consumed {{outcome}}")],
     "Events published (after PubAck) and consumed by outcome (ack, retry, dead_letter)."),
    ("Outbox pending", "short", [("sum by (instance) (jetflow_outbox_pending)", "{{instance}}")],
     "Committed events not yet published. Grows while NATS is unreachable, drains after."),
]

def panel(i, title, unit, targets, description):
    return {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(65 + j), "expr": expr, "legendFormat": legend,
             "datasource": {"type": "prometheus", "uid": "prometheus"}}
            for j, (expr, legend) in enumerate(targets)
        ],
    }

dashboard = {
    "uid": "jetflow-overview",
    "title": "jetflow: order pipeline",
    "tags": ["jetflow"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "10s",
    "time": {"from": "now-1h", "to": "now"},
    "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards", "jetflow.json")
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
print(f"wrote {out} ({len(PANELS)} panels)")
