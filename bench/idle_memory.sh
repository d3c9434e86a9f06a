#!/usr/bin/env bash
# RSS per idle client connection: N connections (default 10,000) each send
# one GET, read the answer, then stay open and idle. The proxy's RSS after,
# minus its RSS before (warmed up by a few requests), divided by N. Run for
# Levee (with each HTTP/1 engine, server.http1 = "hyper" and "levee"), nginx
# with 1 worker and HAProxy with nbthread 1, all in front of the same backend
# (/work/shared/bench-ref/backend.conf).
#
# MODE (what the idle connections speak):
#   plain  HTTP/1.1 keep-alive (default)
#   tls    HTTP/1.1 keep-alive over TLS 1.3 (the same certificate for all,
#          CERT=ecdsa (P-256) or rsa (2048), made here with openssl)
#   h2c    HTTP/2 with prior knowledge, one stream, then idle (the client
#          answers the server's PINGs)
#   h2     HTTP/2 over TLS (ALPN h2)
#
#   bench/idle_memory.sh                                    # needs target/release/levee
#   N=2000 TARGETS="levee nginx haproxy" MODE=tls bench/idle_memory.sh
#   LEVEE_BIN=/path/to/levee MODE=h2c bench/idle_memory.sh
#
# Needs: nginx, haproxy (for its target), python3, openssl (tls, h2).
# Starts what it needs and stops every PID it started.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
MODE=${MODE:-plain}
CERT=${CERT:-ecdsa}
case $MODE in
    plain) TARGETS=${TARGETS:-"hyper levee nginx haproxy"} ;;
    tls) TARGETS=${TARGETS:-"levee nginx haproxy"} ;;
    h2c | h2) TARGETS=${TARGETS:-"levee nginx haproxy"} ;;
    *) echo "MODE must be plain, tls, h2c or h2 (got $MODE)" >&2; exit 1 ;;
esac
case $CERT in ecdsa | rsa) ;; *) echo "CERT must be ecdsa or rsa" >&2; exit 1 ;; esac
# A peer that is not installed would only show up later as "nothing answers".
for t in $TARGETS; do
    case $t in nginx | haproxy)
        command -v "$t" >/dev/null || { echo "$t is not installed (bench/README.md, Setup)" >&2; exit 1; } ;;
    esac
done
LEVEE=${LEVEE_BIN:-${LEVEE:-target/release/levee}}
REF=${REF:-/work/shared/bench-ref}
OUT=${OUT:-/tmp/levee-idle-memory}
rm -rf "$OUT" && mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((N + 200)) ]; then
    echo "need at least $((N + 200)) file descriptors (ulimit -Hn is $(ulimit -Hn))" >&2
    exit 1
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

SCHEME=http
CURL=(curl -s -o /dev/null --max-time 2)
case $MODE in
    tls | h2) SCHEME=https; CURL+=(-k) ;;
esac
[ "$MODE" = h2c ] && CURL+=(--http2-prior-knowledge)
[ "$MODE" = h2 ] && CURL+=(--http2)

wait_port() { # HOST:PORT [plain]: the proxy (as MODE speaks) or the plain HTTP backend
    local curl=("${CURL[@]}")
    [ "${2:-}" = plain ] && curl=(curl -s -o /dev/null --max-time 2)
    for _ in $(seq 100); do
        [ "$("${curl[@]}" -w '%{http_code}' "$([ "${2:-}" = plain ] && echo http || echo "$SCHEME")://$1/")" = 200 ] && return 0
        sleep 0.1
    done
    echo "nothing answers 200 on $1" >&2
    exit 1
}

if [ "$SCHEME" = https ]; then
    case $CERT in
        ecdsa) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
        rsa) newkey=(-newkey rsa:2048) ;;
    esac
    openssl req -x509 "${newkey[@]}" -nodes -keyout "$OUT/cert.key" -out "$OUT/cert.pem" -days 30 \
        -subj /CN=bench.test -addext subjectAltName=DNS:bench.test 2>"$OUT/openssl.log"
    cat "$OUT/cert.pem" "$OUT/cert.key" >"$OUT/cert.combined.pem"
fi

# The backend: one nginx, 1 worker, on 127.0.0.1:9001..9003.
nginx -p "$OUT/" -e "$OUT/backend-error.log" -c "$(realpath "$REF/backend.conf")" &
pids+=($!)
wait_port 127.0.0.1:9001 plain

