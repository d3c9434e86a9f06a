#!/usr/bin/env bash
# TLS termination: Levee vs nginx vs HAProxy on 127.0.0.1 -- a benchmark, not a test.
# See bench/README.md ("TLS").
#
# Each proxy terminates TLS with the SAME certificate in front of the bench-ref backend
# (<repo>/../shared/bench-ref/backend.conf, 127.0.0.1:9001-9003): Levee with WORKERS threads
# (default 1), nginx with 1 worker, HAProxy with nbthread 1.  For each certificate type
# (ECDSA P-256, RSA 2048; generated here with openssl into the output dir) it measures, in
# interleaved rounds (A B C A B C ...):
#   full     full handshakes/s: HS_CLIENTS parallel `openssl s_time -new` (handshake, then close;
#            HS_WWW=1 also fetches / on each connection), per TLS version in VERSIONS
#   resumed  resumed handshakes/s: `openssl s_time -reuse -www /` (one GET per connection: TLS 1.3
#            tickets arrive after the handshake, s_time only keeps them when it reads); the
#            `reuse%` column says how many connections really resumed
#   https    HTTPS requests/s over keep-alive (wrk -t THREADS -c CONNS, TLS 1.3)
#   fixed    latency at a fixed offered rate (oha -q RATE -c RATE_CONNS --latency-correction, TLS 1.3)
# and the proxy's CPU during each run, hence the rate per proxy core-second (the fair number on a
# shared 2-core box: client, proxy and backend share the cores).
#
# Knobs (environment):
#   ROUNDS=3 DURATION=10 CERTS="ecdsa rsa" VERSIONS="1.3 1.2" TESTS="full resumed https fixed"
#   TARGETS="levee nginx haproxy"  SUBJECT=levee (ratios are SUBJECT / each other target)
#   WORKERS=1  HS_CLIENTS=4  HS_WWW=0  CONNS=64 THREADS=1  RATE=10000 RATE_CONNS=64
#   PIN=LG:PROXY:BACKEND (taskset CPU lists; empty = unpinned)  IDLE_MAX=10 IDLE_WAIT=60 OTHER_MAX=20 RETRIES=2
#   LEVEE_BIN=<repo>/target/release/levee  REF=<repo>/../shared/bench-ref
#   RUNDIR=/tmp/levee-bench-tls  OUTDIR=$RUNDIR/results-<ts>
# Ports: Levee 8443 (admin 9902), nginx 8444, HAProxy 8445, backend 9001-9003.
set -u -o pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$BENCH" rev-parse --show-toplevel 2>/dev/null) || REPO=$(dirname "$BENCH")
REF=${REF:-$REPO/../shared/bench-ref}
[ -d "$REF" ] || [ ! -d /work/shared/bench-ref ] || REF=/work/shared/bench-ref   # from a worktree under /work/wt
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CERTS=${CERTS:-"ecdsa rsa"}
VERSIONS=${VERSIONS:-"1.3 1.2"}
TESTS=${TESTS:-"full resumed https fixed"}
TARGETS=${TARGETS:-"levee nginx haproxy"}
SUBJECT=${SUBJECT:-levee}
WORKERS=${WORKERS:-1}
HS_CLIENTS=${HS_CLIENTS:-4}
HS_WWW=${HS_WWW:-0}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
RATE=${RATE:-10000}
RATE_CONNS=${RATE_CONNS:-64}
PIN=${PIN:-}
IDLE_MAX=${IDLE_MAX:-10}
IDLE_WAIT=${IDLE_WAIT:-60}
OTHER_MAX=${OTHER_MAX:-20}
RETRIES=${RETRIES:-2}
RUNDIR=${RUNDIR:-/tmp/levee-bench-tls}
OUTDIR=${OUTDIR:-$RUNDIR/results-$(date +%Y%m%d-%H%M%S)}
LEVEE_BIN=${LEVEE_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/levee}
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
MAINPID=$BASHPID
declare -A PORT=([levee]=8443 [nginx]=8444 [haproxy]=8445)
LEVEE_ADMIN=127.0.0.1:9902

# shellcheck source=bench/lib/peers.sh
. "$BENCH/lib/peers.sh"

