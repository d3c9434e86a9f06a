#!/usr/bin/env bash
# HTTP/2 and gRPC: Levee vs nginx vs HAProxy on 127.0.0.1 -- a benchmark, not a test.
# See bench/README.md ("HTTP/2 and gRPC").
#
# Levee with WORKERS threads (default 1), nginx with 1 worker, HAProxy with nbthread 1, each
# serving HTTP/2 to clients.  In interleaved rounds (A B C A B C ...):
#   h2c        h2load -c CONNS -m STREAMS, HTTP/2 with prior knowledge, proxied to the HTTP/1.1
#              bench-ref backend (<repo>/../shared/bench-ref/backend.conf, 127.0.0.1:9001-9003)
#   tls        the same over TLS (ALPN h2; an ECDSA P-256 certificate made here with openssl)
#   grpc       gRPC unary calls (h2load: POST of a 5-byte gRPC message, content-type
#              application/grpc, te: trailers) proxied over h2c to a gRPC-shaped backend: one nginx
#              (1 worker) on 127.0.0.1:9011-9013 answering 200, application/grpc, an empty message
#              and the trailer grpc-status: 0.  Levee: cluster protocol = "h2c"; nginx: grpc_pass;
#              HAProxy: server ... proto h2.
#   fixed_h2c  latency at a fixed offered rate: oha --http2 -q RATE -c RATE_CONNS -p RATE_STREAMS
#   fixed_tls  the same over TLS
# with the proxy's CPU during each run, hence requests per proxy core-second.  Then, unless
# IDLE_N=0, bench/idle_memory.sh with MODE=h2c (memory per idle HTTP/2 connection, IDLE_N of them).
#
# Knobs (environment):
#   ROUNDS=3 DURATION=10 TESTS="h2c tls grpc fixed_h2c fixed_tls" TARGETS="levee nginx haproxy"
#   SUBJECT=levee  WORKERS=1  CONNS=64 STREAMS=10 THREADS=1  RATE=20000 RATE_CONNS=64 RATE_STREAMS=10
#   IDLE_N=10000 (0: skip the idle-memory part)
#   PIN=LG:PROXY:BACKEND  IDLE_MAX=10 IDLE_WAIT=60 OTHER_MAX=20 RETRIES=2
#   LEVEE_BIN=<repo>/target/release/levee  REF=<repo>/../shared/bench-ref
#   RUNDIR=/tmp/levee-bench-h2  OUTDIR=$RUNDIR/results-<ts>
# Ports: Levee 8090 (h2c) 8443 (TLS) 8091 (gRPC) admin 9902; nginx 8081 8444 8181;
#        HAProxy 8082 8445 8182; backends 9001-9003 (HTTP/1.1), 9011-9013 (gRPC, h2c).
set -u -o pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$BENCH" rev-parse --show-toplevel 2>/dev/null) || REPO=$(dirname "$BENCH")
REF=${REF:-$REPO/../shared/bench-ref}
[ -d "$REF" ] || [ ! -d /work/shared/bench-ref ] || REF=/work/shared/bench-ref   # from a worktree under /work/wt
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
TESTS=${TESTS:-"h2c tls grpc fixed_h2c fixed_tls"}
TARGETS=${TARGETS:-"levee nginx haproxy"}
SUBJECT=${SUBJECT:-levee}
WORKERS=${WORKERS:-1}
CONNS=${CONNS:-64}
STREAMS=${STREAMS:-10}
THREADS=${THREADS:-1}
RATE=${RATE:-20000}
RATE_CONNS=${RATE_CONNS:-64}
RATE_STREAMS=${RATE_STREAMS:-10}
IDLE_N=${IDLE_N:-10000}
PIN=${PIN:-}
IDLE_MAX=${IDLE_MAX:-10}
IDLE_WAIT=${IDLE_WAIT:-60}
OTHER_MAX=${OTHER_MAX:-20}
RETRIES=${RETRIES:-2}
RUNDIR=${RUNDIR:-/tmp/levee-bench-h2}
OUTDIR=${OUTDIR:-$RUNDIR/results-$(date +%Y%m%d-%H%M%S)}
LEVEE_BIN=${LEVEE_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/levee}
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
MAINPID=$BASHPID
declare -A H2C=([levee]=8090 [nginx]=8081 [haproxy]=8082)
declare -A TLS=([levee]=8443 [nginx]=8444 [haproxy]=8445)
declare -A GRPC=([levee]=8091 [nginx]=8181 [haproxy]=8182)
LEVEE_ADMIN=127.0.0.1:9902

