#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on $PGHOST:$PGPORT (default 127.0.0.1:5432) with a
# `postgres` superuser reachable without a password from loopback and `ssl = on` with Debian's
# snakeoil certificate (the TLS tests verify it), installing and starting Debian's package if
# nothing answers. Idempotent, no prompts. The PostgreSQL tests need it and fail loudly without
# it: they never skip.
set -euo pipefail

HOST="${PGHOST:-127.0.0.1}"
PORT="${PGPORT:-5432}"

ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$HOST" -p "$PORT"
  else
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
  fi
}

if [ "$(id -u)" != 0 ]; then
  SUDO="sudo -n"
else
  SUDO=""
fi

SNAKEOIL=/etc/ssl/certs/ssl-cert-snakeoil.pem
# Turns TLS on (Debian's snakeoil certificate, made by the ssl-cert package) on a running server
# that has it off, through SQL, so it works whoever installed the server.
ensure_ssl() {
  local on
  if ! command -v psql >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql-client >/dev/null
  fi
  on="$(psql -h "$HOST" -p "$PORT" -U postgres -d postgres -tAc "SHOW ssl")"
  if [ "$on" = on ]; then
    return 0
  fi
  echo "turning on TLS in PostgreSQL (snakeoil certificate)"
  if [ ! -f "$SNAKEOIL" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ssl-cert >/dev/null
  fi
  psql -h "$HOST" -p "$PORT" -U postgres -d postgres -q \
    -c "ALTER SYSTEM SET ssl_cert_file = '$SNAKEOIL'" \
    -c "ALTER SYSTEM SET ssl_key_file = '/etc/ssl/private/ssl-cert-snakeoil.key'" \
    -c "ALTER SYSTEM SET ssl = on" \
    -c "SELECT pg_reload_conf()" >/dev/null
  for _ in $(seq 1 20); do
    on="$(psql -h "$HOST" -p "$PORT" -U postgres -d postgres -tAc "SHOW ssl")"
    [ "$on" = on ] && return 0
    sleep 0.5
  done
  echo "PostgreSQL on $HOST:$PORT did not turn TLS on (is its key readable by the server?)" >&2
  return 1
}

if ready; then
  echo "PostgreSQL answers on $HOST:$PORT"
  ensure_ssl
  exit 0
fi

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "installing PostgreSQL with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi

VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
if command -v pg_lsclusters >/dev/null 2>&1 && pg_lsclusters -h | grep -q .; then
  read -r CV CN _ < <(pg_lsclusters -h | head -n 1)
else
  CV="$VERSION"; CN=main
  $SUDO pg_createcluster "$CV" "$CN" >/dev/null
fi
CONF_DIR="/etc/postgresql/$CV/$CN"
# Tests connect over loopback as `postgres` without a password (never do this outside a test box).
if [ -f "$CONF_DIR/pg_hba.conf" ] && ! grep -q "jetflow-tests" "$CONF_DIR/pg_hba.conf"; then
  $SUDO sed -i '1i host all all 127.0.0.1/32 trust # jetflow-tests\nhost all all ::1/128 trust # jetflow-tests' "$CONF_DIR/pg_hba.conf"
fi
$SUDO sed -i "s/^#\?port = .*/port = $PORT/" "$CONF_DIR/postgresql.conf" || true
$SUDO pg_ctlcluster "$CV" "$CN" restart || $SUDO pg_ctlcluster "$CV" "$CN" start

for _ in $(seq 1 60); do
  if ready; then
    echo "PostgreSQL $CV started on $HOST:$PORT"
    ensure_ssl
    psql -h "$HOST" -p "$PORT" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
      || psql -h "$HOST" -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE test" >/dev/null
    exit 0
  fi
  sleep 1
done
echo "PostgreSQL did not start on $HOST:$PORT" >&2
exit 1
