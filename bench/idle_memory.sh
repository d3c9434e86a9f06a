#!/usr/bin/env bash
# RSS per idle keep-alive client connection: N connections (default 10,000)
# each send one GET, read the answer, then stay open and idle. The proxy's
# RSS after, minus its RSS before (warmed up by a few requests), divided by
# N. Run for Levee with each HTTP/1 engine (server.http1 = "hyper" and
# "levee") and for nginx with 1 worker, all in front of the same backend
# (/work/shared/bench-ref/backend.conf).
#
#   cargo build --release && bench/idle_memory.sh
#   N=2000 TARGETS="levee" bench/idle_memory.sh
#
# Needs: nginx, python3. Starts what it needs and stops every PID it started.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
TARGETS=${TARGETS:-"hyper levee nginx"}
LEVEE=${LEVEE:-target/release/levee}
REF=${REF:-/work/shared/bench-ref}
OUT=${OUT:-/tmp/levee-idle-memory}
rm -rf "$OUT" && mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((N + 200)) ]; then
    echo "need at least $((N + 200)) file descriptors (ulimit -Hn is $(ulimit -Hn))" >&2
    exit 1
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

wait_port() {
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://$1/" && return 0
        sleep 0.1
    done
    echo "nothing answers on $1" >&2
    exit 1
}

# The backend: one nginx, 1 worker, on 127.0.0.1:9001..9003.
nginx -p "$OUT/" -e "$OUT/backend-error.log" -c "$(realpath "$REF/backend.conf")" &
pids+=($!)
wait_port 127.0.0.1:9001

# The client: opens N connections, one GET each, then holds them idle until
# told to stop (a line on stdin). Prints "ready <ok>" when all have answered.
cat > "$OUT/client.py" <<'PY'
import asyncio, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
REQ = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
async def one(sem, conns):
    async with sem:
        r, w = await asyncio.open_connection(host, port)
        w.write(REQ)
        head = await r.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await r.readexactly(length)
        conns.append(w)
        return head.startswith(b"HTTP/1.1 200")
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

# measure NAME PID HOST PORT: prints "NAME before after per_conn_bytes ok".
measure() {
    local name=$1 pid=$2 host=$3 port=$4
    for _ in 1 2 3 4 5; do curl -s -o /dev/null "http://$host:$port/"; done
    sleep 1
    local before after ok
    before=$(rss_kib "$pid")
    mkfifo "$OUT/$name.in"
    python3 "$OUT/client.py" "$host" "$port" "$N" < "$OUT/$name.in" > "$OUT/$name.client" &
    local client=$!
    pids+=("$client")
    exec 9> "$OUT/$name.in"
    for _ in $(seq 600); do
        grep -q ready "$OUT/$name.client" 2>/dev/null && break
        sleep 0.2
    done
    sleep 2
    after=$(rss_kib "$pid")
    ok=$(awk '/ready/ {print $2}' "$OUT/$name.client")
    echo >&9
    exec 9>&-
    wait "$client" || true
    echo "$name $before $after $(( (after - before) * 1024 / N )) ${ok:-0}"
}

printf '%-8s %10s %10s %14s %8s\n' target "before KiB" "after KiB" "bytes/conn" "200s"
for t in $TARGETS; do
    case $t in
        hyper|levee)
            sed -e "s/^workers = .*/workers = 1\nhttp1 = \"$t\"/" bench/levee.toml > "$OUT/levee-$t.toml"
            # Long idle timeout and room for N connections.
            python3 - "$OUT/levee-$t.toml" "$N" <<'PY'
import sys
p, n = sys.argv[1], int(sys.argv[2])
s = open(p).read().replace('address = "127.0.0.1:8090"',
    'address = "127.0.0.1:8090"\nidle_timeout = "300s"\nmax_connections = %d' % (n + 100), 1)
open(p, "w").write(s)
PY
            "$LEVEE" run --config "$OUT/levee-$t.toml" 2> "$OUT/levee-$t.log" &
            lp=$!
            pids+=("$lp")
            wait_port 127.0.0.1:8090
            read -r name before after per ok < <(measure "$t" "$lp" 127.0.0.1 8090)
            kill "$lp"; wait "$lp" 2>/dev/null || true
            ;;
        nginx)
            sed -e 's/worker_connections 8192;/worker_connections 16000;/' \
                "$REF/nginx-proxy.conf" > "$OUT/nginx-proxy.conf"
            nginx -p "$OUT/" -e "$OUT/nginx-proxy-error.log" -c "$OUT/nginx-proxy.conf" &
            np=$!
            pids+=("$np")
            wait_port 127.0.0.1:8081
            worker=$(pgrep -P "$np" | head -1)
            read -r name before after per ok < <(measure nginx "$worker" 127.0.0.1 8081)
            kill "$np"; wait "$np" 2>/dev/null || true
            ;;
        *) echo "unknown target $t" >&2; exit 1 ;;
    esac
    printf '%-8s %10s %10s %14s %8s\n' "$name" "$before" "$after" "$per" "$ok"
done