# shellcheck source=bench/lib/peers.sh
. "$BENCH/lib/peers.sh"

[ -f "$REF/backend.conf" ] || die "bench-ref not found at $REF (set REF=...)"
REF=$(cd "$REF" && pwd)
for t in $TARGETS; do case $t in levee|nginx|haproxy) ;; *) die "unknown target '$t'";; esac; done
for x in $TESTS; do case $x in h2c|tls|grpc|fixed_h2c|fixed_tls) ;; *) die "unknown test '$x'";; esac; done
for v in ROUNDS DURATION WORKERS CONNS STREAMS THREADS RATE RATE_CONNS RATE_STREAMS IDLE_N; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
need=(openssl nginx curl ss jq h2load)
has haproxy && need+=(haproxy)
{ want fixed_h2c || want fixed_tls; } && need+=(oha)
for c in "${need[@]}"; do
    command -v "$c" >/dev/null || die "$c not found (h2load: apt-get install -y nghttp2-client; oha: cargo install oha)"
done
has levee && { [ -x "$LEVEE_BIN" ] || die "no Levee binary at $LEVEE_BIN (cargo build --release, or LEVEE_BIN=...)"; }
prepare_dirs

# ---------------------------------------------------------------- certificate, backends, configs
CERTDIR="$OUTDIR/certs"
mkdir -p "$CERTDIR" "$OUTDIR/www"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$CERTDIR/cert.key" \
    -out "$CERTDIR/cert.pem" -days 30 -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
    2>"$CERTDIR/openssl.log" || die "openssl req failed (see $CERTDIR/openssl.log)"
cat "$CERTDIR/cert.pem" "$CERTDIR/cert.key" >"$CERTDIR/cert.combined.pem"
CERT=$CERTDIR/cert.pem KEY=$CERTDIR/cert.key
# A gRPC message: no compression, length 0 (an empty protobuf message), both ways.
printf '\0\0\0\0\0' >"$OUTDIR/grpc-request.bin"
printf '\0\0\0\0\0' >"$OUTDIR/www/msg"
GRPC_PATH=/bench.Bench/Unary

