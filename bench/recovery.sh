#!/usr/bin/env bash
# Recovery after a backend restart: Levee vs HAProxy with the same active checks.
# A measurement, not a test (see bench/README.md, "Recovery").
#
# Three backends (one nginx each, `master_process off`, so SIGKILL kills the
# whole backend), each logging every request it receives with its arrival time
# ($msec). For each proxy in turn (ROUNDS times, interleaved): the proxy in front
# of the three backends, checks `GET /health` every 500 ms, rise 2, fall 3 (Levee:
# interval 500ms, jitter 0s, healthy_threshold 2, unhealthy_threshold 3; outlier
# detection at its defaults); oha offers RATE req/s for DURATION s; KILL_AT s in,
# backend 3 is SIGKILLed; DOWN_FOR s later it is started again. Reported per run:
#   back_s  time from the restarted backend listening again to the first proxied
#           request (not a health check) it receives
#   errors  client-visible failures: non-200 answers plus oha connection errors
#
# Knobs (environment): ROUNDS=2 RATE=2000 DURATION=20 KILL_AT=5 DOWN_FOR=7 CONNS=16
#   TARGETS="levee haproxy"  LEVEE_BIN (default target/release/levee if built, else
#   target/debug/levee)  RUNDIR=/tmp/levee-recovery  OUTDIR=$RUNDIR/results-<time>
# Ports: backends 127.0.0.1:9011-9013, Levee 8094 (admin 9904), HAProxy 8095.
set -u -o pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$BENCH" rev-parse --show-toplevel 2>/dev/null) || REPO=$(dirname "$BENCH")
ROUNDS=${ROUNDS:-2}
RATE=${RATE:-2000}
DURATION=${DURATION:-20}
KILL_AT=${KILL_AT:-5}
DOWN_FOR=${DOWN_FOR:-7}
CONNS=${CONNS:-16}
TARGETS=${TARGETS:-"levee haproxy"}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
if [ -z "${LEVEE_BIN:-}" ]; then
    if [ -x "$TARGET_DIR/release/levee" ]; then LEVEE_BIN=$TARGET_DIR/release/levee
    else LEVEE_BIN=$TARGET_DIR/debug/levee; fi
fi
RUNDIR=${RUNDIR:-/tmp/levee-recovery}
OUTDIR=${OUTDIR:-$RUNDIR/results-$(date +%Y%m%d-%H%M%S)}
PORTS=(9011 9012 9013)
LEVEE_PORT=8094; LEVEE_ADMIN=9904; HAPROXY_PORT=8095

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for v in ROUNDS RATE DURATION KILL_AT DOWN_FOR CONNS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
[ $((KILL_AT + DOWN_FOR + 3)) -le "$DURATION" ] || die "KILL_AT + DOWN_FOR + 3 must be at most DURATION"
for t in $TARGETS; do case $t in levee|haproxy) ;; *) die "unknown target '$t'";; esac; done
for b in nginx haproxy oha jq ss curl; do command -v $b >/dev/null || die "missing $b"; done
[[ " $TARGETS " != *" levee "* ]] || [ -x "$LEVEE_BIN" ] || die "no Levee binary at $LEVEE_BIN (cargo build)"
port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
for p in "${PORTS[@]}" $LEVEE_PORT $LEVEE_ADMIN $HAPROXY_PORT; do port_free "$p" || die "port $p busy"; done
mkdir -p "$OUTDIR" || exit 1
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$OUTDIR" || exit 1

