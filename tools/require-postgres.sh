#!/usr/bin/env bash
# Checks that the PostgreSQL server binaries the integration tests and
# `flashgate dev` need are on this machine, and says how to get them if not.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then
  exit 0
fi
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
  if [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then
    exit 0
  fi
done
cat >&2 <<'MSG'
flashgate needs the PostgreSQL server binaries (initdb, postgres), found on PATH
or under /usr/lib/postgresql/*/bin, for `make test` and `make run`.
Install them with:
    sudo apt-get update && sudo apt-get install -y postgresql
(on other systems: your package manager's PostgreSQL server package, 15 or newer)
MSG
exit 1