# The gRPC-shaped backend: nginx reads the request body, answers the POST 405; error_page turns
# it into an internal GET of /msg with status 200, which carries the grpc-status trailer.
cat >"$OUTDIR/grpc-backend.conf" <<NGX
worker_processes  1;
daemon            off;
master_process    on;
pid               grpc-backend.pid;
error_log         grpc-backend-error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; use epoll; }
http {
    access_log off;
    server_tokens off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    http2_max_concurrent_streams 1000;
    root $OUTDIR/www;
NGX
for i in 1 2 3; do
    cat >>"$OUTDIR/grpc-backend.conf" <<NGX
    server {
        listen 127.0.0.1:901$i http2 backlog=4096;
        # mirror_request_body reads the whole request first: answering before the body was
        # read makes nginx reset the stream after the response, which grpc_pass counts as a
        # failure of the server ("upstream sent frame for unknown stream").
        location / { mirror /read-body; mirror_request_body on; error_page 405 =200 /msg; return 405; }
        location = /read-body { internal; return 204; }
        location = /msg {
            internal;
            default_type application/grpc;
            add_header X-Backend g$i;
            add_trailer grpc-status 0 always;
            add_trailer grpc-message "" always;
        }
    }
NGX
done
echo "}" >>"$OUTDIR/grpc-backend.conf"

cat >"$OUTDIR/levee.toml" <<TOML
# bench/h2.sh: HTTP/2 from clients (h2c, TLS with ALPN h2, gRPC), the backends of bench/levee.toml.
[server]
workers = $WORKERS

[admin]
address = "$LEVEE_ADMIN"

[access_log]
enabled = false

[[listeners]]
name = "h2c"
address = "127.0.0.1:${H2C[levee]}"
http2 = { enabled = true }

[[listeners]]
name = "tls"
address = "127.0.0.1:${TLS[levee]}"
http2 = { enabled = true }
[listeners.tls]
certificates = [{ cert = "$CERT", key = "$KEY" }]
alpn = ["h2", "http/1.1"]

[[listeners]]
name = "grpc"
address = "127.0.0.1:${GRPC[levee]}"
http2 = { enabled = true }

[[routes]]
name = "grpc"
listeners = ["grpc"]
cluster = "grpc"

[[routes]]
name = "all"
path_prefix = "/"
cluster = "backends"

[[clusters]]
name = "backends"
balance = "round_robin"
pool_max_idle = 256    # like nginx \`keepalive 256\`
endpoints = [{ address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002" }, { address = "127.0.0.1:9003" }]

[[clusters]]
name = "grpc"
balance = "round_robin"
protocol = "h2c"
endpoints = [{ address = "127.0.0.1:9011" }, { address = "127.0.0.1:9012" }, { address = "127.0.0.1:9013" }]
TOML

# nginx 1.22: \`http2\` on the listen line; grpc_pass with an upstream keepalive pool.
sed -e "s#listen 127.0.0.1:8081 backlog=4096;#listen 127.0.0.1:${H2C[nginx]} http2 backlog=4096;\n        listen 127.0.0.1:${TLS[nginx]} ssl http2 backlog=4096;\n        ssl_certificate $CERT;\n        ssl_certificate_key $KEY;\n        ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_session_cache shared:SSL:10m;#" \
    -e 's/pid  *nginx-proxy.pid;/pid nginx-h2.pid;/' \
    -e "\$ s#^}\$#    upstream grpc_backends {\n        server 127.0.0.1:9011;\n        server 127.0.0.1:9012;\n        server 127.0.0.1:9013;\n        keepalive 256;\n        keepalive_requests 1000000;\n        keepalive_timeout 60s;\n    }\n    server {\n        listen 127.0.0.1:${GRPC[nginx]} http2 backlog=4096;\n        location / { grpc_pass grpc://grpc_backends; }\n    }\n}#" \
    "$REF/nginx-proxy.conf" >"$OUTDIR/nginx-h2.conf"
grep -q "grpc_pass" "$OUTDIR/nginx-h2.conf" && grep -q "ssl http2" "$OUTDIR/nginx-h2.conf" \
    || die "could not derive the nginx HTTP/2 config from bench-ref/nginx-proxy.conf"

# HAProxy: bench-ref's nbthread 1 config; h2c and TLS+ALPN h2 frontends, a gRPC frontend and
# backend speaking h2 to the servers.
{
    sed -e "s#bind 127.0.0.1:8082#bind 127.0.0.1:${H2C[haproxy]} proto h2\n    bind 127.0.0.1:${TLS[haproxy]} ssl crt $CERTDIR/cert.combined.pem alpn h2,http/1.1#" \
        "$REF/haproxy-nt1.cfg"
    cat <<CFG

frontend grpc
    bind 127.0.0.1:${GRPC[haproxy]} proto h2
    default_backend grpc

backend grpc
    balance    roundrobin
    http-reuse always
    server g1 127.0.0.1:9011 proto h2
    server g2 127.0.0.1:9012 proto h2
    server g3 127.0.0.1:9013 proto h2
CFG
} >"$OUTDIR/haproxy-h2.cfg"
grep -q "proto h2" "$OUTDIR/haproxy-h2.cfg" || die "could not derive the HAProxy HTTP/2 config from bench-ref/haproxy-nt1.cfg"

for p in 9001 9002 9003 9011 9012 9013 9902; do port_free $p || die "port $p busy"; done
for t in $TARGETS; do for p in "${H2C[$t]}" "${TLS[$t]}" "${GRPC[$t]}"; do port_free "$p" || die "port $p busy"; done; done
log "output: $OUTDIR   targets: $TARGETS   tests: $TESTS"
start backend "$CPU_BACKEND" nginx -p "$RUNDIR/" -e "$RUNDIR/backend-error.log" -c "$REF/backend.conf"
start grpc-backend "$CPU_BACKEND" nginx -p "$RUNDIR/" -e "$RUNDIR/grpc-backend-error.log" -c "$OUTDIR/grpc-backend.conf"
for p in 9001 9002 9003; do wait_url backend "http://127.0.0.1:$p/"; done
has levee && start levee "$CPU_PROXY" "$LEVEE_BIN" run --config "$OUTDIR/levee.toml"
has nginx && start nginx "$CPU_PROXY" nginx -p "$RUNDIR/" -e "$RUNDIR/nginx-h2-error.log" -c "$OUTDIR/nginx-h2.conf"
has haproxy && start haproxy "$CPU_PROXY" haproxy -db -f "$OUTDIR/haproxy-h2.cfg"

# Every target answers each protocol before anything is measured: h2c and TLS with a 200 over
# HTTP/2, gRPC with a 200 and the trailer grpc-status: 0.
check() {   # NAME
    local t=$1 i v
    for i in $(seq 1 100); do
        kill -0 "${PID_OF[$t]}" 2>/dev/null || die "$t died; see $RUNDIR/$t.stdout"
        v=$(curl -s -o /dev/null -w '%{http_code} %{http_version}' --max-time 1 --http2-prior-knowledge "http://127.0.0.1:${H2C[$t]}/")
        [ "$v" = "200 2" ] && break
        sleep 0.1
    done
    [ "$v" = "200 2" ] || die "$t: h2c GET answered '$v' (want '200 2'); see $RUNDIR/$t.stdout"
    v=$(curl -sk -o /dev/null -w '%{http_code} %{http_version}' --max-time 2 --http2 "https://127.0.0.1:${TLS[$t]}/")
    [ "$v" = "200 2" ] || die "$t: TLS ALPN h2 GET answered '$v' (want '200 2')"
    v=$(nghttp -v -d "$OUTDIR/grpc-request.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
            "http://127.0.0.1:${GRPC[$t]}$GRPC_PATH" 2>&1 | tr -d '\0' | grep -a -c -E 'recv \(stream_id=[0-9]+\) (:status: 200|grpc-status: 0)$')
    [ "$v" = 2 ] || die "$t: the gRPC call did not end with :status 200 and grpc-status 0 (nghttp -v http://127.0.0.1:${GRPC[$t]}$GRPC_PATH)"
    log "$t: h2c, TLS (ALPN h2) and gRPC answer"
}
for t in $TARGETS; do check "$t"; done

# ---------------------------------------------------------------- one measurement
RES="$OUTDIR/results.tsv"
printf 'test\ttarget\tround\tattempt\trate\tp50_us\tp99_us\tproxy_cpu\tper_core_s\terrors\tloadgen_cpu\tother_cpu\tprerun_busy\tclean\n' >"$RES"
# run TEST TARGET ROUND ATTEMPT ; returns 1 if disturbed (round 0 = warm-up, not recorded)
run() {
    local x=$1 t=$2 r=$3 a=$4 dir="$OUTDIR/raw" bg=0 out url
    local pt0 pt1 bt0 bt1 s0 s1 ct0 ct1 w0 w1 rc=0 rate=0 p50=- p99=- err=0
    local -a extra=()
    mkdir -p "$dir"; out="$dir/$x-$t-r$r-a$a"
    case $x in
        h2c|fixed_h2c) url="http://127.0.0.1:${H2C[$t]}/" ;;
        tls|fixed_tls) url="https://127.0.0.1:${TLS[$t]}/" ;;
        grpc) url="http://127.0.0.1:${GRPC[$t]}$GRPC_PATH"
              extra=(-d "$OUTDIR/grpc-request.bin" -H 'content-type: application/grpc' -H 'te: trailers') ;;
    esac
    [ "$r" != 0 ] && bg=$(wait_idle)
    local secs=$DURATION; [ "$r" = 0 ] && secs=1
    pt0=$(proc_ticks "${PID_OF[$t]}"); bt0=$(proc_ticks "${PID_OF[backend]}" "${PID_OF[grpc-backend]}")
    s0=$(sys_ticks); ct0=$(child_ticks); w0=$(date +%s%N)
    case $x in
        h2c|tls|grpc)
            timeout $((secs + 30)) $(pin "$CPU_LG") h2load -t "$THREADS" -c "$CONNS" -m "$STREAMS" -D "$secs" \
                "${extra[@]}" "$url" >"$out" 2>&1 &
            ;;
        fixed_h2c|fixed_tls)
            timeout $((secs + 30)) $(pin "$CPU_LG") oha --http2 -z "${secs}s" -q "$RATE" -c "$RATE_CONNS" -p "$RATE_STREAMS" \
                --latency-correction --insecure --no-tui --output-format json "$url" >"$out" 2>"$out.err" &
            ;;
    esac
    LGPIDS=$!; wait "$LGPIDS" || rc=$?; LGPIDS=""
    w1=$(date +%s%N); ct1=$(child_ticks); s1=$(sys_ticks); pt1=$(proc_ticks "${PID_OF[$t]}")
    bt1=$(proc_ticks "${PID_OF[backend]}" "${PID_OF[grpc-backend]}")
    [ "$r" = 0 ] && return 0
    case $x in
        h2c|tls|grpc)
            # "finished in 10.00s, 12345.67 req/s, ..."; "requests: ... N failed, N errored, N timeout";
            # "status codes: N 2xx, N 3xx, N 4xx, N 5xx".  h2load prints no percentiles.
            read -r rate err < <(awk '
                /^finished in/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^req\/s/) rps = $i }
                /^requests:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^(failed|errored|timeout)/) e += $i }
                /^status codes:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^[345]xx/) e += $i }
                END { printf "%.1f %d\n", rps, e }' "$out")
            ;;
        fixed_h2c|fixed_tls)
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
    read -r pcpu per lcpu ocpu < <(awk -v p0="$pt0" -v p1="$pt1" -v b0="$bt0" -v b1="$bt1" -v c0="$ct0" -v c1="$ct1" \
        -v s="$s0 $s1" -v hz="$HZ" -v n="$NCPU" -v w0="$w0" -v w1="$w1" -v rate="$rate" 'BEGIN{
            split(s, a, " "); di = a[4] - a[2]; w = (w1 - w0) / 1e9; if (w <= 0) w = 1;
            p = (p1 - p0) / hz / w * 100; l = (c1 - c0) / hz / w * 100;
            o = n * 100 - di / hz / w * 100 - p - l - (b1 - b0) / hz / w * 100;
            printf "%.0f %s %.0f %.0f\n", p, (p > 0 ? sprintf("%.0f", rate / (p / 100)) : "-"), l, o }')
    [ "$ocpu" -gt "$OTHER_MAX" ] && clean=0
    [ "$bg" -gt "$IDLE_MAX" ] && clean=0
    awk -v r="$rate" 'BEGIN { exit !(r + 0 > 0) }' || { clean=0; log "WARN: $x $t round $r: nothing completed (see $out*)"; }
    [ "$rc" -ne 0 ] && { clean=0; log "WARN: $x $t round $r: load generator exit $rc (see $out*)"; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$x" "$t" "$r" "$a" "$rate" "$p50" "$p99" \
        "$pcpu" "$per" "$err" "$lcpu" "$ocpu" "$bg" "$clean" >>"$RES"
    log "$x $t r$r a$a: rate=$rate/s p99=${p99}us proxy=${pcpu}% per-core-s=$per err=$err clean=$clean"
    [ $clean = 1 ]
}

