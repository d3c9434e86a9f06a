#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: deterministic,
# so it can be measured on a loaded machine where req/s cannot.  See bench/README.md,
# "Cost per request (callgrind)".
#
# Levee (1 worker, bench/levee.toml on its own ports) runs under
# `valgrind --tool=callgrind`; `oha -n N -c 16` drives N requests through it to an
# nginx backend like the reference one (returns "hello\n").  Done for N = LOW and
# N = HIGH; (Ir(HIGH) - Ir(LOW)) / (HIGH - LOW) is the cost of one request, start-up
# and shut-down cancelled out.  The backend is three nginx server blocks (one process),
# round robin, as in the reference benchmark.
#
# Also prints heap allocations per request (calls of mimalloc's allocation functions).
#
# MODE=tcp: the listener is a tcp listener (protocol = "tcp") over the same backends and
# oha opens a new connection for every request (--disable-keepalive): the cost of one
# short relayed TCP connection, accept → connect → relay → close.
#
# MODE=tls: the listener terminates TLS (an ECDSA P-256 certificate made with openssl; oha
# speaks TLS 1.3 over keep-alive, --insecure): the cost of one HTTPS request, the 16
# handshakes cancelled out like start-up.
#
# MODE=h2c: the listener serves HTTP/2 with prior knowledge (http2 = { enabled = true });
# `h2load -n N -c CONNS -m STREAMS` sends GETs over it, proxied to the same HTTP/1.1
# backends: the cost of one h2c stream.
# MODE=grpc: gRPC unary calls, as bench/h2.sh's grpc test makes them (h2load POSTs a 5-byte
# message, content-type application/grpc, te: trailers), over h2c to a cluster with
# protocol = "h2c" whose endpoints are a gRPC-shaped nginx (HTTP/2, answers 200,
# application/grpc, an empty message and the trailer grpc-status: 0); every call must be
# counted by Levee as grpc-status ok.  The cost of one call, both sides HTTP/2.
#
# Knobs (environment): LEVEE_BIN (default target/release/levee), LOW=2000 HIGH=12000,
#   HTTP1=levee|hyper (server.http1), PORT_BASE=18000 (listener PORT_BASE+90, admin
#   PORT_BASE+91, backends PORT_BASE+1..3), OUT=/tmp/levee-callgrind (callgrind.out.* kept
#   there for callgrind_annotate), ROUTE_EXTRA= lines added to the route (a feature's cost),
#   CONNS=16 STREAMS=10 (h2load's connections and streams per connection, MODE=h2c|grpc).
set -u -o pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
LEVEE_BIN=${LEVEE_BIN:-$REPO/target/release/levee}
LOW=${LOW:-2000}
HIGH=${HIGH:-12000}
HTTP1=${HTTP1:-levee}
MODE=${MODE:-http}
PORT_BASE=${PORT_BASE:-18000}
OUT=${OUT:-/tmp/levee-callgrind}
CONNS=${CONNS:-16}
STREAMS=${STREAMS:-10}
GRPC_PATH=/bench.Bench/Unary
# Extra lines in the route (a feature's cost per request, deterministic), e.g.
# ROUTE_EXTRA='slo = { target = 99.9, window_days = 30, latency = "300ms" }'
ROUTE_EXTRA=${ROUTE_EXTRA:-}
LISTEN=127.0.0.1:$((PORT_BASE + 90))
ADMIN=127.0.0.1:$((PORT_BASE + 91))
B1=127.0.0.1:$((PORT_BASE + 1))
B2=127.0.0.1:$((PORT_BASE + 2))
B3=127.0.0.1:$((PORT_BASE + 3))

die() { echo "ERROR: $*" >&2; exit 1; }
case $MODE in
    http|tcp|tls) LOAD=oha ;;
    h2c|grpc) LOAD=h2load ;;
    *) die "unknown MODE '$MODE' (http, tcp, tls, h2c, grpc)" ;;
esac
for tool in valgrind "$LOAD" nginx curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
[ -x "$LEVEE_BIN" ] || die "no Levee binary at $LEVEE_BIN (cargo build --release)"
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)

