#!/usr/bin/env bash
# Levee vs nginx vs haproxy on 127.0.0.1 -- a benchmark, not a test.  See bench/README.md.
#
# Phase 1 (closed loop, wrk): builds Levee (cargo build --release) and runs the shared
#   reference harness <repo>/../shared/bench-ref/run.sh UNCHANGED, with Levee as its extra
#   target (EXTRA_NAME/EXTRA_URL/EXTRA_CMD).  While it runs, a sampler records the peak RSS
#   (VmHWM, summed over a proxy's processes, e.g. nginx master + worker) of every process
#   that run.sh started, and scrapes Levee's /metrics.  Afterwards: a per-proxy table
#   (req/s, p50, p99, peak RSS, CPU, req/pcpu) and ratios Levee / nginx, Levee / haproxy.
# Phase 2 (open loop, oha): the same backend and proxies (same configs, same pinning),
#   each driven at the SAME fixed offered rate with latency correction (coordinated
#   omission), interleaved rounds; reports p50/p99/p99.9, proxy CPU at that rate, and
#   ratios.  Skipped with a message if oha (or jq) is not installed.
#
# Knobs (environment):
#   ROUNDS=5 DURATION=10 WORKERS=1 (Levee worker threads)  TARGETS (default below)
#   RATE=20000 RATE_CONNS=64 RATE_DURATION=$DURATION RATE_WARMUP=2   (phase 2)
#   PHASES="wrk fixed"   run only one phase with PHASES=wrk or PHASES=fixed
#   BUILD=1              0 = use the existing target/release/levee without building
#   SUBJECT=levee        the target the ratio tables are computed for (any target)
#   PIN=LG:PROXY:BACKEND taskset CPU lists, as in bench-ref (empty = unpinned)
#   REF=<repo>/../shared/bench-ref   RUNDIR=/tmp/levee-bench   OUTDIR=$RUNDIR/results-<ts>
#   passed through to bench-ref/run.sh: CONNS THREADS WARMUP PAUSE H2LOAD IDLE_MAX IDLE_WAIT
#   OTHER_MAX RETRIES (phase 2 uses WARMUP-like RATE_WARMUP, PAUSE, IDLE_*, OTHER_MAX, RETRIES too)
set -u -o pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$BENCH" rev-parse --show-toplevel 2>/dev/null) || REPO=$(dirname "$BENCH")
REF=${REF:-$REPO/../shared/bench-ref}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WORKERS=${WORKERS:-1}
RATE=${RATE:-20000}
RATE_CONNS=${RATE_CONNS:-64}
RATE_DURATION=${RATE_DURATION:-$DURATION}
RATE_WARMUP=${RATE_WARMUP:-2}
PHASES=${PHASES:-"wrk fixed"}
BUILD=${BUILD:-1}
SUBJECT=${SUBJECT:-levee}
PIN=${PIN:-}
PAUSE=${PAUSE:-1}
IDLE_MAX=${IDLE_MAX:-10}
IDLE_WAIT=${IDLE_WAIT:-60}
OTHER_MAX=${OTHER_MAX:-20}
RETRIES=${RETRIES:-2}
RUNDIR=${RUNDIR:-/tmp/levee-bench}
OUTDIR=${OUTDIR:-$RUNDIR/results-$(date +%Y%m%d-%H%M%S)}
LEVEE_BIN=${LEVEE_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/levee}
LEVEE_URL=http://127.0.0.1:8090/          # must match bench/levee.toml [[listeners]]
LEVEE_ADMIN=http://127.0.0.1:9901         # must match bench/levee.toml [admin]
if [ "$WORKERS" -ge 2 ] 2>/dev/null; then
    TARGETS=${TARGETS:-"direct nginx haproxy1 haproxy2 levee"}
else
    TARGETS=${TARGETS:-"direct nginx haproxy1 levee"}
