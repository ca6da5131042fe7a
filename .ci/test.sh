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
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast "$@"
