#!/usr/bin/env bash
# What a feature costs: Levee with and without it, side by side in one run -- a benchmark,
# not a test.  See bench/README.md ("Feature cost").
#
# Starts the bench-ref backend (one nginx, 127.0.0.1:9001-9003) and one Levee per variant,
# each on its own port, then runs wrk against every variant, ROUNDS times, interleaved
# (A B C A B C ...), and prints the median req/s, 2xx/s (goodput: a shed 503 is cheap and
# is not throughput) and p99 of each, and the ratio of its 2xx/s and p99 to `plain`.
#
# Variants (VARIANTS, default "plain resilience ratelimit"):
#   plain        bench/levee.toml as is
#   resilience   + cluster circuit breaker, endpoint circuit breakers, bulkhead
#                (max_concurrent 1000) and the retry budget (on by default in all variants)
#   ratelimit    + a local per-client-IP token bucket on the route that never triggers
#   redis        + the same rule in a shared Redis (starts redis-server on 127.0.0.1:6391),
#                in the default redis_mode, "lease" (docs/rate-limiting.md, "Leases")
#   redis-exact  + the same, with redis_mode = "exact": one Redis round trip per request
#   adaptive     + adaptive concurrency
#   slo          + an SLO on every route (availability and latency), with an open "dashboard"
#                standing by: an SSE client on the admin API's /events/stream and a poller
#                of /slo, /status, /degradation and /metrics once a second, both running
#                for the whole measurement (docs/slo.md, "Cost")
#
# Knobs: ROUNDS=3 DURATION=10 CONNS=64 THREADS=1 WORKERS=1 BUILD=1 PAUSE=1
#        REF=<repo>/../shared/bench-ref RUNDIR=/tmp/levee-variants
set -u -o pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$BENCH" rev-parse --show-toplevel 2>/dev/null) || REPO=$(dirname "$BENCH")
REF=${REF:-$REPO/../shared/bench-ref}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-1}
BUILD=${BUILD:-1}
PAUSE=${PAUSE:-1}
VARIANTS=${VARIANTS:-"plain resilience ratelimit"}
RUNDIR=${RUNDIR:-/tmp/levee-variants}
LEVEE_BIN=${LEVEE_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/levee}

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v wrk >/dev/null || die "wrk not installed (apt-get install wrk)"
command -v nginx >/dev/null || die "nginx not installed (apt-get install nginx)"
[ -f "$REF/backend.conf" ] || die "bench-ref not found at $REF (set REF=...)"
REF=$(cd "$REF" && pwd)
mkdir -p "$RUNDIR" || exit 1
RUNDIR=$(cd "$RUNDIR" && pwd)
cd "$RUNDIR" || exit 1

declare -a PIDS=()
cleanup() {
    local p
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for _ in $(seq 1 50); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive -eq 0 ] && break; sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$BUILD" = 1 ]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release) >"$RUNDIR/build.log" 2>&1 || { tail -20 "$RUNDIR/build.log"; die "build failed"; }
fi
[ -x "$LEVEE_BIN" ] || die "no Levee binary at $LEVEE_BIN"

# A variant's config: bench/levee.toml with its own ports and extra lines in the cluster
# (after `pool_max_idle`) and in the route (after `cluster = "backends"`).
config() {  # NAME PORT ADMIN CLUSTER_EXTRA ROUTE_EXTRA TOP_EXTRA
    local f="$RUNDIR/levee-$1.toml"
    { printf '%s\n' "$6"
      sed -E -e "s/^([[:space:]]*workers[[:space:]]*=[[:space:]]*)[0-9]+/\1$WORKERS/" \
          -e "s/127\.0\.0\.1:8090/127.0.0.1:$2/" -e "s/127\.0\.0\.1:9901/127.0.0.1:$3/" \
          "$BENCH/levee.toml" |
      awk -v c="$4" -v r="$5" '{ print } /^pool_max_idle/ && c != "" { print c } /^cluster = "backends"/ && r != "" { print r }'
    } >"$f"
    echo "$f"
}

RESILIENCE='circuit_breaker = { consecutive_failures = 5, failure_rate = 0.5, open_duration = "30s" }
endpoint_circuit_breaker = { consecutive_failures = 5 }
bulkhead = { max_concurrent = 1000, max_queue = 100, queue_timeout = "500ms" }
retry = { max_attempts = 2, retry_on = ["connect_failure", "gateway_error"] }'
RATELIMIT='rate_limits = ["per-ip"]'
SLO='slo = { target = 99.9, window_days = 30, latency = "300ms" }'
declare -A DASHBOARD=()
RULE='[rate_limit]
store = "STORE"
redis_url = "redis://127.0.0.1:6391"
on_store_error = "allow"

[[rate_limit.rules]]
name = "per-ip"
key = ["client_ip"]
algorithm = "token_bucket"
limit = 100000000
period = "1s"
'

log "backend: nginx -c $REF/backend.conf"
nginx -p "$RUNDIR/" -e "$RUNDIR/backend-error.log" -c "$REF/backend.conf" &
PIDS+=($!)

