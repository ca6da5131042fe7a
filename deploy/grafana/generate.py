#!/usr/bin/env python3
"""Writes dashboards/jetflow.json: one panel per question an operator asks at 3 AM.

Edit the PANELS list and run `python3 deploy/grafana/generate.py` (`--check` only compares and
exits 1 when the committed JSON is stale; .ci/check-deploy.sh runs it). The Prometheus test in
integration/tests/observability.rs runs every panel's query against a real Prometheus scraping a
loaded `jetflow all` and fails if any returns no data: a panel may only query jetflow's own
metrics (and `up`), never the NATS exporter's.

Datasource: every panel and query uses the `${datasource}` template variable (type datasource,
any Prometheus). The JSON declares the input DS_PROMETHEUS (`__inputs`) and what it needs
(`__requires`), so Grafana's "Import dashboard" asks for a Prometheus datasource and selects
it; when provisioned from a file (deploy/grafana/provisioning), the variable falls back to the
first Prometheus datasource and can be switched at the top of the dashboard.
"""
import json, os, sys

# The simulated payment provider's routes (deliberate 503s): not jetflow's errors.
NOT_PROVIDER = 'route!~"/charges(/.*)?|/_control"'

# (title, unit, [(expr, legend)], description)
PANELS = [
    ("Orders by status", "short", [("max by (status) (jetflow_orders_by_status)", "{{status}}")],
     "Orders in each status right now, read from the database by each order replica (the same numbers on every replica: max, not sum)."),
    ("Order rate by outcome", "ops", [("sum by (status) (rate(jetflow_orders_total[1m]))", "{{status}}")],
     "Orders reaching each status per second."),
    ("Mailbox depth per actor and instance", "short", [("sum by (actor, shard) (jetflow_actor_mailbox_depth)", "{{actor}} #{{shard}}")],
     "Messages sent to an actor and not yet handled, per instance of its pool (`shard`) (OrderActor, StockActor, PaymentActor: batches of deliveries; NatsBridge, BreakerActor: requests). Bounded by the mailbox capacity: a line that stays up means the actor is the bottleneck and its consumers pull less (backpressure)."),
    ("Handle time p99 per actor", "s", [("histogram_quantile(0.99, sum by (actor, le) (rate(jetflow_actor_handle_seconds_bucket[1m])))", "{{actor}}")],
     "From enqueue to reply, 99th percentile."),
    ("Actor restarts", "short", [("sum by (actor) (increase(jetflow_actor_restarts_total[5m]))", "{{actor}}")],
     "Restarts by the supervisor (after a panic or a stop). An actor over its budget is reported by jetflow_actor_failed."),
    ("Consumer pending", "short", [("max by (consumer) (jetflow_consumer_pending)", "{{consumer}}")],
     "Messages in the stream not yet delivered to each durable consumer (read from JetStream; every replica of a role reports the same backlog of its shared consumer: max, not sum)."),
    ("Consumer ack pending", "short", [("max by (consumer) (jetflow_consumer_ack_pending)", "{{consumer}}")],
     "Delivered, not yet acked (read from JetStream, the same on every replica: max, not sum)."),
    ("Dead letters (15 min)", "short", [("sum by (subject) (increase(jetflow_dlq_messages_total[15m]))", "{{subject}}")],
     "Messages dead-lettered by original subject. `jetflow dlq list` shows them; `jetflow dlq replay` sends them back."),
    ("Circuit breaker state", "short", [("max by (breaker) (jetflow_breaker_state)", "{{breaker}}")],
     "0 closed, 1 half-open, 2 open."),
    ("Breaker calls", "ops", [("sum by (result) (rate(jetflow_breaker_calls_total[1m]))", "{{result}}")],
     "Calls through the payment breaker by result (success, failure, timeout, rejected while open)."),
    ("HTTP requests", "reqps", [("sum by (route, status) (rate(jetflow_http_requests_total[1m]))", "{{route}} {{status}}")],
     "Requests per second by route and status (the simulated payment provider's /charges and /_control routes included)."),
    ("HTTP errors", "percentunit", [(f"(sum(rate(jetflow_http_requests_total{{status=~\"5..\", {NOT_PROVIDER}}}[1m])) or vector(0)) / clamp_min(sum(rate(jetflow_http_requests_total{{{NOT_PROVIDER}}}[1m])), 1e-9)", "5xx ratio"),
                                    (f"(sum(rate(jetflow_http_requests_total{{status=~\"4..\", {NOT_PROVIDER}}}[1m])) or vector(0)) / clamp_min(sum(rate(jetflow_http_requests_total{{{NOT_PROVIDER}}}[1m])), 1e-9)", "4xx ratio")],
     "Share of jetflow's requests answered 5xx (our fault, e.g. NATS down) and 4xx (the client's), as the JetflowHttpErrors alert counts them: without the simulated payment provider's routes, whose 503s are deliberate."),
    ("HTTP latency", "s", [(f"histogram_quantile(0.5, sum by (le) (rate(jetflow_http_request_seconds_bucket{{{NOT_PROVIDER}}}[1m])))", "p50"),
                           (f"histogram_quantile(0.99, sum by (le) (rate(jetflow_http_request_seconds_bucket{{{NOT_PROVIDER}}}[1m])))", "p99")],
     "jetflow's HTTP latency (without the simulated payment provider's routes); POST /orders includes the JetStream PubAck."),
    ("NATS connected", "short", [("min by (instance) (jetflow_nats_connected)", "{{instance}}")],
     "1 while the bridge is connected."),
    ("Published and consumed", "ops", [("sum by (subject) (rate(jetflow_nats_published_total[1m]))", "pub {{subject}}"),
                                       ("sum by (outcome) (rate(jetflow_nats_consumed_total[1m]))", "consumed {{outcome}}")],
     "Events published (after PubAck) and consumed by outcome (ack, retry, dead_letter)."),
    ("Outbox pending", "short", [("sum by (instance) (jetflow_outbox_pending)", "{{instance}}")],
     "Committed events not yet published. Grows while NATS is unreachable, drains after."),
    ("Scrape targets up", "short", [("sum by (job) (up)", "{{job}}")],
     "Targets Prometheus scrapes successfully, by job (jetflow, payment-provider, nats): a drop is a process or a NATS exporter down (JetflowTargetDown)."),
]

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def panel(i, title, unit, targets, description):
    return {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(65 + j), "expr": expr, "legendFormat": legend, "datasource": DATASOURCE}
            for j, (expr, legend) in enumerate(targets)
        ],
    }