# The client: opens N connections, one GET each, then holds them idle until
# told to stop (a line on stdin). Prints "ready <ok>" when all have answered.
cat > "$OUT/client.py" <<'PY'
import asyncio, ssl, struct, sys
host, port, n, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
REQ = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
ctx = None
if mode in ("tls", "h2"):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["h2"] if mode == "h2" else ["http/1.1"])

def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

async def read_frame(r):
    head = await r.readexactly(9)
    length = int.from_bytes(head[:3], "big")
    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, await r.readexactly(length)

async def h1(r, w):
    w.write(REQ)
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await r.readexactly(length)
    return head.startswith(b"HTTP/1.1 200")

async def h2(r, w):
    # GET / from the HPACK static table (:method GET, :scheme, :path /) and
    # :authority as a literal without indexing.
    scheme = 0x87 if mode == "h2" else 0x86
    block = bytes([0x82, scheme, 0x84, 0x01, 5]) + b"bench"
    w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, block))
    ok = None
    while True:
        kind, flags, stream, payload = await read_frame(r)
        if kind == 4 and not flags & 1:
            w.write(frame(4, 1, 0))                      # SETTINGS ACK
        elif kind == 6 and not flags & 1:
            w.write(frame(6, 1, 0, payload))             # PING ACK
        elif kind == 7:
            return False                                 # GOAWAY
        elif stream == 1 and kind == 1 and ok is None:
            # :status 200 (static index 8), after any dynamic table size updates
            # (001xxxxx: Levee opens its first block with one to 0, indexing nothing).
            block = payload.lstrip(bytes(range(0x20, 0x40)))
            ok = block[:1] == b"\x88"
        if stream == 1 and kind in (0, 1) and flags & 1:
            return bool(ok)

async def keep_answering(r, w):
    # Idle HTTP/2 connections still get PINGs (keep-alive): answer them.
    try:
        while True:
            kind, flags, _, payload = await read_frame(r)
            if kind == 6 and not flags & 1:
                w.write(frame(6, 1, 0, payload))
    except Exception:
        pass

async def one(sem, conns, tasks):
    async with sem:
        r, w = await asyncio.open_connection(host, port, ssl=ctx,
                                             server_hostname="bench.test" if ctx else None)
        ok = await (h2(r, w) if mode in ("h2c", "h2") else h1(r, w))
        conns.append(w)
        if mode in ("h2c", "h2"):
            tasks.append(asyncio.create_task(keep_answering(r, w)))
        return ok

async def main():
    sem, conns, tasks = asyncio.Semaphore(200), [], []
    results = await asyncio.gather(*(one(sem, conns, tasks) for _ in range(n)), return_exceptions=True)
    ok = sum(1 for r in results if r is True)
    errors = {}
    for r in results:
        if isinstance(r, BaseException):
            errors[repr(r)[:80]] = errors.get(repr(r)[:80], 0) + 1
    for e, c in list(errors.items())[:3]:
        print("error", c, e, file=sys.stderr)
    print("ready", ok, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for t in tasks:
        t.cancel()
    for w in conns:
        w.close()
asyncio.run(main())
PY

# measure NAME PID HOST PORT: prints "NAME before after per_conn_bytes ok".
measure() {
    local name=$1 pid=$2 host=$3 port=$4
    for _ in 1 2 3 4 5; do "${CURL[@]}" "$SCHEME://$host:$port/"; done
    sleep 1
    local before after ok
    before=$(rss_kib "$pid")
    mkfifo "$OUT/$name.in"
    python3 "$OUT/client.py" "$host" "$port" "$N" "$MODE" < "$OUT/$name.in" > "$OUT/$name.client" 2>"$OUT/$name.client.err" &
    local client=$!
    pids+=("$client")
    exec 9> "$OUT/$name.in"
    for _ in $(seq 900); do
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

# Levee's listener for MODE, appended under its [[listeners]] address line.
levee_listener() {
    echo 'idle_timeout = "300s"'
    echo "max_connections = $((N + 100))"
    case $MODE in h2c | h2) echo 'http2 = { enabled = true }' ;; esac
    case $MODE in
        tls | h2)
            echo '[listeners.tls]'
            echo "certificates = [{ cert = \"$OUT/cert.pem\", key = \"$OUT/cert.key\" }]"
            [ "$MODE" = h2 ] && echo 'alpn = ["h2", "http/1.1"]'
            ;;
    esac
    return 0
}
# nginx's listen parameters for MODE (nginx 1.22: `http2` on the listen line).
nginx_listen() {
    case $MODE in
        plain) echo "listen 127.0.0.1:8081 backlog=4096;" ;;
        h2c) echo "listen 127.0.0.1:8081 http2 backlog=4096;" ;;
        tls | h2)
            local h2=""; [ "$MODE" = h2 ] && h2=" http2"
            echo "listen 127.0.0.1:8081 ssl$h2 backlog=4096; ssl_certificate $OUT/cert.pem; ssl_certificate_key $OUT/cert.key; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;"
            ;;
    esac
}
haproxy_bind() {
    case $MODE in
        plain) echo "bind 127.0.0.1:8082" ;;
        h2c) echo "bind 127.0.0.1:8082 proto h2" ;;
        tls) echo "bind 127.0.0.1:8082 ssl crt $OUT/cert.combined.pem alpn http/1.1" ;;
        h2) echo "bind 127.0.0.1:8082 ssl crt $OUT/cert.combined.pem alpn h2,http/1.1" ;;
    esac
}