[ -f "$REF/backend.conf" ] || die "bench-ref not found at $REF (set REF=...)"
REF=$(cd "$REF" && pwd)
for t in $TARGETS; do case $t in levee|nginx|haproxy) ;; *) die "unknown target '$t'";; esac; done
for c in $CERTS; do case $c in ecdsa|rsa) ;; *) die "unknown certificate type '$c' (ecdsa, rsa)";; esac; done
for v in $VERSIONS; do case $v in 1.2|1.3) ;; *) die "unknown TLS version '$v' (1.2, 1.3)";; esac; done
for x in $TESTS; do case $x in full|resumed|https|fixed) ;; *) die "unknown test '$x'";; esac; done
for v in ROUNDS DURATION WORKERS HS_CLIENTS CONNS THREADS RATE RATE_CONNS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
need=(openssl nginx curl ss jq)
has haproxy && need+=(haproxy)
want https && need+=(wrk)
want fixed && need+=(oha)
for c in "${need[@]}"; do command -v "$c" >/dev/null || die "$c not found (apt-get install -y $c)"; done
has levee && { [ -x "$LEVEE_BIN" ] || die "no Levee binary at $LEVEE_BIN (cargo build --release, or LEVEE_BIN=...)"; }
prepare_dirs

# ---------------------------------------------------------------- certificates and configs
CERTDIR="$OUTDIR/certs"
mkdir -p "$CERTDIR"
gen_cert() {    # TYPE -> $CERTDIR/TYPE.{pem,key,combined.pem}
    local t=$1 newkey
    case $t in ecdsa) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256);; rsa) newkey=(-newkey rsa:2048);; esac
    openssl req -x509 "${newkey[@]}" -nodes -keyout "$CERTDIR/$t.key" -out "$CERTDIR/$t.pem" -days 30 \
        -subj /CN=bench.test -addext subjectAltName=DNS:bench.test 2>"$CERTDIR/$t.log" \
        || die "openssl req failed for $t (see $CERTDIR/$t.log)"
    cat "$CERTDIR/$t.pem" "$CERTDIR/$t.key" >"$CERTDIR/$t.combined.pem"
}
write_configs() {   # TYPE : the three proxies' configs for this certificate
    local t=$1 cert="$CERTDIR/$1.pem" key="$CERTDIR/$1.key"
    # Levee: bench/levee.toml with a TLS listener on 8443.
    sed -E -e "s/^([[:space:]]*workers[[:space:]]*=[[:space:]]*)[0-9]+/\1$WORKERS/" \
        -e "s/127\.0\.0\.1:9901/$LEVEE_ADMIN/" -e 's/127\.0\.0\.1:8090/127.0.0.1:8443/' "$BENCH/levee.toml" |
        awk -v cert="$cert" -v key="$key" '
            { print }
            /^address = "127\.0\.0\.1:8443"/ {
                print "[listeners.tls]"
                printf "certificates = [{ cert = \"%s\", key = \"%s\" }]\n", cert, key }' >"$OUTDIR/levee-$t.toml"
    grep -q '^\[listeners.tls\]' "$OUTDIR/levee-$t.toml" || die "could not add [listeners.tls] to bench/levee.toml"
    # nginx: bench-ref's proxy config, the listener made TLS (1.2 and 1.3, tickets and a session cache).
    sed -e "s#listen 127.0.0.1:8081 backlog=4096;#listen 127.0.0.1:8444 ssl backlog=4096;\n        ssl_certificate $cert;\n        ssl_certificate_key $key;\n        ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_session_cache shared:SSL:10m;\n        ssl_session_tickets on;#" \
        -e 's/pid  *nginx-proxy.pid;/pid nginx-tls.pid;/' "$REF/nginx-proxy.conf" >"$OUTDIR/nginx-tls-$t.conf"
    grep -q 'listen 127.0.0.1:8444 ssl' "$OUTDIR/nginx-tls-$t.conf" || die "could not make bench-ref/nginx-proxy.conf a TLS listener"
    # HAProxy: bench-ref's nbthread 1 config, the bind made TLS (tickets and cache are on by default).
    sed -e "s#bind 127.0.0.1:8082#bind 127.0.0.1:8445 ssl crt $CERTDIR/$t.combined.pem ssl-min-ver TLSv1.2#" \
        "$REF/haproxy-nt1.cfg" >"$OUTDIR/haproxy-tls-$t.cfg"
    grep -q 'bind 127.0.0.1:8445 ssl' "$OUTDIR/haproxy-tls-$t.cfg" || die "could not make bench-ref/haproxy-nt1.cfg a TLS bind"
}
start_proxies() {   # TYPE
    local t=$1
    has levee && start levee "$CPU_PROXY" "$LEVEE_BIN" run --config "$OUTDIR/levee-$t.toml"
    has nginx && start nginx "$CPU_PROXY" nginx -p "$RUNDIR/" -e "$RUNDIR/nginx-tls-error.log" -c "$OUTDIR/nginx-tls-$t.conf"
    has haproxy && start haproxy "$CPU_PROXY" haproxy -db -f "$OUTDIR/haproxy-tls-$t.cfg"
    for x in $TARGETS; do wait_url "$x" "https://127.0.0.1:${PORT[$x]}/"; done
}

