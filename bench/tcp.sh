#!/usr/bin/env bash
# TCP relaying: Levee (protocol = "tcp", 1 worker) vs HAProxy `mode tcp` (nbthread 1) vs
# nginx `stream` (1 worker), on 127.0.0.1 -- a benchmark, not a test.  See bench/README.md.
#
# Needs the Debian packages iperf3, haproxy, nginx and libnginx-mod-stream, and oha and jq.
# - Throughput: iperf3 through each proxy to one iperf3 server,
#   with 1 and with 64 parallel connections (-P), DURATION seconds each; the receiver's
#   bits/s are reported.
# - New connections per second: oha with --disable-keepalive (every request a new TCP
#   connection, connect + one tiny HTTP exchange + close) through each proxy to an nginx
#   that answers `return 200`, 64 concurrent clients, DURATION seconds; bounded in time.
#   Reported twice: per second, and per CPU-second of the proxy (utime+stime from /proc
#   of the proxy and its children) since oha and the backend share the machine's cores.
# Every measurement is taken ROUNDS times, interleaved; the table shows medians and the
# ratios Levee / HAProxy and Levee / nginx (above 1: Levee is faster). `levee` is
# Levee's default copy; `splice` is the same Levee process's listeners with
# copy = "splice" (its own column and the ratio splice / levee), and `close` its
# listeners with half_close = false (nginx's default: the first end of file ends the
# connection; the ratio close / levee), so the variants are measured interleaved under
# the same load.
#
# Knobs: DURATION=10 ROUNDS=3 PROXIES="levee splice close haproxy nginx" (a subset, in that
#   order) LEVEE_BIN (default <repo>/target/release/levee, not built
#   here) PORT_BASE=29300 RUNDIR=/tmp/levee-bench-tcp  PIN=PROXY:LOAD (taskset CPU lists,
#   empty = unpinned)
set -u -o pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$BENCH" rev-parse --show-toplevel 2>/dev/null) || REPO=$(dirname "$BENCH")
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
PORT_BASE=${PORT_BASE:-29300}
RUNDIR=${RUNDIR:-/tmp/levee-bench-tcp}
LEVEE_BIN=${LEVEE_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/levee}
PIN=${PIN:-}
IFS=: read -r CPU_PROXY CPU_LOAD _ <<<"${PIN}::"
pin() { if [ -n "$1" ]; then echo "taskset -c $1"; fi; }

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
for t in iperf3 oha jq haproxy nginx; do command -v "$t" >/dev/null || die "$t not installed"; done
[ -x "$LEVEE_BIN" ] || die "no Levee binary at $LEVEE_BIN (cargo build --release, or LEVEE_BIN=...)"
for v in DURATION ROUNDS PORT_BASE; do [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be an integer"; done

# Ports: the iperf3 server, the HTTP backend, then per proxy an iperf port and an HTTP port.
IPERF=$PORT_BASE; HTTP=$((PORT_BASE + 1))
declare -A P_IPERF=([levee]=$((PORT_BASE + 10)) [haproxy]=$((PORT_BASE + 20)) [nginx]=$((PORT_BASE + 30))
    [splice]=$((PORT_BASE + 40)) [close]=$((PORT_BASE + 50)))
declare -A P_HTTP=([levee]=$((PORT_BASE + 11)) [haproxy]=$((PORT_BASE + 21)) [nginx]=$((PORT_BASE + 31))
    [splice]=$((PORT_BASE + 41)) [close]=$((PORT_BASE + 51)))
ADMIN=$((PORT_BASE + 12))
PROXIES=${PROXIES:-"levee splice close haproxy nginx"}

mkdir -p "$RUNDIR" || exit 1
RUNDIR=$(cd "$RUNDIR" && pwd)
cd "$RUNDIR" || exit 1
declare -a STARTED=()
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${STARTED[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
    done
    wait 2>/dev/null
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {   # PORT: until something listens on 127.0.0.1:PORT (<= 10 s)
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on port $1"
}

# ---------------------------------------------------------------- configs
cat >backend-nginx.conf <<EOF
worker_processes 1;
daemon off;
pid $RUNDIR/backend-nginx.pid;
error_log $RUNDIR/backend-nginx.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    server { listen 127.0.0.1:$HTTP reuseport backlog=4096; location / { return 200 "x"; } }
}
EOF
# Debian builds the stream module as a dynamic module (package libnginx-mod-stream).
STREAM_MODULE=${STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
LOAD_STREAM=""
if ! nginx -V 2>&1 | grep -q -- '--with-stream[^=_]'; then
    [ -f "$STREAM_MODULE" ] || die "nginx has no stream module: apt-get install libnginx-mod-stream"
    LOAD_STREAM="load_module $STREAM_MODULE;"
fi
cat >proxy-nginx.conf <<EOF
$LOAD_STREAM
worker_processes 1;
daemon off;
pid $RUNDIR/proxy-nginx.pid;
error_log $RUNDIR/proxy-nginx.err warn;
events { worker_connections 8000; }
stream {
    server { listen 127.0.0.1:${P_IPERF[nginx]} backlog=4096; proxy_pass 127.0.0.1:$IPERF; }
    server { listen 127.0.0.1:${P_HTTP[nginx]} backlog=4096; proxy_pass 127.0.0.1:$HTTP; }
}
EOF
cat >haproxy.cfg <<EOF
global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend iperf
    bind 127.0.0.1:${P_IPERF[haproxy]}
    default_backend iperf
backend iperf
    server s1 127.0.0.1:$IPERF
frontend http
    bind 127.0.0.1:${P_HTTP[haproxy]}
    default_backend http
backend http
    server s1 127.0.0.1:$HTTP
EOF
cat >levee.toml <<EOF
[server]
workers = 1
[admin]
address = "127.0.0.1:$ADMIN"
[access_log]
enabled = false
[[listeners]]
name = "iperf"
address = "127.0.0.1:${P_IPERF[levee]}"
protocol = "tcp"
cluster = "iperf"
max_connections = 8000
[[listeners]]
name = "http"
address = "127.0.0.1:${P_HTTP[levee]}"
protocol = "tcp"
cluster = "http"
max_connections = 8000
[[listeners]]
name = "iperf-splice"
address = "127.0.0.1:${P_IPERF[splice]}"
protocol = "tcp"
cluster = "iperf"
max_connections = 8000
copy = "splice"
[[listeners]]
name = "http-splice"
address = "127.0.0.1:${P_HTTP[splice]}"
protocol = "tcp"
cluster = "http"
max_connections = 8000
copy = "splice"
[[listeners]]
name = "iperf-close"
address = "127.0.0.1:${P_IPERF[close]}"
protocol = "tcp"
cluster = "iperf"
max_connections = 8000
half_close = false
[[listeners]]
name = "http-close"
address = "127.0.0.1:${P_HTTP[close]}"
protocol = "tcp"
cluster = "http"
max_connections = 8000
half_close = false
[[clusters]]
name = "iperf"
[[clusters.endpoints]]
address = "127.0.0.1:$IPERF"
[[clusters]]
name = "http"
[[clusters.endpoints]]
address = "127.0.0.1:$HTTP"
EOF
"$LEVEE_BIN" check --config levee.toml >/dev/null || die "levee.toml refused by $LEVEE_BIN check"

# ---------------------------------------------------------------- servers
for p in $IPERF $HTTP "${P_IPERF[@]}" "${P_HTTP[@]}" $ADMIN; do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is taken: set PORT_BASE"
done
iperf3 -s -p "$IPERF" >iperf3-server.log 2>&1 & STARTED+=($!)
nginx -c "$RUNDIR/backend-nginx.conf" -p "$RUNDIR" >/dev/null 2>&1 & STARTED+=($!)
declare -A PID_OF=()
$(pin "$CPU_PROXY") "$LEVEE_BIN" run --config levee.toml >levee.log 2>&1 & STARTED+=($!)
PID_OF[levee]=$!; PID_OF[splice]=$!; PID_OF[close]=$!
$(pin "$CPU_PROXY") haproxy -f haproxy.cfg >haproxy.log 2>&1 & STARTED+=($!)
PID_OF[haproxy]=$!
$(pin "$CPU_PROXY") nginx -c "$RUNDIR/proxy-nginx.conf" -p "$RUNDIR" >/dev/null 2>&1 & STARTED+=($!)
PID_OF[nginx]=$!
for p in $IPERF $HTTP "${P_IPERF[@]}" "${P_HTTP[@]}"; do wait_port "$p"; done
log "all listening; DURATION=${DURATION}s ROUNDS=$ROUNDS, results in $RUNDIR"

# ---------------------------------------------------------------- measurements
RESULTS=$RUNDIR/results.tsv
: >"$RESULTS"
gbps() {   # PROXY PARALLEL -> receiver Gbit/s
    local out
    out=$(timeout $((DURATION + 30)) $(pin "$CPU_LOAD") iperf3 -c 127.0.0.1 -p "${P_IPERF[$1]}" \
        -t "$DURATION" -P "$2" -J 2>/dev/null) || { echo NA; return; }
    jq -r '.end.sum_received.bits_per_second / 1e9' <<<"$out" 2>/dev/null || echo NA
}
ticks() {  # PID -> utime+stime of the process and its children (nginx's worker), in ticks
    local p t=0 v
    for p in "$1" $(pgrep -P "$1"); do
        v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}'); t=$((t + ${v:-0}))
    done
    echo "$t"
}
HZ=$(getconf CLK_TCK)
conns() {  # PROXY -> "new connections per second <TAB> per CPU-second of the proxy"
    local out rate t0 t1
    t0=$(ticks "${PID_OF[$1]}")
    out=$(timeout $((DURATION + 30)) $(pin "$CPU_LOAD") oha --no-tui --output-format json --disable-keepalive \
        -c 64 -z "${DURATION}s" "http://127.0.0.1:${P_HTTP[$1]}/" 2>/dev/null) || { printf 'NA\tNA\n'; return; }
    t1=$(ticks "${PID_OF[$1]}")
    rate=$(jq -r 'if .summary.successRate > 0.99 then .summary.requestsPerSec else "NA" end' <<<"$out" \
        2>/dev/null) || rate=NA
    # The connections per second of the proxy's own CPU time: with the load generator and
    # the backend on the same 2 cores the rate above is mostly theirs, this is the proxy's.
    awk -v r="$rate" -v d="$DURATION" -v t=$((t1 - t0)) -v hz="$HZ" 'BEGIN{
        if (r=="NA" || t<=0) { printf "%s\tNA\n", r; exit }
        printf "%s\t%.0f\n", r, r*d/(t/hz) }'
}
for r in $(seq 1 "$ROUNDS"); do
    for p in $PROXIES; do
        for par in 1 64; do
            v=$(gbps "$p" "$par"); printf 'gbps_%s\t%s\t%s\n' "$par" "$p" "$v" >>"$RESULTS"
            log "round $r $p iperf3 -P $par: $v Gbit/s"
        done
        IFS=$'\t' read -r v c <<<"$(conns "$p")"
        printf 'conns\t%s\t%s\n' "$p" "$v" >>"$RESULTS"
        printf 'conns_cpu\t%s\t%s\n' "$p" "$c" >>"$RESULTS"
        log "round $r $p new connections: $v /s, $c per CPU-second of the proxy"
    done
done

# ---------------------------------------------------------------- table
median() { grep -E '^[0-9.]+$' | sort -g | awk '{a[NR]=$1} END{ if (NR==0) {print "NA"; exit} if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
med() { awk -F'\t' -v m="$1" -v p="$2" '$1==m && $2==p {print $3}' "$RESULTS" | median |
    awk '{ if ($1=="NA") print "NA"; else printf "%.2f", $1 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="NA" || b=="NA" || b==0) print "NA"; else printf "%.2fx", a/b }'; }
echo
echo "TCP relay, 127.0.0.1, 1 worker each, ${DURATION}s x $ROUNDS rounds (medians)"
printf '%-28s %10s %10s %10s %10s %10s %14s %14s %14s %14s %14s\n' metric levee splice close \
    haproxy nginx levee/haproxy levee/nginx splice/levee close/haproxy close/nginx
for m in gbps_1 gbps_64 conns conns_cpu; do
    case $m in
        gbps_1) name="iperf3 1 conn (Gbit/s)" ;;
        gbps_64) name="iperf3 64 conns (Gbit/s)" ;;
        conns) name="new connections/s" ;;
        conns_cpu) name="new conns per proxy CPU-s" ;;
    esac
    l=$(med $m levee); s=$(med $m splice); c=$(med $m close); h=$(med $m haproxy); n=$(med $m nginx)
    printf '%-28s %10s %10s %10s %10s %10s %14s %14s %14s %14s %14s\n' "$name" "$l" "$s" "$c" "$h" "$n" \
        "$(ratio "$l" "$h")" "$(ratio "$l" "$n")" "$(ratio "$s" "$l")" "$(ratio "$c" "$h")" "$(ratio "$c" "$n")"
done