declare -A URL=()
port=8191; admin=9991
for v in $VARIANTS; do
    case $v in
        plain)      cfg=$(config "$v" $port $admin "" "" "") ;;
        resilience) cfg=$(config "$v" $port $admin "$RESILIENCE" "" "") ;;
        ratelimit)  cfg=$(config "$v" $port $admin "" "$RATELIMIT" "${RULE/STORE/local}") ;;
        redis|redis-exact)
            command -v redis-server >/dev/null || die "redis-server not installed"
            if [ -z "${REDIS_STARTED:-}" ]; then
                redis-server --port 6391 --bind 127.0.0.1 --save "" --appendonly no >"$RUNDIR/redis.log" 2>&1 &
                PIDS+=($!); REDIS_STARTED=1
            fi
            rule=${RULE/STORE/redis}
            [ "$v" = redis-exact ] && rule=${rule/on_store_error = \"allow\"/on_store_error = \"allow\"$'\n'redis_mode = \"exact\"}
            cfg=$(config "$v" $port $admin "" "$RATELIMIT" "$rule") ;;
        adaptive)   cfg=$(config "$v" $port $admin 'adaptive_concurrency = { max_limit = 10000 }' "" "") ;;
        slo)        cfg=$(config "$v" $port $admin "" "$SLO" "")
                    DASHBOARD[$v]="http://127.0.0.1:$admin" ;;
        *) die "unknown variant '$v'" ;;
    esac
    "$LEVEE_BIN" check --config "$cfg" >/dev/null || die "variant $v: config refused ($cfg)"
    "$LEVEE_BIN" run --config "$cfg" >"$RUNDIR/levee-$v.log" 2>&1 &
    PIDS+=($!)
    URL[$v]="http://127.0.0.1:$port/"
    port=$((port + 1)); admin=$((admin + 1))
done
for v in $VARIANTS; do
    for _ in $(seq 1 100); do curl -s -o /dev/null "${URL[$v]}" && break; sleep 0.1; done
    curl -s -o /dev/null "${URL[$v]}" || die "variant $v does not answer (see $RUNDIR/levee-$v.log)"
done

# What an open dashboard asks of a variant's admin API, for the whole run: the event
# stream held open, and the JSON and metrics read once a second.
for v in "${!DASHBOARD[@]}"; do
    a=${DASHBOARD[$v]}
    curl -sN "$a/events/stream" >"$RUNDIR/sse-$v.log" 2>&1 &
    PIDS+=($!)
    ( while :; do
          for p in /slo /status /degradation /metrics; do curl -s -o /dev/null "$a$p"; done
          sleep 1
      done ) >/dev/null 2>&1 &
    PIDS+=($!)
    log "variant $v: SSE client and admin poller on $a"
done

RESULTS="$RUNDIR/results.tsv"
: >"$RESULTS"
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000 } else print v }'; }
for r in $(seq 1 "$ROUNDS"); do
    for v in $VARIANTS; do
        wrk -t"$THREADS" -c"$CONNS" -d2s "${URL[$v]}" >/dev/null 2>&1    # warm-up
        out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "${URL[$v]}" 2>&1)
        rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
        p99=$(awk '$1 == "99%" { print $2 }' <<<"$out" | to_ms)
        errs=$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out")
        # Goodput: answers that were not errors (an adaptive limit's 503s are cheap and
        # would otherwise count as throughput).
        bad=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")
        ok=$(awk -v r="${rps:-0}" -v b="${bad:-0}" -v d="$DURATION" 'BEGIN { printf "%.2f", r - b / d }')
        printf '%s\t%s\t%s\t%s\t%s\n' "$v" "$r" "${rps:-NA}" "${p99:-NA}" "$ok" >>"$RESULTS"
        log "round $r $v: $rps req/s ($ok ok/s), p99 ${p99} ms ${errs:+($errs)}"
        sleep "$PAUSE"
    done
done

median() { sort -g | awk '{a[NR]=$1} END{ if (NR==0) {print "NA"; exit} if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
printf '\n%-12s %12s %12s %10s %12s %10s\n' variant "req/s" "2xx/s" "p99 ms" "2xx vs plain" "p99 vs"
base_rps=$(awk -F'\t' '$1=="plain" {print $5}' "$RESULTS" | median)
base_p99=$(awk -F'\t' '$1=="plain" {print $4}' "$RESULTS" | median)
for v in $VARIANTS; do
    all=$(awk -F'\t' -v v="$v" '$1==v {print $3}' "$RESULTS" | median)
    rps=$(awk -F'\t' -v v="$v" '$1==v {print $5}' "$RESULTS" | median)
    p99=$(awk -F'\t' -v v="$v" '$1==v {print $4}' "$RESULTS" | median)
    awk -v v="$v" -v a="$all" -v r="$rps" -v p="$p99" -v br="$base_rps" -v bp="$base_p99" 'BEGIN {
        printf "%-12s %12.0f %12.0f %10.2f %12s %10s\n", v, a, r, p,
            (br > 0 ? sprintf("%.3f", r / br) : "NA"), (bp > 0 ? sprintf("%.2f", p / bp) : "NA") }'
done
echo "(medians of $ROUNDS interleaved rounds of wrk -t$THREADS -c$CONNS -d${DURATION}s; raw: $RESULTS)"