# ---------------------------------------------------------------- main
for x in $TESTS; do for t in $TARGETS; do run "$x" "$t" 0 1; done; done    # warm-up, 1 s each
for r in $(seq 1 "$ROUNDS"); do
    for x in $TESTS; do
        for t in $TARGETS; do
            for a in $(seq 1 $((RETRIES + 1))); do
                run "$x" "$t" "$r" "$a" && break
                [ "$a" -le "$RETRIES" ] && log "run disturbed; retrying ($a/$RETRIES)"
            done
        done
    done
done
has levee && curl -s --max-time 2 "http://$LEVEE_ADMIN/metrics" -o "$OUTDIR/levee-metrics.txt"

# ---------------------------------------------------------------- summary
col() {     # TEST TARGET COLUMN : values of clean runs (all runs if none is clean)
    awk -F'\t' -v x="$1" -v t="$2" -v k="$3" '
        NR > 1 && $1==x && $2==t && $k ~ /^-?[0-9.]+$/ { n++; val[n]=$k; ok[n]=$14; if ($14==1) nc++ }
        END { for (i=1; i<=n; i++) if (nc==0 || ok[i]==1) print val[i] }' "$RES"
}
SUM="$OUTDIR/summary.txt"
{
    echo
    echo "== HTTP/2 benchmark: medians of $ROUNDS interleaved rounds x ${DURATION}s; Levee workers=$WORKERS, nginx 1 worker, HAProxy nbthread 1 =="
    echo "   h2c/tls/grpc: h2load -t$THREADS -c$CONNS -m$STREAMS; fixed_*: oha --http2 -q $RATE -c $RATE_CONNS -p $RATE_STREAMS"
    printf '%-9s %-8s %10s %9s %9s %6s %11s %6s %6s\n' test target "req/s" p50_us p99_us "cpu%" per_core_s errs clean
    MED="$OUTDIR/medians.tsv"; : >"$MED"
    for x in $TESTS; do
        for t in $TARGETS; do
            rate=$(col "$x" "$t" 5 | median); p50=$(col "$x" "$t" 6 | median); p99=$(col "$x" "$t" 7 | median)
            pc=$(col "$x" "$t" 8 | median); per=$(col "$x" "$t" 9 | median)
            er=$(col "$x" "$t" 10 | awk '{s+=$1} END{print s+0}')
            cl=$(awk -F'\t' -v x="$x" -v t="$t" 'NR>1 && $1==x && $2==t {a++; if ($14==1) k++} END{printf "%d/%d", k, a}' "$RES")
            printf '%s\t%s\t%s\t%s\t%s\n' "$x" "$t" "$rate" "$p99" "$per" >>"$MED"
            awk -v x="$x" -v t="$t" -v a="$rate" -v b="$p50" -v d="$p99" -v e="$pc" -v f="$per" -v h="$er" -v k="$cl" \
                'function n(s) { return (s ~ /^-?[0-9.]+$/) ? sprintf("%.0f", s) : s }
                 BEGIN { printf "%-9s %-8s %10s %9s %9s %6s %11s %6s %6s\n", x, t, n(a), n(b), n(d), n(e), n(f), h, k }'
        done
    done
    echo "req/s: h2load's rate (closed loop) or oha's achieved rate (fixed_*: below $RATE = could not keep up)"
    echo "cpu%: the proxy's CPU, % of one core; per_core_s = req/s per proxy core-second (the fair comparison)"
    echo "errs: failed/errored/timed-out or non-2xx requests; clean: undisturbed runs / all"
    if has "$SUBJECT"; then
        echo
        echo "ratio $SUBJECT / X           req/s  per_core_s  p99 (fixed)"
        for x in $TESTS; do
            for o in $TARGETS; do
                [ "$o" = "$SUBJECT" ] && continue
                awk -F'\t' -v x="$x" -v s="$SUBJECT" -v o="$o" '
                    $1==x { r[$2]=$3; p[$2]=$4; e[$2]=$5 }
                    function q(a, b) { return (a+0 > 0 && b+0 > 0) ? sprintf("%.2f", a/b) : "-" }
                    END { printf "  %-9s / %-8s %6s %10s %10s\n", x, o, q(r[s], r[o]), q(e[s], e[o]),
                                 (x ~ /^fixed/ ? q(p[s], p[o]) : "") }' "$MED"
            done
        done
        echo "  better if                 >1          >1          <1"
        echo "  targets (issue 12): h2c, tls and grpc per_core_s >= 1.25x both; fixed_* p99 <= both"
    fi
    echo "raw outputs: $OUTDIR (results.tsv: every run)"
} | tee "$SUM"

# ---------------------------------------------------------------- memory per idle HTTP/2 connection
if [ "$IDLE_N" -gt 0 ]; then
    log "stopping the proxies for the idle-memory part"
    stop "${STARTED[@]}"; STARTED=()
    echo | tee -a "$SUM"
    echo "== memory per idle HTTP/2 connection: N=$IDLE_N MODE=h2c bench/idle_memory.sh ==" | tee -a "$SUM"
    imt=""; for t in $TARGETS; do imt="$imt $t"; done
    N=$IDLE_N MODE=h2c TARGETS="${imt# }" LEVEE_BIN="$LEVEE_BIN" REF="$REF" OUT="$OUTDIR/idle-memory" \
        bash "$BENCH/idle_memory.sh" 2>&1 | tee -a "$SUM"
fi