BACKEND_PID=""
LEVEE_PID=""
cleanup() {
    [ -n "$LEVEE_PID" ] && kill "$LEVEE_PID" 2>/dev/null
    [ -n "$BACKEND_PID" ] && kill "$BACKEND_PID" 2>/dev/null
    wait 2>/dev/null
}
trap cleanup EXIT

if [ "$MODE" = grpc ]; then
    # bench/h2.sh's gRPC-shaped backend: nginx reads the request body (mirror), answers the
    # POST 405, which error_page turns into an internal GET of /msg with status 200: an
    # empty gRPC message and the trailer grpc-status: 0.
    mkdir -p "$OUT/www" || exit 1
    printf '\0\0\0\0\0' >"$OUT/www/msg"
    printf '\0\0\0\0\0' >"$OUT/grpc-request.bin"
    {
        cat <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $OUT/backend.pid;
error_log $OUT/backend-error.log warn;
events { worker_connections 4096; use epoll; }
http {
    access_log off;
    server_tokens off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    http2_max_concurrent_streams 1000;
    root $OUT/www;
EOF
        for b in "$B1" "$B2" "$B3"; do
            cat <<EOF
    server {
        listen $b http2;
        location / { mirror /read-body; mirror_request_body on; error_page 405 =200 /msg; return 405; }
        location = /read-body { internal; return 204; }
        location = /msg {
            internal;
            default_type application/grpc;
            add_trailer grpc-status 0 always;
            add_trailer grpc-message "" always;
        }
    }
EOF
        done
        echo "}"
    } >"$OUT/backend.conf"
else
cat >"$OUT/backend.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $OUT/backend.pid;
error_log $OUT/backend-error.log warn;
events { worker_connections 4096; use epoll; }
http {
    access_log off;
    default_type text/plain;
    server_tokens off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    tcp_nodelay on;
    server { listen $B1; location / { add_header X-Backend b1; return 200 "hello\n"; } }
    server { listen $B2; location / { add_header X-Backend b2; return 200 "hello\n"; } }
    server { listen $B3; location / { add_header X-Backend b3; return 200 "hello\n"; } }
}
EOF
fi
nginx -p "$OUT" -c "$OUT/backend.conf" &
BACKEND_PID=$!

# bench/levee.toml with this script's ports.
if [ "$MODE" = tcp ]; then
    LISTENER_EXTRA='protocol = "tcp"
cluster = "backends"
max_connections = 8000'
    ROUTE=""
    KEEPALIVE=--disable-keepalive
else
    LISTENER_EXTRA=""
    case $MODE in
        h2c|grpc) LISTENER_EXTRA='http2 = { enabled = true }' ;;
        tls)
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -keyout "$OUT/bench.key" -out "$OUT/bench.pem" -days 30 -subj /CN=bench.test \
                >"$OUT/openssl.log" 2>&1 || die "openssl req failed (see $OUT/openssl.log)"
            LISTENER_EXTRA="tls = { certificates = [{ cert = \"$OUT/bench.pem\", key = \"$OUT/bench.key\" }] }" ;;
    esac
    ROUTE="[[routes]]
name = \"all\"
path_prefix = \"/\"
cluster = \"backends\"
$ROUTE_EXTRA"
    KEEPALIVE=""
fi
CLUSTER_EXTRA=""
[ "$MODE" = grpc ] && CLUSTER_EXTRA='protocol = "h2c"'

cat >"$OUT/levee.toml" <<EOF
[server]
workers = 1
http1 = "$HTTP1"

[admin]
address = "$ADMIN"

[access_log]
enabled = false

[[listeners]]
name = "bench"
address = "$LISTEN"
$LISTENER_EXTRA

$ROUTE

[[clusters]]
name = "backends"
balance = "round_robin"
pool_max_idle = 256
$CLUSTER_EXTRA

[[clusters.endpoints]]
address = "$B1"

[[clusters.endpoints]]
address = "$B2"

[[clusters.endpoints]]
address = "$B3"
EOF

