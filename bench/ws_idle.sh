#!/usr/bin/env bash
# RSS per idle WebSocket tunnel: N clients (default 10,000) each open a
# WebSocket through the proxy (the 101 relayed), exchange one message, then
# stay open and idle. The proxy's RSS after, minus its RSS before (warmed up
# by a few tunnels), divided by the tunnels it opened (N, unless some
# failed). Levee (server.workers = 1) against nginx (1 worker, proxying
# WebSocket the documented way), both in front of the same WebSocket echo
# server (Python, below).
#
#   LEVEE_BIN=target/release/levee bench/ws_idle.sh
#   N=200 TARGETS="levee nginx" bench/ws_idle.sh
#
# Needs: nginx, python3 (standard library only). Starts what it needs and
# stops every PID it started.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
TARGETS=${TARGETS:-"levee nginx"}
LEVEE=${LEVEE_BIN:-target/release/levee}
OUT=${OUT:-/tmp/levee-ws-idle}
BACKEND_PORT=${BACKEND_PORT:-9111}
LEVEE_PORT=${LEVEE_PORT:-8095}
NGINX_PORT=${NGINX_PORT:-8096}
rm -rf "$OUT" && mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((2 * N + 200)) ]; then
    echo "need at least $((2 * N + 200)) file descriptors (ulimit -Hn is $(ulimit -Hn))" >&2
    exit 1
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }


# The client: N WebSockets, each sends one masked text frame and reads its
# echo, then all are held idle until told to stop (a line on stdin). Prints
# "ready <ok>" when all are up.
cat > "$OUT/client.py" <<'PY'
import asyncio, os, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
REQ = (b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
def frame(text):
    mask = os.urandom(4)
    data = bytes(c ^ mask[i % 4] for i, c in enumerate(text))
    return bytes([0x81, 0x80 | len(text)]) + mask + data
async def one(sem, conns):
    async with sem:
        r, w = await asyncio.open_connection(host, port)
        w.write(REQ)
        head = await r.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            return False
        w.write(frame(b"hi"))
        echo = await r.readexactly(4)
        conns.append(w)
        return echo[2:] == b"hi"
async def main():
    sem, conns = asyncio.Semaphore(200), []
    results = await asyncio.gather(*(one(sem, conns) for _ in range(n)), return_exceptions=True)
    ok = sum(1 for r in results if r is True)
    print("ready", ok, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for w in conns:
        w.close()
asyncio.run(main())
PY

wait_port() {
    for _ in $(seq 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

python3 bench/lib/ws_echo.py "$BACKEND_PORT" &
pids+=($!)
wait_port "$BACKEND_PORT"

# measure NAME PID PORT: prints "NAME before after per_tunnel_bytes ok".
measure() {
    local name=$1 pid=$2 port=$3
    python3 "$OUT/client.py" 127.0.0.1 "$port" 20 < /dev/null > /dev/null 2>&1 || true
    sleep 1
    local before after ok
    before=$(rss_kib "$pid")
    mkfifo "$OUT/$name.in"
    python3 "$OUT/client.py" 127.0.0.1 "$port" "$N" < "$OUT/$name.in" > "$OUT/$name.client" &
    local client=$!
    pids+=("$client")
    exec 9> "$OUT/$name.in"
    for _ in $(seq 900); do
        grep -q ready "$OUT/$name.client" 2>/dev/null && break
        sleep 0.2
    done
    sleep 2
    after=$(rss_kib "$pid")
    ok=$(awk '/ready/ {print $2}' "$OUT/$name.client")
    echo >&9
    exec 9>&-
    wait "$client" || true
    # Per tunnel actually opened: a proxy that opened fewer than N must
    # not look cheaper for it.
    ok=${ok:-0}
    echo "$name $before $after $(( ok > 0 ? (after - before) * 1024 / ok : 0 )) $ok"
}

printf '%-8s %10s %10s %14s %8s\n' target "before KiB" "after KiB" "bytes/tunnel" "tunnels"
for t in $TARGETS; do
    case $t in
        levee)
            cat > "$OUT/levee.toml" <<TOML
[server]
workers = 1
http1 = "levee"

[admin]
enabled = false

[access_log]
enabled = false

[[listeners]]
name = "ws"
address = "127.0.0.1:$LEVEE_PORT"
max_connections = $((N + 100))

[[clusters]]
name = "ws"
endpoints = [{ address = "127.0.0.1:$BACKEND_PORT" }]

[[routes]]
name = "all"
cluster = "ws"
TOML
            "$LEVEE" run --config "$OUT/levee.toml" 2> "$OUT/levee.log" &
            lp=$!
            pids+=("$lp")
            wait_port "$LEVEE_PORT"
            read -r name before after per ok < <(measure levee "$lp" "$LEVEE_PORT")
            kill "$lp"; wait "$lp" 2>/dev/null || true
            ;;
        nginx)
            cat > "$OUT/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $OUT/nginx.pid;
events { worker_connections $((2 * N + 200)); }
http {
    access_log off;
    map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
    upstream ws { server 127.0.0.1:$BACKEND_PORT; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://ws;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_read_timeout 600s;
        }
    }
}
NGINX
            nginx -p "$OUT/" -e "$OUT/nginx-error.log" -c "$OUT/nginx.conf" &
            np=$!
            pids+=("$np")
            wait_port "$NGINX_PORT"
            worker=$(pgrep -P "$np" | head -1)
            read -r name before after per ok < <(measure nginx "$worker" "$NGINX_PORT")
            kill "$np"; wait "$np" 2>/dev/null || true
            ;;
        *) echo "unknown target $t" >&2; exit 1 ;;
    esac
    printf '%-8s %10s %10s %14s %8s\n' "$name" "$before" "$after" "$per" "$ok"
done
