#!/usr/bin/env bash
# Runs Levee's whole test suite. Installs what the tests need from Debian's
# packages first (when run as root and something is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# redis-tools: redis-cli creates the Redis Cluster; openssl makes the TLS tests' certificates
# and is the s_client of tests/tls.rs, as curl (--resolve) is;
# nginx: a real TLS endpoint (tests/upstream_tls.rs);
# postgresql: the failover test runs a primary and a streaming replica (tests/postgres_failover.rs);
# chromium, chromium-driver: the dashboard's browser test (tests/dashboard.rs).
for pkg_bin in curl:curl redis-server:redis-server redis-tools:redis-cli openssl:openssl dnsmasq:dnsmasq nginx:nginx postgresql:/usr/lib/postgresql/15/bin/initdb chromium:chromium chromium-driver:chromedriver; do
    bin=${pkg_bin#*:}; pkg=${pkg_bin%%:*}
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
done
# ca-certificates: the system roots that TLS to endpoints verifies against by default.
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    else
        echo "missing packages: ${need[*]} (install them, e.g. sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
fi

cargo test --all-targets "$@"
