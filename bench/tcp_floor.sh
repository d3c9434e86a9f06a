#!/usr/bin/env bash
# Where a proxy's CPU goes per short TCP connection -- a profile, not a benchmark.
#
# For each proxy (levee, close = Levee's half_close = false listener, nginx, haproxy):
# `oha --disable-keepalive -c 64` for 8 s through it to the backend nginx, `perf record
# -g -p <proxy>` for 4 s in the middle, the proxy's CPU time from /proc over the run.
# Prints the CPU per connection and the share of it in the syscalls that every TCP relay
# makes for every connection (accept4, socket, connect, the two sends, shutdown, close:
# on loopback they carry the peers' TCP work too), and in user space.
# See bench/README.md, "Results of 2026-12-04".
#
# Uses the configs `bench/tcp.sh` writes: run it once first (e.g. DURATION=1 ROUNDS=1)
# with the same RUNDIR and PORT_BASE. Needs perf, oha, jq, nginx (+ stream), haproxy.
# Knobs: PROXIES="levee close nginx haproxy" RUNDIR=/tmp/levee-bench-tcp PORT_BASE=29300
#   LEVEE_BIN (default <repo>/target/release/levee)
set -u -o pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$BENCH" rev-parse --show-toplevel 2>/dev/null) || REPO=$(dirname "$BENCH")
RUNDIR=${RUNDIR:-/tmp/levee-bench-tcp}
PORT_BASE=${PORT_BASE:-29300}
PROXIES=${PROXIES:-"levee close nginx haproxy"}
LEVEE_BIN=${LEVEE_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/levee}
die() { echo "ERROR: $*" >&2; exit 1; }
for t in perf oha jq nginx haproxy; do command -v "$t" >/dev/null || die "$t not installed"; done
for f in levee.toml proxy-nginx.conf backend-nginx.conf haproxy.cfg; do
    [ -f "$RUNDIR/$f" ] || die "no $RUNDIR/$f: run bench/tcp.sh first (same RUNDIR)"
done
cd "$RUNDIR" || exit 1
HZ=$(getconf CLK_TCK)
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }
printf '%-8s %12s %14s %18s %10s\n' proxy connections 'CPU/conn (us)' 'relay syscalls %' 'user %'
for p in $PROXIES; do
    nginx -c "$RUNDIR/backend-nginx.conf" -p "$RUNDIR" >/dev/null 2>&1 &
    backend=$!
    case $p in
        levee|close) "$LEVEE_BIN" run --config levee.toml >floor-levee.log 2>&1 & pid=$!
            port=$((PORT_BASE + 11)); [ "$p" = close ] && port=$((PORT_BASE + 51)) ;;
        nginx) nginx -c "$RUNDIR/proxy-nginx.conf" -p "$RUNDIR" >/dev/null 2>&1 & pid=$!
            port=$((PORT_BASE + 31)) ;;
        haproxy) haproxy -f haproxy.cfg >/dev/null 2>&1 & pid=$!; port=$((PORT_BASE + 21)) ;;
        *) die "unknown proxy $p" ;;
    esac
    sleep 1
    worker=$pid
    [ "$p" = nginx ] && worker=$(pgrep -P "$pid" | head -1)
    t0=$(ticks "$worker")
    timeout 30 oha --no-tui --output-format json --disable-keepalive -c 64 -z 8s \
        "http://127.0.0.1:$port/" >"floor-oha.$p.json" 2>/dev/null &
    load=$!
    sleep 2
    perf record -F 2000 -g -p "$worker" -o "floor-perf.$p.data" -- sleep 4 >/dev/null 2>&1
    wait "$load"
    t1=$(ticks "$worker")
    kill "$pid" "$backend" 2>/dev/null; wait "$pid" "$backend" 2>/dev/null
    n=$(jq '.summary.requestsPerSec * 8 | floor' "floor-oha.$p.json")
    perf report -i "floor-perf.$p.data" --children --sort sym -g none 2>/dev/null >"floor-report.$p.txt"
    relay=$(awk '$4 ~ /^(__x64_sys_(accept4|socket|connect|close|sendto|shutdown)|do_writev)$/ {
        gsub("%", "", $1); s += $1 } END { printf "%.1f", s }' "floor-report.$p.txt")
    user=$(awk '$3 == "[.]" { gsub("%", "", $2); s += $2 } END { printf "%.1f", s }' "floor-report.$p.txt")
    awk -v p="$p" -v n="$n" -v t=$((t1 - t0)) -v hz="$HZ" -v r="$relay" -v u="$user" 'BEGIN {
        printf "%-8s %12d %14.1f %18s %10s\n", p, n, (n > 0 ? t / hz * 1e6 / n : 0), r, u }'
done
