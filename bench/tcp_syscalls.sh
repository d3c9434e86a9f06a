#!/usr/bin/env bash
# Syscalls per short TCP connection: Levee (protocol = "tcp", 1 worker) vs HAProxy
# `mode tcp` (nbthread 1) vs nginx `stream` (1 worker) -- a count, not a benchmark.
#
# Each proxy relays N connections (oha --disable-keepalive: connect, one tiny HTTP
# exchange, close) to an nginx that answers `return 200`, with `strace -c` attached to
# every thread of the proxy (after it started, so start-up is not counted). Prints each
# proxy's syscalls per connection by name, and the total. Needs strace, oha, haproxy,
# nginx (+ libnginx-mod-stream).
#
# Knobs: N=2000 C=8 PROXIES="levee haproxy nginx" LEVEE_BIN (default
#   <repo>/target/profiling/levee) PORT_BASE=29500 RUNDIR=/tmp/levee-bench-syscalls
#   COPY (the Levee listener's copy, default unset: "auto")
set -u -o pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$BENCH" rev-parse --show-toplevel 2>/dev/null) || REPO=$(dirname "$BENCH")
N=${N:-2000}
C=${C:-8}
PORT_BASE=${PORT_BASE:-29500}
RUNDIR=${RUNDIR:-/tmp/levee-bench-syscalls}
LEVEE_BIN=${LEVEE_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/profiling/levee}
PROXIES=${PROXIES:-"levee haproxy nginx"}
COPY=${COPY:-}

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
for t in strace oha haproxy nginx; do command -v "$t" >/dev/null || die "$t not installed"; done
case " $PROXIES " in *" levee "*) [ -x "$LEVEE_BIN" ] || die "no Levee binary at $LEVEE_BIN (LEVEE_BIN=...)" ;; esac
for v in N C PORT_BASE; do [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be an integer"; done

HTTP=$PORT_BASE
declare -A PORT=([levee]=$((PORT_BASE + 1)) [haproxy]=$((PORT_BASE + 2)) [nginx]=$((PORT_BASE + 3)))
ADMIN=$((PORT_BASE + 4))

mkdir -p "$RUNDIR" || exit 1
RUNDIR=$(cd "$RUNDIR" && pwd)
cd "$RUNDIR" || exit 1
declare -a STARTED=()
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null; done
    wait 2>/dev/null
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on port $1"
}

cat >backend-nginx.conf <<CONF
worker_processes 1;
daemon off;
pid $RUNDIR/backend-nginx.pid;
error_log $RUNDIR/backend-nginx.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    server { listen 127.0.0.1:$HTTP backlog=4096; location / { return 200 "x"; } }
}
CONF
STREAM_MODULE=${STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
LOAD_STREAM=""
if ! nginx -V 2>&1 | grep -q -- '--with-stream[^=_]'; then
    [ -f "$STREAM_MODULE" ] || die "nginx has no stream module: apt-get install libnginx-mod-stream"
    LOAD_STREAM="load_module $STREAM_MODULE;"
fi
cat >proxy-nginx.conf <<CONF
$LOAD_STREAM
worker_processes 1;
daemon off;
pid $RUNDIR/proxy-nginx.pid;
error_log $RUNDIR/proxy-nginx.err warn;
events { worker_connections 8000; }
stream { server { listen 127.0.0.1:${PORT[nginx]} backlog=4096; proxy_pass 127.0.0.1:$HTTP; } }
CONF
cat >haproxy.cfg <<CONF
global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend http
    bind 127.0.0.1:${PORT[haproxy]}
    default_backend http
backend http
    server s1 127.0.0.1:$HTTP
CONF
cat >levee.toml <<CONF
[server]
workers = 1
[admin]
address = "127.0.0.1:$ADMIN"
[access_log]
enabled = false
[[listeners]]
name = "http"
address = "127.0.0.1:${PORT[levee]}"
protocol = "tcp"
cluster = "http"
max_connections = 8000
${COPY:+copy = \"$COPY\"}
[[clusters]]
name = "http"
[[clusters.endpoints]]
address = "127.0.0.1:$HTTP"
CONF
case " $PROXIES " in
    *" levee "*) "$LEVEE_BIN" check --config levee.toml >/dev/null || die "levee.toml refused" ;;
esac

nginx -c "$RUNDIR/backend-nginx.conf" -p "$RUNDIR" >/dev/null 2>&1 & STARTED+=($!)
declare -A PID
for p in $PROXIES; do
    case $p in
        levee) "$LEVEE_BIN" run --config levee.toml >levee.log 2>&1 & ;;
        haproxy) haproxy -f haproxy.cfg >haproxy.log 2>&1 & ;;
        nginx) nginx -c "$RUNDIR/proxy-nginx.conf" -p "$RUNDIR" >/dev/null 2>&1 & ;;
        *) die "unknown proxy $p" ;;
    esac
    PID[$p]=$!; STARTED+=($!)
done
wait_port "$HTTP"
for p in $PROXIES; do wait_port "${PORT[$p]}"; done
sleep 1

# Every thread of PID and of its children (nginx's worker is a child).
threads() {
    local p
    for p in "$1" $(pgrep -P "$1"); do ls "/proc/$p/task"; done
}

for p in $PROXIES; do
    # Warm up (first-use allocations, metric series) before counting.
    oha --no-tui --disable-keepalive -n 200 -c "$C" "http://127.0.0.1:${PORT[$p]}/" >/dev/null 2>&1
    args=()
    for t in $(threads "${PID[$p]}"); do args+=(-p "$t"); done
    strace -f -c -o "strace-$p.txt" "${args[@]}" 2>/dev/null & tracer=$!
    sleep 1
    out=$(oha --no-tui --output-format json --disable-keepalive -n "$N" -c "$C" \
        "http://127.0.0.1:${PORT[$p]}/" 2>/dev/null)
    ok=$(jq -r '.statusCodeDistribution."200" // 0' <<<"$out" 2>/dev/null || echo 0)
    sleep 0.5
    kill -INT "$tracer"; wait "$tracer" 2>/dev/null
    log "$p: $ok of $N answered 200"
done

echo
echo "syscalls per connection ($N connections, oha --disable-keepalive -c $C; strace -c -f)"
for p in $PROXIES; do
    echo "--- $p"
    awk -v n="$N" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { name=$NF; calls=$4;
        printf "%-16s %8.2f\n", name, calls / n; total += calls }
        END { printf "%-16s %8.2f\n", "total", total / n }' "strace-$p.txt"
done