fi
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
MAINPID=$BASHPID

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
has() { [[ " $TARGETS " == *" $1 "* ]]; }
phase() { [[ " $PHASES " == *" $1 "* ]]; }

[ -x "$REF/run.sh" ] || die "bench-ref not found at $REF (set REF=...)"
REF=$(cd "$REF" && pwd)
for t in $TARGETS; do
    case $t in direct|nginx|haproxy1|haproxy2|levee) ;; *) die "unknown target '$t'";; esac
done
for v in ROUNDS DURATION WORKERS RATE RATE_CONNS RATE_DURATION RATE_WARMUP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
mkdir -p "$RUNDIR" "$OUTDIR" || exit 1
RUNDIR=$(cd "$RUNDIR" && pwd); OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$OUTDIR" || exit 1          # cwd: nothing stray can land in the repo
IFS=: read -r CPU_LG CPU_PROXY CPU_BACKEND _ <<<"${PIN}:::"
pin() { if [ -n "$1" ]; then echo "taskset -c $1"; fi; }

# ---------------------------------------------------------------- cleanup (every PID we started)
REFPID=""          # bench-ref/run.sh (phase 1); it stops its own children
SAMPLERPID=""      # RSS/metrics sampler (phase 1)
LGPID=""           # load generator (phase 2; its 'timeout' wrapper)
declare -a STARTED=()      # phase-2 server leaders
declare -A PID_OF=()
kids() { local p; for p in "$@"; do cat "/proc/$p/task/$p/children" 2>/dev/null; done; }
cleanup() {
    local rc=$? p i all alive
    trap - EXIT INT TERM
    for p in $LGPID $SAMPLERPID; do
        kill -0 "$p" 2>/dev/null && { kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; }
    done
    if [ -n "$REFPID" ] && kill -0 "$REFPID" 2>/dev/null; then
        log "stopping bench-ref/run.sh (pid $REFPID)"
        kill -TERM "$REFPID" 2>/dev/null
        for i in $(seq 1 100); do kill -0 "$REFPID" 2>/dev/null || break; sleep 0.1; done   # <= 10 s
        kill -0 "$REFPID" 2>/dev/null && kill -KILL "$REFPID" 2>/dev/null
    fi
    if [ ${#STARTED[@]} -gt 0 ]; then
        all="${STARTED[*]} $(kids "${STARTED[@]}")"
        log "stopping PIDs: $(echo $all)"
        for p in "${STARTED[@]}"; do kill -TERM "$p" 2>/dev/null; done
        for i in $(seq 1 50); do                                                        # <= 5 s
            alive=0; for p in $all; do kill -0 "$p" 2>/dev/null && alive=1; done
            [ $alive -eq 0 ] && break; sleep 0.1
        done
        for p in $all; do kill -0 "$p" 2>/dev/null && { log "SIGKILL $p"; kill -KILL "$p" 2>/dev/null; }; done
    fi
    wait 2>/dev/null
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers
hwm_kb() {      # VmHWM (kB) of one PID; bash builtins only (cheap enough to sample often)
    local k v _
    while read -r k v _; do [ "$k" = VmHWM: ] && { echo "$v"; return; }; done 2>/dev/null <"/proc/$1/status"
    echo 0
}
hwm_tree_kb() { # sum of VmHWM over PID and its direct children (nginx workers)
    local p s=0
    for p in "$1" $(kids "$1"); do s=$((s + $(hwm_kb "$p"))); done
    echo $s
}
classify() {    # PID -> target name, from its command line (processes bench-ref/run.sh starts)
    local -a argv; local cmd
    mapfile -d '' argv 2>/dev/null <"/proc/$1/cmdline" || return 1
    cmd="${argv[*]}"
    case $cmd in
        "$LEVEE_BIN run"*)     echo levee ;;
        *nginx-proxy.conf*)    echo nginx ;;
        *backend.conf*)        echo backend ;;
        *haproxy-nt1.cfg*)     echo haproxy1 ;;
        *haproxy-nt2.cfg*)     echo haproxy2 ;;
        *) return 1 ;;
    esac
}
median() { sort -g | awk '{a[NR]=$1} END{ if (NR==0) {print "NA"; exit} if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
# col FILE TOOL TARGET COLUMN CLEANCOL : values of clean runs (all runs if none is clean)
col() {
    awk -F'\t' -v tl="$2" -v t="$3" -v c="$4" -v kc="$5" '
        $1==tl && $2==t && $c ~ /^-?[0-9.]+$/ { n++; v[n]=$c; k[n]=$kc; if ($kc==1) nc++ }
        END { for (i=1; i<=n; i++) if (nc==0 || k[i]==1) print v[i] }' "$1"
}
reuse_report() {   # METRICS_FILE : upstream connection reuse from levee_upstream_requests_total
    local f=$1
    if [ ! -s "$f" ]; then echo "Levee upstream reuse: no /metrics scrape succeeded ($LEVEE_ADMIN/metrics)"; return; fi
    awk '
        /^levee_upstream_requests_total[{ ]/ {
            v = $NF + 0; conn = ""; ep = "";
            if (match($0, /connection="[^"]*"/)) conn = substr($0, RSTART+12, RLENGTH-13);
            if (match($0, /endpoint="[^"]*"/))   ep   = substr($0, RSTART+10, RLENGTH-11);
            tot += v; if (conn == "reused") re += v; else if (conn == "new") nw += v;
            if (!(ep in per)) order[++n] = ep; per[ep] += v; found = 1 }
        END {
            if (!found) { print "Levee upstream reuse: metric levee_upstream_requests_total not exported (yet)"; exit }
            printf "Levee upstream reuse: %.0f upstream requests, reused %.0f, new %.0f -> reuse %.2f %%\n", tot, re, nw, (tot > 0 ? 100*re/tot : 0);
            printf "  per endpoint:"; for (i = 1; i <= n; i++) printf " %s=%.0f", order[i], per[order[i]]; printf "\n" }' "$f"
}

# ---------------------------------------------------------------- Levee: build + config
LEVEE_CFG="$OUTDIR/levee.toml"
sed -E "s/^([[:space:]]*workers[[:space:]]*=[[:space:]]*)[0-9]+/\1$WORKERS/" "$BENCH/levee.toml" >"$LEVEE_CFG"
if has levee; then
    if [ "$BUILD" = 1 ]; then
        log "cargo build --release (log: $OUTDIR/build.log)"
        if ! (cd "$REPO" && cargo build --release) >"$OUTDIR/build.log" 2>&1; then
            tail -20 "$OUTDIR/build.log" >&2
            die "cargo build --release failed; to bench only nginx/haproxy: TARGETS=\"direct nginx haproxy1\" $0"
        fi
    fi
    [ -x "$LEVEE_BIN" ] || die "no Levee binary at $LEVEE_BIN"
fi
log "output: $OUTDIR   targets: $TARGETS   Levee workers: $WORKERS"

# ================================================================ phase 1: wrk via bench-ref/run.sh
RSS1="$OUTDIR/peak-rss-wrk.tsv"
METRICS1="$OUTDIR/levee-metrics-wrk.txt"
SUMMARY="$OUTDIR/levee-summary.txt"
: >"$SUMMARY"

rss_sampler() {    # PARENT : until PARENT exits (bounded), max VmHWM per target -> $RSS1
    local parent=$1 i c name kb last=0
    local -A max=() cls=()
    trap - EXIT; trap 'exit 0' TERM INT
    for ((i = 0; i < 86400; i++)); do          # 1 sample/s; hard cap 24 h
        kill -0 "$parent" 2>/dev/null || break
        for c in $(kids "$parent"); do
            # cache positive answers only: 'bash -c "exec levee …"' becomes Levee a moment later
            [ -n "${cls[$c]:-}" ] || cls[$c]=$(classify "$c")
            name=${cls[$c]}; [ -n "$name" ] || continue
            kb=$(hwm_tree_kb "$c")
            [ "$kb" -gt "${max[$name]:-0}" ] && max[$name]=$kb
        done
        for name in "${!max[@]}"; do printf '%s\t%s\n' "$name" "${max[$name]}"; done >"$RSS1.tmp" && mv "$RSS1.tmp" "$RSS1"
        if has levee && [ $((i - last)) -ge 5 ]; then     # scrape Levee's metrics every ~5 s
            last=$i
            curl -s --max-time 1 "$LEVEE_ADMIN/metrics" -o "$METRICS1.tmp" 2>/dev/null && [ -s "$METRICS1.tmp" ] \
                && mv "$METRICS1.tmp" "$METRICS1"
        fi
        sleep 1
    done
    rm -f "$RSS1.tmp" "$METRICS1.tmp"
}

if phase wrk; then
    REF_TARGETS=$(for t in $TARGETS; do [ "$t" != levee ] && printf '%s ' "$t"; done)
    declare -a EXTRA=()
    has levee && EXTRA=(EXTRA_NAME=levee EXTRA_URL="$LEVEE_URL" EXTRA_CMD="$LEVEE_BIN run --config $LEVEE_CFG")
    log "phase 1: $REF/run.sh (wrk, closed loop)"
    env ROUNDS="$ROUNDS" DURATION="$DURATION" TARGETS="${REF_TARGETS% }" PIN="$PIN" RUNDIR="$RUNDIR" \
        OUTDIR="$OUTDIR/wrk" PAUSE="$PAUSE" IDLE_MAX="$IDLE_MAX" IDLE_WAIT="$IDLE_WAIT" OTHER_MAX="$OTHER_MAX" \
        RETRIES="$RETRIES" "${EXTRA[@]}" "$REF/run.sh" &
    REFPID=$!
    rss_sampler "$REFPID" &
    SAMPLERPID=$!
    wait "$REFPID"; rc=$?; REFPID=""
    kill -TERM "$SAMPLERPID" 2>/dev/null; wait "$SAMPLERPID" 2>/dev/null; SAMPLERPID=""
    [ $rc -eq 0 ] || die "bench-ref/run.sh failed (exit $rc); logs in $RUNDIR, outputs in $OUTDIR/wrk"

    RES="$OUTDIR/wrk/results.tsv"
    : >"$OUTDIR/wrk-medians.tsv"
    {
        echo
        echo "== Levee benchmark, wrk phase (medians over clean runs, from $RES) =="
        printf '%-9s %9s %9s %9s %6s %9s %10s %6s\n' target "req/s" "p50_us" "p99_us" "cpu%" "req/pcpu" "peakRSS_MB" clean
        for t in $TARGETS; do
            rps=$(col "$RES" wrk "$t" 5 14 | median); p50=$(col "$RES" wrk "$t" 6 14 | median)
            p99=$(col "$RES" wrk "$t" 7 14 | median); pc=$(col "$RES" wrk "$t" 8 14 | median)
            rss=$(awk -F'\t' -v t="$t" '$1==t{print $2}' "$RSS1" 2>/dev/null)
            cl=$(awk -F'\t' -v t="$t" '$1=="wrk" && $2==t {a++; if ($14==1) c++} END{printf "%d/%d", c, a}' "$RES")
            [ "$t" = direct ] && { pc=NA; rss=; }
            awk -v t="$t" -v m="$rps" -v a="$p50" -v b="$p99" -v pc="$pc" -v rss="$rss" -v cl="$cl" 'BEGIN{
                eff = (pc+0 > 0) ? sprintf("%.0f", m/(pc/100)) : "-";
                printf "%-9s %9.0f %9.0f %9.0f %6s %9s %10s %6s\n", t, m, a, b, (pc+0>0 ? pc : "-"), eff,
                       (rss+0 > 0 ? sprintf("%.1f", rss/1024) : "-"), cl }'
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$rps" "$p50" "$p99" "$pc" "$rss" >>"$OUTDIR/wrk-medians.tsv"
        done
        brss=$(awk -F'\t' '$1=="backend"{print $2}' "$RSS1" 2>/dev/null)
        echo "peakRSS_MB = max VmHWM during the run, summed over the proxy's processes (nginx: master + worker);"
        echo "             backend nginx (master + worker): $(awk -v k="${brss:-0}" 'BEGIN{printf "%.1f", k/1024}') MB"
        echo "clean = undisturbed runs / all attempts (0/N: medians over disturbed runs, not trustworthy)"
        if has "$SUBJECT"; then
            echo
            echo "ratio $SUBJECT / X   req/s  req/pcpu      p50      p99  peakRSS"
            for x in $TARGETS; do
                [ "$x" = "$SUBJECT" ] || [ "$x" = direct ] && continue
                awk -F'\t' -v s="$SUBJECT" -v x="$x" '
                    { m[$1]=$2; a[$1]=$3; b[$1]=$4; c[$1]=$5; r[$1]=$6 }
                    function q(u, v) { return (u+0 > 0 && v+0 > 0) ? sprintf("%.2f", u/v) : "-" }
                    END {
                        es = (c[s]+0 > 0) ? m[s]/(c[s]/100) : 0; ex = (c[x]+0 > 0) ? m[x]/(c[x]/100) : 0;
                        printf "  / %-13s %6s %9s %8s %8s %8s\n", x, q(m[s],m[x]), q(es,ex), q(a[s],a[x]), q(b[s],b[x]), q(r[s],r[x]) }' \
                    "$OUTDIR/wrk-medians.tsv"
            done
            echo "  better if           >1        >1       <1       <1       <1"
            echo "  (wrk is closed loop: at saturation p50 ~ CONNS / req/s, so p50/p99 here mostly mirror req/s;"
            echo "   see the fixed-rate table for latency)"
        fi
        has levee && { echo; reuse_report "$METRICS1"; }
    } | tee -a "$SUMMARY"
fi

# ================================================================ phase 2: fixed offered rate (oha)
if phase fixed; then
    if ! command -v oha >/dev/null || ! command -v jq >/dev/null; then
        {
            echo
            echo "== fixed-rate phase SKIPPED: needs oha and jq on PATH =="
            echo "   install: cargo install oha --locked   (a few minutes; binary in ~/.cargo/bin)"
            echo "            apt-get install -y jq"
        } | tee -a "$SUMMARY"
        exit 0
    fi
    log "phase 2: fixed rate $RATE req/s, oha -c $RATE_CONNS, ${RATE_DURATION}s x $ROUNDS rounds"
    declare -A URL=([direct]=http://127.0.0.1:9001/ [nginx]=http://127.0.0.1:8081/
                    [haproxy1]=http://127.0.0.1:8082/ [haproxy2]=http://127.0.0.1:8083/ [levee]=$LEVEE_URL)
    port_free() { [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
    start() {   # NAME CPUSET cmd...
        local name=$1 cpus=$2; shift 2
        $(pin "$cpus") "$@" >"$RUNDIR/fixed-$name.stdout" 2>&1 &
        STARTED+=("$!"); PID_OF[$name]=$!
        log "started $name pid=$! cpus=${cpus:-any}: $*"
    }
    wait_http() {   # NAME URL : bounded (10 s)
        local i
        for i in $(seq 1 100); do
            kill -0 "${PID_OF[$1]}" 2>/dev/null || die "$1 died; see $RUNDIR/fixed-$1.stdout"
            [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$2")" = 200 ] && return 0
            sleep 0.1
        done
        die "$1 not answering 200 on $2 after 10 s"
    }
    for p in 9001 9002 9003; do port_free $p || die "port $p busy"; done
    has nginx && { port_free 8081 || die "port 8081 busy"; }
    has haproxy1 && { port_free 8082 || die "port 8082 busy"; }
    has haproxy2 && { port_free 8083 || die "port 8083 busy"; }
    has levee && { port_free 8090 && port_free 9901 || die "port 8090 or 9901 busy"; }

    start backend "$CPU_BACKEND" nginx -p "$RUNDIR/" -e "$RUNDIR/backend-error.log" -c "$REF/backend.conf"
    for p in 9001 9002 9003; do wait_http backend "http://127.0.0.1:$p/"; done
    if has nginx; then
        start nginx "$CPU_PROXY" nginx -p "$RUNDIR/" -e "$RUNDIR/nginx-proxy-error.log" -c "$REF/nginx-proxy.conf"
        wait_http nginx "${URL[nginx]}"
    fi
    has haproxy1 && { start haproxy1 "$CPU_PROXY" haproxy -db -f "$REF/haproxy-nt1.cfg"; wait_http haproxy1 "${URL[haproxy1]}"; }
    has haproxy2 && { start haproxy2 "$CPU_PROXY" haproxy -db -f "$REF/haproxy-nt2.cfg"; wait_http haproxy2 "${URL[haproxy2]}"; }
    has levee && { start levee "$CPU_PROXY" "$LEVEE_BIN" run --config "$LEVEE_CFG"; wait_http levee "$LEVEE_URL"; }

    proc_ticks() {  # utime+stime of PID tree (ticks)
        local p t=0 v
        for p in "$@" $(kids "$@"); do
            v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}'); t=$((t + ${v:-0}))
        done
        echo $t
    }
    sys_ticks() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat; }
    child_ticks() { sed 's/.*) //' "/proc/$MAINPID/stat" | awk '{print $14+$15}'; }
    busy_pct() { echo "$1 $2" | awk '{dt=$3-$1; di=$4-$2; b=0; if (dt>0) b=100*(dt-di)/dt; printf "%.0f", b}'; }
    wait_idle() {   # bounded (IDLE_WAIT s); echoes last machine busy %
        local a b bz i
        for i in $(seq 1 $((IDLE_WAIT * 2 + 1))); do
            a=$(sys_ticks); sleep 0.5; b=$(sys_ticks); bz=$(busy_pct "$a" "$b")
            [ "$bz" -le "$IDLE_MAX" ] && break
            [ "$i" -eq 1 ] && log "machine ${bz}% busy before run; waiting up to ${IDLE_WAIT}s"
        done
        echo "$bz"
    }
    FR="$OUTDIR/fixed.tsv"
    : >"$OUTDIR/fixed-medians.tsv"
    printf 'tool\ttarget\tround\tattempt\trps\tp50_us\tp99_us\tp999_us\tmax_us\tproxy_cpu\tbackend_cpu\tloadgen_cpu\tother_cpu\tprerun_busy\terrors\tclean\n' >"$FR"
    # oha_run TARGET ROUND(0 = warm-up) SECONDS ATTEMPT ; returns 1 if the run was disturbed
    oha_run() {
        local t=$1 r=$2 secs=$3 a=$4 out ppid="" bpid=${PID_OF[backend]} bg=0 rc pt0 pt1 bt0 bt1 ct0 ct1 s0 s1 w0 w1
        [ "$t" != direct ] && ppid=${PID_OF[$t]}
        out="$OUTDIR/fixed/oha-$t-r$r-a$a.json"; mkdir -p "$OUTDIR/fixed"
        [ "$r" != 0 ] && bg=$(wait_idle)
        pt0=$(proc_ticks $ppid); bt0=$(proc_ticks "$bpid"); s0=$(sys_ticks); ct0=$(child_ticks); w0=$(date +%s%N)
        timeout $((secs + 30)) $(pin "$CPU_LG") oha -z "${secs}s" -q "$RATE" -c "$RATE_CONNS" --latency-correction \
            --no-tui --output-format json "${URL[$t]}" >"$out" 2>"$out.err" &
        LGPID=$!; wait "$LGPID"; rc=$?; LGPID=""
        w1=$(date +%s%N); ct1=$(child_ticks); s1=$(sys_ticks); pt1=$(proc_ticks $ppid); bt1=$(proc_ticks "$bpid")
        [ "$r" = 0 ] && return 0
        local rps p50 p99 p999 mx err pcpu bcpu lcpu ocpu clean=1
        read -r rps p50 p99 p999 mx err < <(jq -r '[.summary.requestsPerSec, .latencyPercentiles.p50,
                .latencyPercentiles.p99, .latencyPercentiles["p99.9"], .summary.slowest,
                (([.statusCodeDistribution | to_entries[] | select(.key != "200") | .value] | add // 0)
                 + ([.errorDistribution | to_entries[] | select(.key | test("deadline") | not) | .value] | add // 0))]
              | map(. // 0) | "\(.[0]) \(.[1]*1e6) \(.[2]*1e6) \(.[3]*1e6) \(.[4]*1e6) \(.[5])"' "$out" 2>/dev/null) \
            || { rps=0; p50=0; p99=0; p999=0; mx=0; err=?; rc=1; }
        read -r pcpu bcpu lcpu ocpu < <(awk -v p0="$pt0" -v p1="$pt1" -v b0="$bt0" -v b1="$bt1" -v c0="$ct0" -v c1="$ct1" \
            -v s="$s0 $s1" -v hz="$HZ" -v n="$NCPU" -v w0="$w0" -v w1="$w1" 'BEGIN{
                split(s, a, " "); di=a[4]-a[2]; w=(w1-w0)/1e9; if (w<=0) w=1;
                p=(p1-p0)/hz/w*100; b=(b1-b0)/hz/w*100; l=(c1-c0)/hz/w*100; o=n*100 - di/hz/w*100 - p-b-l;
                printf "%.0f %.0f %.0f %.0f\n", p, b, l, o }')
        [ "$t" = direct ] && pcpu=-
        [ "$ocpu" -gt "$OTHER_MAX" ] && clean=0
        [ "$bg" -gt "$IDLE_MAX" ] && clean=0
        [ "$rc" -ne 0 ] && { clean=0; log "WARN: oha $t round $r exit $rc (see $out.err)"; }
        printf 'oha\t%s\t%s\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$r" "$a" "$rps" "$p50" "$p99" \
            "$p999" "$mx" "$pcpu" "$bcpu" "$lcpu" "$ocpu" "$bg" "$err" "$clean" >>"$FR"
        log "oha $t r$r a$a: rps=$(printf %.0f "$rps") p50=$(printf %.0f "$p50")us p99=$(printf %.0f "$p99")us p99.9=$(printf %.0f "$p999")us cpu(proxy/backend/loadgen/other)=$pcpu/$bcpu/$lcpu/$ocpu% pre-run-busy=$bg% err=$err clean=$clean"
        [ $clean = 1 ]
    }
    if [ "$RATE_WARMUP" -gt 0 ]; then for t in $TARGETS; do oha_run "$t" 0 "$RATE_WARMUP" 1; done; fi
    for r in $(seq 1 "$ROUNDS"); do
        for t in $TARGETS; do
            for a in $(seq 1 $((RETRIES + 1))); do
                oha_run "$t" "$r" "$RATE_DURATION" "$a" && break
                [ "$a" -le "$RETRIES" ] && log "run disturbed by other activity; retrying ($a/$RETRIES)"
            done
            sleep "$PAUSE"
        done
    done
    declare -A RSS2=()
    for t in $TARGETS; do [ "$t" != direct ] && RSS2[$t]=$(hwm_tree_kb "${PID_OF[$t]}"); done
    has levee && curl -s --max-time 2 "$LEVEE_ADMIN/metrics" -o "$OUTDIR/levee-metrics-fixed.txt"

    {
        echo
        echo "== fixed offered rate: oha -q $RATE -c $RATE_CONNS -z ${RATE_DURATION}s --latency-correction; $ROUNDS interleaved rounds; medians over clean runs =="
        printf '%-9s %8s %8s %8s %9s %9s %6s %6s %6s %6s %9s %6s %5s\n' target offered "req/s" p50_us p99_us p99.9_us \
            proxy back lgen other peakRSS_MB clean errs
        for t in $TARGETS; do
            rps=$(col "$FR" oha "$t" 5 16 | median); p50=$(col "$FR" oha "$t" 6 16 | median)
            p99=$(col "$FR" oha "$t" 7 16 | median); p999=$(col "$FR" oha "$t" 8 16 | median)
            pc=$(col "$FR" oha "$t" 10 16 | median); bc=$(col "$FR" oha "$t" 11 16 | median)
            lc=$(col "$FR" oha "$t" 12 16 | median); oc=$(col "$FR" oha "$t" 13 16 | median)
            er=$(col "$FR" oha "$t" 15 16 | awk '{s+=$1} END{print s+0}')
            cl=$(awk -F'\t' -v t="$t" '$2==t {a++; if ($16==1) c++} END{printf "%d/%d", c, a}' "$FR")
            [ "$t" = direct ] && pc=-
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$rps" "$p50" "$p99" "$p999" "$pc" >>"$OUTDIR/fixed-medians.tsv"
            awk -v t="$t" -v q="$RATE" -v m="$rps" -v a="$p50" -v b="$p99" -v c="$p999" -v pc="$pc" -v bc="$bc" -v lc="$lc" \
                -v oc="$oc" -v rss="${RSS2[$t]:-}" -v cl="$cl" -v er="$er" 'BEGIN{
                flag = (m+0 < 0.95*q) ? "!" : " ";
                printf "%-9s %8d %7.0f%s %8.0f %9.0f %9.0f %6s %6s %6s %6s %9s %6s %5s\n", t, q, m, flag, a, b, c, pc, bc, lc, oc,
                       (rss+0 > 0 ? sprintf("%.1f", rss/1024) : "-"), cl, er }'
        done
        echo "req/s = achieved rate ('!' = below 95 % of offered: that target could not keep up, its latencies"
        echo "        include queueing); latencies are corrected for coordinated omission (measured from the"
        echo "        time each request was scheduled).  proxy/back/lgen/other = CPU % of ONE core, as in phase 1:"
        echo "        at a fixed rate, lower proxy CPU = less CPU per request.  peakRSS_MB = VmHWM at the end of phase 2."
        if has "$SUBJECT"; then
            echo
            echo "ratio $SUBJECT / X      p50      p99    p99.9  proxyCPU"
            for x in $TARGETS; do
                [ "$x" = "$SUBJECT" ] || [ "$x" = direct ] && continue
                awk -F'\t' -v s="$SUBJECT" -v x="$x" -v rate="$RATE" '
                    { m[$1]=$2; a[$1]=$3; b[$1]=$4; c[$1]=$5; p[$1]=$6 }
                    function q(u, v) { return (u+0 > 0 && v+0 > 0) ? sprintf("%.2f", u/v) : "-" }
                    END { note = "";
                          if (m[s]+0 < 0.95*rate) note = note " (" s " below offered rate)";
                          if (m[x]+0 < 0.95*rate) note = note " (" x " below offered rate)";
                          printf "  / %-13s %7s %8s %8s %9s%s\n", x, q(a[s],a[x]), q(b[s],b[x]), q(c[s],c[x]), q(p[s],p[x]), note }' \
                    "$OUTDIR/fixed-medians.tsv"
            done
            echo "  better if            <1       <1       <1        <1"
        fi
        has levee && { echo; reuse_report "$OUTDIR/levee-metrics-fixed.txt" | sed 's/^Levee upstream reuse:/Levee upstream reuse (fixed-rate phase):/'; }
        echo "raw outputs: $OUTDIR"
    } | tee -a "$SUMMARY"
fi
