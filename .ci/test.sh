#!/usr/bin/env bash
# Runs every test of jetflow on a machine that has only the Rust toolchain: installs what is
# missing (nats-server, PostgreSQL), builds the `jetflow` binary the process tests start, then
# checks formatting and lints and runs the whole workspace's tests (unit, schema, actor test kit,
# integration and fault injection against real nats-server processes, SQLite and PostgreSQL).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash .ci/install-nats-server.sh
bash .ci/ensure-postgres.sh
bash .ci/check-deploy.sh
export NATS_SERVER_BIN="$ROOT/.tools/bin/nats-server"
export JETFLOW_TEST_PG_ADMIN_URL="${JETFLOW_TEST_PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

if [ "${JETFLOW_SKIP_LINT:-0}" != 1 ]; then
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi
cargo build --workspace --bins --examples --locked

# Tests must leave nothing behind: no process started from this checkout (a `jetflow`, a
# nats-server from .tools) and no /tmp/jetflow-* directory that was not there before.
leftovers() {
  { pgrep -af "^($ROOT/target/[a-z]+/(jetflow|examples/[a-z_]+)|$ROOT/.tools/bin/nats-server)( |$)" || true; } | sed 's/^/process /'
  find /tmp -maxdepth 1 -name 'jetflow-*' 2>/dev/null | sort | sed 's/^/directory /'
}
before="$(leftovers)"
status=0
cargo test --workspace --locked --no-fail-fast "$@" || status=$?
bash .ci/check-api.sh || status=$?
after="$(leftovers)"
new="$(comm -13 <(echo "$before" | sort) <(echo "$after" | sort) | sed '/^$/d' || true)"
if [ -n "$new" ]; then
  echo "the tests left these behind:" >&2
  echo "$new" >&2
  status=1
fi
exit "$status"