# ------------------------------------------------------------ every PID started is stopped
declare -A PID=()        # backend1..3, levee, haproxy, oha
cleanup() {
    local rc=$? k
    trap - EXIT INT TERM
    for k in "${!PID[@]}"; do
        [ -n "${PID[$k]}" ] && kill -TERM "${PID[$k]}" 2>/dev/null
    done
    wait 2>/dev/null
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
wait_listening() {   # PORT TIMEOUT_S: until something listens on PORT
    local i
    for i in $(seq 1 $(($2 * 100))); do
        ss -Hltn "sport = :$1" | grep -q . && return 0
        sleep 0.01
    done
    return 1
}

# ------------------------------------------------------------ configs
for i in 1 2 3; do
    cat >"backend$i.conf" <<EOF
# Backend b$i for recovery.sh: one process (no master), so SIGKILL stops it whole.
worker_processes 1;
master_process off;
daemon off;
pid backend$i.pid;
error_log $OUTDIR/backend$i-error.log warn;
events { worker_connections 4096; }
http {
    log_format arrival '\$msec \$request_uri';
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {
        listen 127.0.0.1:${PORTS[$((i - 1))]} backlog=4096;
        access_log $OUTDIR/backend$i.log arrival;
        location / { add_header X-Backend b$i; return 200 "hello\n"; }
    }
}
EOF
done

cat >levee.toml <<EOF
# Levee for recovery.sh: the same checks as haproxy.cfg; outlier detection at its
# defaults (a failing endpoint is ejected for 30 s, its passing checks end that).
[server]
workers = 1
[admin]
address = "127.0.0.1:$LEVEE_ADMIN"
[access_log]
enabled = false
[[listeners]]
name = "main"
address = "127.0.0.1:$LEVEE_PORT"
[[routes]]
name = "all"
path_prefix = "/"
cluster = "app"
[[clusters]]
name = "app"
health_check = { path = "/health", interval = "500ms", timeout = "500ms", jitter = "0s", healthy_threshold = 2, unhealthy_threshold = 3 }
EOF
for p in "${PORTS[@]}"; do printf '[[clusters.endpoints]]\naddress = "127.0.0.1:%s"\n' "$p" >>levee.toml; done

cat >haproxy.cfg <<EOF
# HAProxy for recovery.sh: the same checks as levee.toml (inter 500ms, rise 2,
# fall 3); connection failures retried on another server (Levee does that too).
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout check 500ms
    retries 3
    option redispatch 1
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend be
backend be
    balance roundrobin
    http-reuse always
    option httpchk GET /health
    default-server inter 500ms rise 2 fall 3
EOF
for i in 1 2 3; do echo "    server b$i 127.0.0.1:${PORTS[$((i - 1))]} check" >>haproxy.cfg; done
haproxy -c -q -f haproxy.cfg || die "haproxy.cfg does not parse"
"$LEVEE_BIN" check --config levee.toml >/dev/null 2>levee-check.err \
    || die "levee.toml refused: $(cat levee-check.err)"

start_backend() {    # N
    nginx -p "$OUTDIR/" -c "$OUTDIR/backend$1.conf" 2>>"backend$1-error.log" &
    PID[backend$1]=$!
    wait_listening "${PORTS[$(($1 - 1))]}" 10 || die "backend $1 did not start"
}
start_proxy() {      # TARGET
    case $1 in
        levee)
            "$LEVEE_BIN" run --config levee.toml >levee.out 2>levee.err &
            PID[levee]=$!; wait_listening $LEVEE_PORT 30 || die "levee did not start: $(tail -5 levee.err)"
            URL=http://127.0.0.1:$LEVEE_PORT/ ;;
        haproxy)
            haproxy -db -f haproxy.cfg >haproxy.out 2>&1 &
            PID[haproxy]=$!; wait_listening $HAPROXY_PORT 10 || die "haproxy did not start"
            URL=http://127.0.0.1:$HAPROXY_PORT/ ;;
    esac
    local i
    for i in $(seq 1 100); do curl -fs -o /dev/null "$URL" && return 0; sleep 0.1; done
    die "$1 does not answer on $URL"
}
stop() {             # KEY
    [ -n "${PID[$1]:-}" ] || return 0
    kill -TERM "${PID[$1]}" 2>/dev/null; wait "${PID[$1]}" 2>/dev/null; PID[$1]=""
}

# ------------------------------------------------------------ runs
printf 'target\tround\tback_s\terrors\trequests\tnote\n' >results.tsv
log "Levee: $LEVEE_BIN; haproxy: $(haproxy -v | head -1 | cut -d' ' -f1-3); load: oha -q $RATE -c $CONNS -z ${DURATION}s"
log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for i in 1 2 3; do start_backend $i; done
for round in $(seq 1 "$ROUNDS"); do
    for t in $TARGETS; do
        start_proxy "$t"
        # A few checks pass everywhere before the load starts. The random part
        # puts the restart at a random point of the proxy's 500 ms check cycle:
        # with a fixed delay it would fall at the same point every time.
        sleep "$(awk -v s="$RANDOM" 'BEGIN { srand(s); printf "%.3f", 1.5 + rand() * 0.5 }')"
        oha -z "${DURATION}s" -q "$RATE" -c "$CONNS" --no-tui --output-format json "$URL" >"oha-$t-$round.json" 2>"oha-$t-$round.err" &
        PID[oha]=$!
        sleep "$KILL_AT"
        kill -KILL "${PID[backend3]}"; wait "${PID[backend3]}" 2>/dev/null; PID[backend3]=""
        log "$t round $round: backend 3 killed"
        sleep "$DOWN_FOR"
        mv backend3.log "backend3-before-$t-$round.log" 2>/dev/null
        start_backend 3
        restarted=$(now)
        log "$t round $round: backend 3 restarted"
        wait "${PID[oha]}"; PID[oha]=""
        first=$(awk '$2 != "/health" { print $1; exit }' backend3.log 2>/dev/null)
        back=NA; [ -n "$first" ] && back=$(awk -v a="$first" -v b="$restarted" 'BEGIN { printf "%.3f", a - b }')
        ok=$(jq '.statusCodeDistribution["200"] // 0' "oha-$t-$round.json" 2>/dev/null || echo 0)
        # Failed requests are in errorDistribution, except "aborted due to
        # deadline": the requests oha itself cut off when its -z time ran out.
        neterr=$(jq '[.errorDistribution | to_entries[]? | select(.key != "aborted due to deadline") | .value] | add // 0' "oha-$t-$round.json" 2>/dev/null || echo 0)
        answered=$(jq '[.statusCodeDistribution[]?] | add // 0' "oha-$t-$round.json" 2>/dev/null || echo 0)
        errors=$((answered - ok + neterr))
        note=""
        if [ "$t" = levee ]; then
            # Why the ejection of backend 3 ended (levee_outlier_ejections_ended_total).
            note=$(curl -fs "http://127.0.0.1:$LEVEE_ADMIN/metrics" \
                | grep "^levee_outlier_ejections_ended_total{.*127.0.0.1:${PORTS[2]}" \
                | awk '$NF > 0 { match($0, /reason="[a-z_]+"/); printf "ejection ended: %s x%s ", substr($0, RSTART + 8, RLENGTH - 9), $NF }')
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$round" "$back" "$errors" "$((answered + neterr))" "$note" >>results.tsv
        log "$t round $round: back after ${back}s, $errors client errors of $((answered + neterr)) requests"
        stop "$t"
        sleep 0.5
    done
done
log "machine after: load average $(cut -d' ' -f1-3 /proc/loadavg)"
column -t -s $'\t' results.tsv
echo "results: $OUTDIR"
