#!/usr/bin/env bash
# Validates everything under deploy/ and docker-compose.yml with the real tools, installing
# Debian's prometheus (promtool, also used by the Prometheus integration test) and
# docker-compose (validates without a Docker engine) when missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
  echo "installing ${need[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

promtool check config deploy/prometheus/prometheus.yml
NATS_PASSWORD=check POSTGRES_PASSWORD=check docker-compose -f docker-compose.yml config -q
echo "docker-compose.yml is valid"
for f in deploy/nats/*.conf; do
  NATS_PASSWORD=check "$ROOT/.tools/bin/nats-server" -t -c "$f" >/dev/null
done
echo "NATS configs are valid"
python3 - <<'PY'
import glob, json
for f in glob.glob("deploy/grafana/dashboards/*.json"):
    d = json.load(open(f))
    assert d["panels"], f
    for p in d["panels"]:
        assert p["targets"] and all(t["expr"] for t in p["targets"]), (f, p["title"])
print("Grafana dashboards are valid JSON with a query per panel")
try:
    import yaml
except ImportError:
    yaml = None
if yaml:
    kinds = []
    for f in sorted(glob.glob("deploy/k8s/*.yaml")) + glob.glob("deploy/grafana/provisioning/*/*.yml"):
        for doc in yaml.safe_load_all(open(f)):
            if doc and "kind" in doc:
                assert doc.get("apiVersion"), (f, doc["kind"])
                kinds.append(doc["kind"])
    for k in ["Deployment", "Service", "PodDisruptionBudget", "StatefulSet"]:
        assert k in kinds, k
    print(f"Kubernetes manifests parse ({len(kinds)} objects)")
PY
