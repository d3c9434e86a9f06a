#!/usr/bin/env bash
# User-space instructions per WebSocket round trip through Levee, counted by callgrind:
# deterministic, like bench/callgrind.sh, for the tunnel's copy (`src/tunnel/copy.rs`).
#
# Levee (1 worker, an HTTP listener whose route goes to bench/lib/ws_echo.py) runs under
# `valgrind --tool=callgrind`; a Python client (standard library) opens CONNS WebSockets
# through it and sends ROUNDS masked 64-byte text frames on each, one at a time, reading
# each echo. Done for ROUNDS = LOW and ROUNDS = HIGH; the difference of the instruction
# counts over the difference of round trips is one round trip's cost (a message relayed
# each way), the handshakes, start-up and shut-down cancelled out.
#
#   LEVEE_BIN=target/release/levee bench/ws_roundtrip.sh
#   CONNS=32 LOW=200 HIGH=600 PORT_BASE=18400 OUT=/tmp/levee-ws-roundtrip
#
# Needs valgrind and python3. Starts what it needs and stops every PID it started.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1

LEVEE=${LEVEE_BIN:-target/release/levee}
CONNS=${CONNS:-32}
LOW=${LOW:-200}
HIGH=${HIGH:-600}
PORT_BASE=${PORT_BASE:-18400}
OUT=${OUT:-/tmp/levee-ws-roundtrip}
BACKEND_PORT=$((PORT_BASE + 1))
LEVEE_PORT=$((PORT_BASE + 90))
die() { echo "ERROR: $*" >&2; exit 1; }
command -v valgrind >/dev/null || die "valgrind is not installed"
[ -x "$LEVEE" ] || die "no Levee binary at $LEVEE (cargo build --release)"
for v in CONNS LOW HIGH PORT_BASE; do [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be an integer"; done
[ "$HIGH" -gt "$LOW" ] || die "HIGH must be above LOW"
mkdir -p "$OUT" || exit 1

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

cat >"$OUT/client.py" <<'PY'
import asyncio, sys
host, port, conns, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
REQ = (b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
MSG = b"x" * 64
FRAME = bytes([0x81, 0x80 | len(MSG)]) + b"\0\0\0\0" + MSG
async def one():
    r, w = await asyncio.open_connection(host, port)
    w.write(REQ)
    head = await r.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        return 0
    for _ in range(rounds):
        w.write(FRAME)
        if await r.readexactly(2 + len(MSG)) != bytes([0x81, len(MSG)]) + MSG:
            return 0
    w.close()
    return rounds
async def main():
    print(sum(await asyncio.gather(*(one() for _ in range(conns)))))
asyncio.run(main())
PY
cat >"$OUT/levee.toml" <<TOML
[server]
workers = 1
[admin]
enabled = false
[access_log]
enabled = false
[[listeners]]
name = "ws"
address = "127.0.0.1:$LEVEE_PORT"
[[clusters]]
name = "ws"
endpoints = [{ address = "127.0.0.1:$BACKEND_PORT" }]
[[routes]]
name = "all"
cluster = "ws"
TOML

wait_port() {
    for _ in $(seq 150); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$1" \
            2>/dev/null && return 0
        sleep 0.2
    done
    die "nothing listens on port $1"
}
python3 bench/lib/ws_echo.py "$BACKEND_PORT" &
pids+=($!)
wait_port "$BACKEND_PORT"

# instructions ROUNDS: Levee's total instructions for CONNS x ROUNDS round trips.
instructions() {
    local out=$OUT/callgrind.out.$1 done
    valgrind --tool=callgrind --callgrind-out-file="$out" "$LEVEE" run --config "$OUT/levee.toml" \
        >"$OUT/levee.$1.log" 2>&1 &
    local pid=$!
    wait_port "$LEVEE_PORT"
    done=$(timeout 300 python3 "$OUT/client.py" 127.0.0.1 "$LEVEE_PORT" "$CONNS" "$1")
    kill -INT "$pid"; wait "$pid"
    [ "$done" = $((CONNS * $1)) ] || die "$done of $((CONNS * $1)) round trips answered (see $OUT)"
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}
low=$(instructions "$LOW") || exit 1
high=$(instructions "$HIGH") || exit 1
awk -v l="$low" -v h="$high" -v n=$((CONNS * (HIGH - LOW))) -v c="$CONNS" -v lo="$LOW" -v hi="$HIGH" \
    'BEGIN { printf "conns=%d Ir(%d)=%d Ir(%d)=%d per_round_trip=%.0f\n", c, lo, l, hi, h, (h - l) / n }'