dashboard = {
    # Import: Grafana asks for a Prometheus datasource for DS_PROMETHEUS and substitutes
    # ${DS_PROMETHEUS} below (the variable's initial value) with the one chosen.
    "__inputs": [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "The Prometheus that scrapes jetflow (deploy/prometheus/prometheus.yml)",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ],
    "__requires": [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
    ],
    "id": None,
    "uid": "jetflow-overview",
    "title": "jetflow: order pipeline",
    "tags": ["jetflow"],
    "timezone": "browser",
    "editable": True,
    "schemaVersion": 39,
    "version": 1,
    "refresh": "10s",
    "time": {"from": "now-1h", "to": "now"},
    "templating": {
        "list": [
            {
                "name": "datasource",
                "label": "Datasource",
                "type": "datasource",
                "query": "prometheus",
                "regex": "",
                "current": {"selected": True, "text": "${DS_PROMETHEUS}", "value": "${DS_PROMETHEUS}"},
                "options": [],
                "refresh": 1,
                "hide": 0,
                "includeAll": False,
                "multi": False,
            }
        ]
    },
    "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
}

text = json.dumps(dashboard, indent=2) + "\n"
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards", "jetflow.json")
if "--check" in sys.argv[1:]:
    with open(out) as f:
        if f.read() != text:
            sys.exit(f"{out} is stale: run python3 deploy/grafana/generate.py")
    print(f"{out} is up to date ({len(PANELS)} panels)")
else:
    with open(out, "w") as f:
        f.write(text)
    print(f"wrote {out} ({len(PANELS)} panels)")
