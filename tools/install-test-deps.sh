#!/usr/bin/env bash
# Installs what optional tests need and this machine lacks: kcat, for
# TestKcatReadsOrders (which skips without it). It installs only as root on
# Debian/Ubuntu; anywhere else, or when apt-get fails (no network), it says
# so and exits 0: a missing kcat skips a test, it does not fail one.
set -uo pipefail
if command -v kcat >/dev/null 2>&1; then
  echo "install-test-deps: kcat present ($(command -v kcat)); nothing to do"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || [ ! -f /etc/debian_version ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: kcat missing and this is not root on Debian/Ubuntu; not installing it (TestKcatReadsOrders will skip; install the kcat package to run it)"
  exit 0
fi
echo "install-test-deps: installing kcat with apt-get (for TestKcatReadsOrders)"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat; }; then
  echo "install-test-deps: apt-get could not install kcat (see above); TestKcatReadsOrders will skip" >&2
fi
exit 0
