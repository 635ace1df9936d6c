#!/usr/bin/env bash
# The web console in a real browser: Debian's chromium, headless, driven by playwright-core
# (npm; no browser download). Starts a 3-node nacelle cluster on 127.0.0.1-3, fills it with
# services, and drives the console (see console.test.mjs for the steps).
#
#   NACELLE_BIN=target/release/nacelle bash tests/console/run.sh
#
# Installs what it needs when absent: chromium (apt-get, root) and the npm packages of
# package-lock.json (npm ci, into tests/console/node_modules).
#
# Optional environment:
#   CONSOLE_SHOTS=/some/dir   where the screenshots go (default: a new temp dir, printed)
#   CONSOLE_SERVICES=2000     filler services registered before the browser starts
#   CONSOLE_NO_INSTALL=1      never install anything (fail instead)
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$DIR/../.." && pwd)"
export NACELLE_BIN="${NACELLE_BIN:-$REPO/target/release/nacelle}"
log() { printf '[console] %s\n' "$*"; }

[[ -x "$NACELLE_BIN" ]] || { log "no nacelle binary at $NACELLE_BIN (cargo build --release)"; exit 1; }

if ! command -v chromium >/dev/null 2>&1; then
  [[ -n "${CONSOLE_NO_INSTALL:-}" ]] && { log "chromium is missing"; exit 1; }
  log "installing Debian's chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq chromium >/dev/null
fi
export CHROMIUM="${CHROMIUM:-$(command -v chromium)}"

if [[ ! -f "$DIR/node_modules/playwright-core/package.json" || ! -f "$DIR/node_modules/nacos/package.json" ]]; then
  [[ -n "${CONSOLE_NO_INSTALL:-}" ]] && { log "npm packages are missing"; exit 1; }
  log "installing npm packages (npm ci)"
  (cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error)
fi

export CONSOLE_SHOTS="${CONSOLE_SHOTS:-$(mktemp -d /tmp/nacelle-console-shots.XXXXXX)}"
mkdir -p "$CONSOLE_SHOTS"
log "screenshots go to $CONSOLE_SHOTS"
cd "$DIR"
timeout "${CONSOLE_TIMEOUT:-240}" node --test --test-concurrency=1 console.test.mjs
log "screenshots are in $CONSOLE_SHOTS"
