#!/usr/bin/env bash
# The official SDKs against a nacelle with --auth (issue 17): Python (gRPC, username/password),
# Node (HTTP v1, username/password on every call), Rust (gRPC, auth-by-http) — each with good
# credentials (register, list, subscribe), without any, with a wrong password, outside its
# permissions; Python also with a forged and an expired token.
#
#   NACELLE_BIN=target/release/nacelle bash tests/sdk/auth.sh
#
# Environment: SDK_SUITES="python node rust" (default all), SDK_SUITE_TIMEOUT=110 (s per suite),
# SDK_KEEP_LOGS=1. Uses what tests/sdk/run.sh installs (it runs before this in scripts/test.sh).
set -uo pipefail
SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SDK_DIR/../.." && pwd)"
BIN="${NACELLE_BIN:-$REPO_ROOT/target/release/nacelle}"
SUITES="${SDK_SUITES:-python node rust}"
SUITE_TIMEOUT="${SDK_SUITE_TIMEOUT:-110}"
HOST=127.0.0.1
WORK="$(mktemp -d /tmp/nacelle-sdk-auth.XXXXXX)"
PID=
log() { printf '[sdk-auth] %s\n' "$*"; }
cleanup() {
  local rc=$?
  [[ -n "$PID" ]] && { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }
  if [[ -n "${SDK_KEEP_LOGS:-}" ]]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[[ -x "$BIN" ]] || { log "no nacelle binary at $BIN"; exit 1; }

read -r HTTP_PORT GRPC_PORT < <(python3 - <<'PY'
import random, socket
def free(p, kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
for _ in range(500):
    p = random.randint(20000, 40000)
    if free(p) and free(p + 1000) and free(p + 1001, socket.SOCK_DGRAM):
        print(p, p + 1000); break
PY
)
ADMIN_PW="adm-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
SECRET_B64="$(python3 -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())')"
log "starting nacelle --auth on http=$HTTP_PORT grpc=$GRPC_PORT"
"$BIN" --bind "$HOST" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" --cores "${NACELLE_CORES:-2}" \
  --data-dir "$WORK/data" --auth --auth-token-secret "$SECRET_B64" --admin-password "$ADMIN_PW" \
  >"$WORK/server.log" 2>&1 &
PID=$!
B="http://$HOST:$HTTP_PORT/nacos/v1/auth"
TOKEN=
for _ in $(seq 1 100); do
  kill -0 "$PID" 2>/dev/null || { log "nacelle exited:"; tail -30 "$WORK/server.log"; exit 1; }
  TOKEN=$(curl -sf -m 2 -X POST "$B/login" -d username=nacos --data-urlencode "password=$ADMIN_PW" 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])' 2>/dev/null) && [[ -n "$TOKEN" ]] && break
  sleep 0.2
done
[[ -n "$TOKEN" ]] || { log "no admin login:"; tail -30 "$WORK/server.log"; exit 1; }
admin() { # method path form...
  local m=$1 p=$2; shift 2
  local out; out=$(curl -s -m 5 -X "$m" -H "accessToken: $TOKEN" "$B$p" "$@")
  [[ "$out" == *'"code":200'* ]] || { log "$m $p $*: $out"; exit 1; }
}
for u in writer reader; do admin POST /users -d "username=$u" -d "password=$u-pw"; done
admin POST /roles -d role=writers -d username=writer
admin POST /roles -d role=readers -d username=reader
admin POST /permissions -d role=writers --data-urlencode 'resource=:*:naming/auth-*' -d action=rw
admin POST /permissions -d role=readers --data-urlencode 'resource=:*:naming/auth-*' -d action=r
log "users writer (rw auth-*) and reader (r auth-*) created"

# A token signed with another secret, and one with the right secret but past its exp.
read -r FORGED EXPIRED < <(python3 - "$SECRET_B64" <<'PY'
import base64, hashlib, hmac, json, sys, time
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def jwt(key, claims):
    h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    return h + "." + b64(hmac.new(key, h.encode(), hashlib.sha256).digest())
now = int(time.time())
print(jwt(b"x" * 32, {"sub": "writer", "exp": now + 3600}),
      jwt(base64.b64decode(sys.argv[1]), {"sub": "writer", "exp": now - 60}))
PY
)
export NACOS_HOST="$HOST" NACOS_HTTP_PORT="$HTTP_PORT" NACOS_GRPC_PORT="$GRPC_PORT" SERVER_KIND=nacelle-auth \
  NACOS_ADMIN_PASSWORD="$ADMIN_PW" NACOS_FORGED_TOKEN="$FORGED" NACOS_EXPIRED_TOKEN="$EXPIRED"
unset NACOS_CLIENT_SERVER_ADDRESS NACOS_CLIENT_SERVER_PORT NACOS_CLIENT_NAMESPACE NACOS_CLIENT_ENDPOINT

want() { [[ " $SUITES " == *" $1 "* ]]; }
FAIL=0
run_suite() {
  local name=$1; shift
  local start=$SECONDS
  log "---- $name ----"
  if ( "$@" ) >"$WORK/$name.log" 2>&1; then
    log "$name: PASS ($((SECONDS - start)) s)"
  else
    cat "$WORK/$name.log"; log "$name: FAIL ($((SECONDS - start)) s)"; FAIL=1
  fi
}
want python && run_suite python bash -c "cd '$SDK_DIR/python' && timeout $SUITE_TIMEOUT python3 -m pytest auth_sdk.py"
want node && run_suite node bash -c "cd '$SDK_DIR/node' && timeout $SUITE_TIMEOUT node --test auth.test.js"
want rust && run_suite rust bash -c "cd '$SDK_DIR/rust' && timeout $SUITE_TIMEOUT cargo test -q --test auth -- --test-threads=2"
kill -0 "$PID" 2>/dev/null || { log "nacelle died during the run:"; tail -30 "$WORK/server.log"; FAIL=1; }
exit $FAIL