# ---------------------------------------------------------------- one measurement
RES="$OUTDIR/results.tsv"
printf 'cert\ttest\tversion\ttarget\tround\tattempt\trate\tp50_us\tp99_us\tproxy_cpu\tper_core_s\treuse_pct\terrors\tloadgen_cpu\tother_cpu\tprerun_busy\tclean\n' >"$RES"
# run TYPE TEST VERSION TARGET ROUND ATTEMPT ; returns 1 if disturbed (round 0 = warm-up, not recorded)
run() {
    local c=$1 x=$2 v=$3 t=$4 r=$5 a=$6 port=${PORT[$4]} dir="$OUTDIR/raw" bg=0 out i
    local pt0 pt1 bt0 bt1 s0 s1 ct0 ct1 w0 w1 rc=0 rate=0 p50=- p99=- reuse=- err=0
    mkdir -p "$dir"; out="$dir/$c-$x-$v-$t-r$r-a$a"
    [ "$r" != 0 ] && bg=$(wait_idle)
    local secs=$DURATION; [ "$r" = 0 ] && secs=1
    pt0=$(proc_ticks "${PID_OF[$t]}"); bt0=$(proc_ticks "${PID_OF[backend]}"); s0=$(sys_ticks); ct0=$(child_ticks); w0=$(date +%s%N)
    case $x in
        full|resumed)
            local mode=-new www=(); [ "$x" = resumed ] && mode=-reuse
            { [ "$x" = resumed ] || [ "$HS_WWW" = 1 ]; } && www=(-www /)
            LGPIDS=""
            for i in $(seq 1 "$HS_CLIENTS"); do
                timeout $((secs + 30)) $(pin "$CPU_LG") openssl s_time -connect "127.0.0.1:$port" $mode \
                    "-tls${v/./_}" -time "$secs" "${www[@]}" >"$out.$i" 2>&1 &
                LGPIDS="$LGPIDS $!"
            done
            for i in $LGPIDS; do wait "$i" || rc=$?; done; LGPIDS=""
            ;;
        https)
            timeout $((secs + 30)) $(pin "$CPU_LG") wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --latency \
                "https://127.0.0.1:$port/" >"$out" 2>&1 &
            LGPIDS=$!; wait "$LGPIDS" || rc=$?; LGPIDS=""
            ;;
        fixed)
            timeout $((secs + 30)) $(pin "$CPU_LG") oha -z "${secs}s" -q "$RATE" -c "$RATE_CONNS" --latency-correction \
                --insecure --no-tui --output-format json "https://127.0.0.1:$port/" >"$out" 2>"$out.err" &
            LGPIDS=$!; wait "$LGPIDS" || rc=$?; LGPIDS=""
            ;;
    esac
    w1=$(date +%s%N); ct1=$(child_ticks); s1=$(sys_ticks); pt1=$(proc_ticks "${PID_OF[$t]}"); bt1=$(proc_ticks "${PID_OF[backend]}")
    [ "$r" = 0 ] && return 0
    case $x in
        full|resumed)
            # s_time: "N connections in S real seconds"; progress marks: '*' new session, 'r' reused.
            # Our own wall clock is the denominator (all clients ran the whole time).
            read -r rate reuse err < <(cat "$out".* | awk -v w0="$w0" -v w1="$w1" '
                /connections in [0-9.]+ real seconds/ { n += $1 }
                /ERROR|Unable to get connection/ { e++ }
                !/connections|Collecting|starting|timing|ERROR/ { s = $0; r += gsub(/r/, "", s); s = $0; nw += gsub(/\*/, "", s) }
                END { w = (w1 - w0) / 1e9; printf "%.1f %s %d\n", (w > 0 ? n / w : 0),
                      (r + nw > 0 ? sprintf("%.1f", 100 * r / (r + nw)) : "-"), e }')
            ;;
        https)
            # wrk: "Requests/sec: N" and the --latency distribution ("50%" / "99%" lines, with units).
            read -r rate p50 p99 err < <(awk '
                function us(s) { if (s ~ /us$/) return s + 0; if (s ~ /ms$/) return s * 1000; if (s ~ /m$/) return s * 60e6; if (s ~ /s$/) return s * 1e6; return s }
                /Requests\/sec:/ { rps = $2 }
                $1 == "50.000%" || $1 == "50%" { p50 = us($2) }
                $1 == "99.000%" || $1 == "99%" { p99 = us($2) }
                /Socket errors|Non-2xx/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) e += $i + 0 }
                END { printf "%.1f %.0f %.0f %d\n", rps, p50, p99, e }' "$out")
            ;;
        fixed)
            # rate: answered requests / run time (oha's requestsPerSec also counts the requests
            # in flight when the run ends, "aborted due to deadline").
            read -r rate p50 p99 err < <(jq -r '[([.statusCodeDistribution[]] | add // 0) / .summary.total, .latencyPercentiles.p50, .latencyPercentiles.p99,
                    (([.statusCodeDistribution | to_entries[] | select(.key != "200") | .value] | add // 0)
                     + ([.errorDistribution | to_entries[] | select(.key | test("deadline") | not) | .value] | add // 0))]
                  | map(. // 0) | "\(.[0]) \(.[1]*1e6) \(.[2]*1e6) \(.[3])"' "$out" 2>/dev/null) \
                || { rate=0; err=?; rc=1; }
            ;;
    esac
    local pcpu per lcpu ocpu clean=1
    read -r pcpu per lcpu ocpu < <(awk -v p0="$pt0" -v p1="$pt1" -v b0="$bt0" -v b1="$bt1" -v c0="$ct0" -v c1="$ct1" -v s="$s0 $s1" \
        -v hz="$HZ" -v n="$NCPU" -v w0="$w0" -v w1="$w1" -v rate="$rate" 'BEGIN{
            split(s, a, " "); di = a[4] - a[2]; w = (w1 - w0) / 1e9; if (w <= 0) w = 1;
            p = (p1 - p0) / hz / w * 100; l = (c1 - c0) / hz / w * 100; o = n * 100 - di / hz / w * 100 - p - l - (b1 - b0) / hz / w * 100;
            printf "%.0f %s %.0f %.0f\n", p, (p > 0 ? sprintf("%.0f", rate / (p / 100)) : "-"), l, o }')
    [ "$ocpu" -gt "$OTHER_MAX" ] && clean=0
    [ "$bg" -gt "$IDLE_MAX" ] && clean=0
    awk -v r="$rate" 'BEGIN { exit !(r + 0 > 0) }' || { clean=0; log "WARN: $x $t round $r: nothing completed (see $out*)"; }
    [ "$rc" -ne 0 ] && { clean=0; log "WARN: $x $t round $r: load generator exit $rc (see $out*)"; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$x" "$v" "$t" "$r" "$a" "$rate" \
        "$p50" "$p99" "$pcpu" "$per" "$reuse" "$err" "$lcpu" "$ocpu" "$bg" "$clean" >>"$RES"
    log "$c $x TLS$v $t r$r a$a: rate=$rate/s p99=${p99}us proxy=${pcpu}% per-core-s=$per reuse=$reuse% err=$err clean=$clean"
    [ $clean = 1 ]
}

# ---------------------------------------------------------------- main
for p in 9001 9002 9003 9902; do port_free $p || die "port $p busy"; done
for t in $TARGETS; do port_free "${PORT[$t]}" || die "port ${PORT[$t]} busy"; done
log "output: $OUTDIR   targets: $TARGETS   certs: $CERTS   tests: $TESTS   versions: $VERSIONS"
start backend "$CPU_BACKEND" nginx -p "$RUNDIR/" -e "$RUNDIR/backend-error.log" -c "$REF/backend.conf"
for p in 9001 9002 9003; do wait_url backend "http://127.0.0.1:$p/"; done

cases() {   # the (test, version) pairs to run
    local x v
    for x in $TESTS; do
        case $x in full|resumed) for v in $VERSIONS; do echo "$x $v"; done ;; *) echo "$x 1.3" ;; esac
    done
}
for c in $CERTS; do
    gen_cert "$c"; write_configs "$c"; start_proxies "$c"
    while read -r x v; do for t in $TARGETS; do run "$c" "$x" "$v" "$t" 0 1; done; done < <(cases)   # warm-up, 1 s
    for r in $(seq 1 "$ROUNDS"); do
        while read -r x v; do
            for t in $TARGETS; do
                for a in $(seq 1 $((RETRIES + 1))); do
                    run "$c" "$x" "$v" "$t" "$r" "$a" && break
                    [ "$a" -le "$RETRIES" ] && log "run disturbed; retrying ($a/$RETRIES)"
                done
            done
        done < <(cases)
    done
    for t in $TARGETS; do stop_one "$t"; done
done

# ---------------------------------------------------------------- summary
col() {     # CERT TEST VERSION TARGET COLUMN : values of clean runs (all runs if none is clean)
    awk -F'\t' -v c="$1" -v x="$2" -v v="$3" -v t="$4" -v k="$5" '
        NR > 1 && $1==c && $2==x && $3==v && $4==t && $k ~ /^-?[0-9.]+$/ { n++; val[n]=$k; ok[n]=$17; if ($17==1) nc++ }
        END { for (i=1; i<=n; i++) if (nc==0 || ok[i]==1) print val[i] }' "$RES"
}
SUM="$OUTDIR/summary.txt"
{
    echo
    echo "== TLS benchmark: medians of $ROUNDS interleaved rounds x ${DURATION}s; Levee workers=$WORKERS, nginx 1 worker, HAProxy nbthread 1 =="
    echo "   full/resumed: $HS_CLIENTS x openssl s_time (rate = handshakes/s); https: wrk -t$THREADS -c$CONNS; fixed: oha -q $RATE -c $RATE_CONNS"
    printf '%-5s %-7s %-4s %-8s %10s %9s %9s %6s %11s %7s %6s %6s\n' cert test tls target "rate/s" "p50_us" "p99_us" "cpu%" "per_core_s" "reuse%" errs clean
    MED="$OUTDIR/medians.tsv"; : >"$MED"
    for c in $CERTS; do
        while read -r x v; do
            for t in $TARGETS; do
                rate=$(col "$c" "$x" "$v" "$t" 7 | median); p50=$(col "$c" "$x" "$v" "$t" 8 | median)
                p99=$(col "$c" "$x" "$v" "$t" 9 | median); pc=$(col "$c" "$x" "$v" "$t" 10 | median)
                per=$(col "$c" "$x" "$v" "$t" 11 | median); ru=$(col "$c" "$x" "$v" "$t" 12 | median)
                er=$(col "$c" "$x" "$v" "$t" 13 | awk '{s+=$1} END{print s+0}')
                cl=$(awk -F'\t' -v c="$c" -v x="$x" -v v="$v" -v t="$t" 'NR>1 && $1==c && $2==x && $3==v && $4==t {a++; if ($17==1) k++} END{printf "%d/%d", k, a}' "$RES")
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$x" "$v" "$t" "$rate" "$p99" "$per" >>"$MED"
                awk -v c="$c" -v x="$x" -v v="$v" -v t="$t" -v a="$rate" -v b="$p50" -v d="$p99" -v e="$pc" -v f="$per" \
                    -v g="$ru" -v h="$er" -v k="$cl" 'function n(s) { return (s ~ /^-?[0-9.]+$/) ? sprintf("%.0f", s) : s }
                    BEGIN { printf "%-5s %-7s %-4s %-8s %10s %9s %9s %6s %11s %7s %6s %6s\n", c, x, v, t, n(a), n(b), n(d), n(e), n(f), g, h, k }'
            done
        done < <(cases)
    done
    echo "rate/s: handshakes/s (full, resumed) or requests/s (https, fixed; fixed: the achieved rate, below $RATE = could not keep up)"
    echo "cpu%: the proxy's CPU, % of one core; per_core_s = rate / proxy core-seconds (the fair comparison)"
    echo "reuse%: connections s_time reports as resumed ('r' vs '*'); a resumed row below ~99 % did not resume"
    echo "clean: undisturbed runs / all (0/N: other activity on the machine, do not trust the row)"
    if has "$SUBJECT"; then
        echo
        echo "ratio $SUBJECT / X               rate  per_core_s   p99 (fixed)"
        for c in $CERTS; do
            while read -r x v; do
                for o in $TARGETS; do
                    [ "$o" = "$SUBJECT" ] && continue
                    awk -F'\t' -v c="$c" -v x="$x" -v v="$v" -v s="$SUBJECT" -v o="$o" '
                        $1==c && $2==x && $3==v { r[$4]=$5; p[$4]=$6; e[$4]=$7 }
                        function q(a, b) { return (a+0 > 0 && b+0 > 0) ? sprintf("%.2f", a/b) : "-" }
                        END { printf "  %-5s %-7s %-4s / %-8s %6s %10s %10s\n", c, x, v, o, q(r[s], r[o]), q(e[s], e[o]),
                                     (x == "fixed" ? q(p[s], p[o]) : "") }' "$MED"
                done
            done < <(cases)
        done
        echo "  better if                     >1          >1          <1"
        echo "  targets (issue 11): full and resumed handshakes/s >= 1.5x both; https per_core_s >= 1.1x both"
    fi
    echo "raw outputs: $OUTDIR (results.tsv: every run)"
} | tee "$SUM"