wait_for() { # url [curl option]
    for _ in $(seq 1 600); do
        curl -fs -o /dev/null ${2:-} "$1" && return 0
        sleep 0.1
    done
    return 1
}

# Ir of one run of Levee under callgrind that served $1 requests.
measure() {
    local n=$1 file=$OUT/callgrind.out.$MODE.$HTTP1.$1
    rm -f "$file"
    valgrind --tool=callgrind --callgrind-out-file="$file" \
        "$LEVEE_BIN" run --config "$OUT/levee.toml" >"$OUT/levee.$n.log" 2>&1 &
    LEVEE_PID=$!
    wait_for "http://$ADMIN/healthz" || die "Levee did not start (see $OUT/levee.$n.log)"
    if [ "$MODE" = grpc ]; then
        # The gRPC backend answers a GET 405 (it is a POST's answer turned 200).
        for _ in $(seq 1 600); do
            curl -s -o /dev/null --http2-prior-knowledge "http://$B1/" && break
            sleep 0.1
        done
    else
        wait_for "http://$B1/" || die "backend did not start"
    fi
    local ok grpc_ok
    case $MODE in
        http|tcp|tls)
            local scheme=http insecure=""
            [ "$MODE" = tls ] && scheme=https insecure=--insecure
            ok=$(oha -n "$n" -c 16 $KEEPALIVE $insecure --no-tui --output-format json "$scheme://$LISTEN/" |
                python3 -c 'import json,sys; print(json.load(sys.stdin)["statusCodeDistribution"].get("200",0))') ;;
        h2c)
            ok=$(h2load -n "$n" -c "$CONNS" -m "$STREAMS" "http://$LISTEN/" |
                awk '/^status codes:/ {print $3}') ;;
        grpc)
            ok=$(h2load -n "$n" -c "$CONNS" -m "$STREAMS" -d "$OUT/grpc-request.bin" \
                    -H 'content-type: application/grpc' -H 'te: trailers' "http://$LISTEN$GRPC_PATH" |
                awk '/^status codes:/ {print $3}')
            # A 200 is not enough: a call succeeded when its trailers said grpc-status 0.
            grpc_ok=$(curl -fs "http://$ADMIN/metrics" |
                awk '/^levee_grpc_calls_total[{].*code="ok"/ {s += $NF} END {print s + 0}')
            [ "$grpc_ok" = "$n" ] || ok="$ok (grpc-status ok: $grpc_ok)" ;;
    esac
    kill -TERM "$LEVEE_PID"
    wait "$LEVEE_PID" 2>/dev/null
    LEVEE_PID=""
    [ "$ok" = "$n" ] || die "only $ok of $n answers were 200"
    # The +1 request: the readiness probe through the admin port, in both runs.
    awk '/^summary:|^totals:/ {print $2; exit}' "$file"
}

# Calls of mimalloc's allocation entry points recorded in a callgrind file:
# heap allocations (reallocations included).
allocations() {
    python3 - "$1" <<'PY'
import re, sys
names, total, callee = {}, 0, None
alloc = re.compile(r"^mi_(malloc|zalloc|realloc|calloc)(_aligned)?$")
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        if m.group(3) is not None:
            names[m.group(2)] = m.group(3)
        callee = names.get(m.group(2), "") if m.group(1) == "cfn" else None
    elif line.startswith("calls=") and callee is not None:
        if alloc.match(callee):
            total += int(line.split()[0][6:])
        callee = None
print(total)
PY
}

low=$(measure "$LOW") || exit 1
high=$(measure "$HIGH") || exit 1
a_low=$(allocations "$OUT/callgrind.out.$MODE.$HTTP1.$LOW")
a_high=$(allocations "$OUT/callgrind.out.$MODE.$HTTP1.$HIGH")
case $MODE in h2c|grpc) HTTP1="- conns=$CONNS streams=$STREAMS" ;; esac
echo "mode=$MODE http1=$HTTP1 Ir($LOW)=$low Ir($HIGH)=$high per_request=$(( (high - low) / (HIGH - LOW) ))" \
    "allocations_per_request=$(python3 -c "print(round(($a_high - $a_low) / ($HIGH - $LOW), 2))")"
