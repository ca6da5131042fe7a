#!/usr/bin/env bash
# Starts the whole system in one process: `jetflow all` (gateway on :8080, the order,
# inventory and payment actors, the simulated payment provider on :8081, SQLite in ./data, and a
# local nats-server with JetStream unless NATS_URL points at one). Installs nats-server if
# missing. Extra arguments go to `jetflow all`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -z "${NATS_URL:-}" ]; then
  bash .ci/install-nats-server.sh
  export NATS_SERVER_BIN="$ROOT/.tools/bin/nats-server"
fi
cargo build --release --locked -p jetflow --bin jetflow
exec "$ROOT/target/release/jetflow" all "$@"
