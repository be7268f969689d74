#!/usr/bin/env bash
# Installs what optional tests need and this machine lacks: kcat (for
# TestKcatReadsOrders, the outside check of order.created) and redis-server
# (for TestTextbookPeer, the benchmark peer) and chromium (for
# TestDashboardInChromium, the live dashboard in a headless browser). Each
# test skips without its tool. It installs only as root on Debian/Ubuntu; anywhere else, or when
# apt-get fails (no network), it says so and exits 0: a missing tool skips a
# test, it does not fail one.
set -uo pipefail
missing=()
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} = 0 ]; then
  echo "install-test-deps: kcat, redis-server and chromium present; nothing to do"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || [ ! -f /etc/debian_version ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: missing ${missing[*]} and this is not root on Debian/Ubuntu; not installing (their tests will skip; install the packages to run them)"
  exit 0
fi
echo "install-test-deps: installing ${missing[*]} with apt-get (for TestKcatReadsOrders / TestTextbookPeer / TestDashboardInChromium)"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; }; then
  echo "install-test-deps: apt-get could not install ${missing[*]} (see above); their tests will skip" >&2
fi
exit 0