echo "MODE=$MODE N=$N$([ "$SCHEME" = https ] && echo " CERT=$CERT")"
printf '%-8s %10s %10s %14s %8s\n' target "before KiB" "after KiB" "bytes/conn" "200s"
for t in $TARGETS; do
    case $t in
        hyper|levee)
            levee_listener > "$OUT/listener.toml"
            sed -e "s/^workers = .*/workers = 1\nhttp1 = \"$t\"/" bench/levee.toml |
                awk -v extra="$OUT/listener.toml" '
                    { print }
                    /^address = "127\.0\.0\.1:8090"/ { while ((getline l < extra) > 0) print l }' > "$OUT/levee-$t.toml"
            "$LEVEE" run --config "$OUT/levee-$t.toml" 2> "$OUT/levee-$t.log" &
            lp=$!
            pids+=("$lp")
            wait_port 127.0.0.1:8090
            read -r name before after per ok < <(measure "$t" "$lp" 127.0.0.1 8090)
            kill "$lp"; wait "$lp" 2>/dev/null || true
            ;;
        nginx)
            sed -e 's/worker_connections 8192;/worker_connections 16000;/' \
                -e "s#listen 127.0.0.1:8081 backlog=4096;#$(nginx_listen)#" \
                "$REF/nginx-proxy.conf" > "$OUT/nginx-proxy.conf"
            nginx -p "$OUT/" -e "$OUT/nginx-proxy-error.log" -c "$OUT/nginx-proxy.conf" &
            np=$!
            pids+=("$np")
            wait_port 127.0.0.1:8081
            worker=$(pgrep -P "$np" | head -1)
            read -r name before after per ok < <(measure nginx "$worker" 127.0.0.1 8081)
            kill "$np"; wait "$np" 2>/dev/null || true
            ;;
        haproxy)
            # maxconn for N clients plus the backend side; the FD limit is set
            # explicitly, HAProxy would otherwise ask for 2 x maxconn.
            sed -e "s/maxconn  *[0-9]*/maxconn $((N + 100))\n    ulimit-n $(ulimit -Hn)/" \
                -e "s#bind 127.0.0.1:8082#$(haproxy_bind)#" \
                -e 's/timeout client  *30s/timeout client 300s/' \
                "$REF/haproxy-nt1.cfg" > "$OUT/haproxy.cfg"
            haproxy -db -f "$OUT/haproxy.cfg" > "$OUT/haproxy.log" 2>&1 &
            hp=$!
            pids+=("$hp")
            wait_port 127.0.0.1:8082
            read -r name before after per ok < <(measure haproxy "$hp" 127.0.0.1 8082)
            kill "$hp"; wait "$hp" 2>/dev/null || true
            ;;
        *) echo "unknown target $t" >&2; exit 1 ;;
    esac
    printf '%-8s %10s %10s %14s %8s\n' "$name" "$before" "$after" "$per" "$ok"
done
