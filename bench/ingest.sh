#!/usr/bin/env bash
# Ingest (Kafka order.created -> the partitioned orders table) against its
# physical limit, psql \copy of the same rows into the same table, measured in
# the same run by tools/ingestbench on a private PostgreSQL cluster (fsync on,
# as `flashgate dev` runs) and the embedded broker (log on disk, synced per
# batch): N pre-produced orders taken by the ingest service with its defaults
# from start until caught up, and by psql \copy from a CSV of the same rows,
# alternating, for a few rounds (medians and ratio); then the staging
# (redelivery) path, and the produce -> row visible latency under a steady
# 20K orders/s. Ends with `check: ... PASS|FAIL` lines and exits 0 either
# way (runs on this shared machine vary; see the "cpu other" column).
#
#   bash bench/ingest.sh [orders, default 1000000] [rounds, default 3] [tools/ingestbench flags...]
#
# PROFILE=/tmp/ingest saves this process's CPU profiles (ingest, embedded
# broker, producer) as /tmp/ingest.{ingest,staging,steady}.pprof. Flags after
# the two numbers go to tools/ingestbench (-help lists them), for example
# -ingest.workers 2, -fsync=false, -kafkaSync=false, -idemKeys 0.5.
set -euo pipefail
cd "$(dirname "$0")/.."
ORDERS=${1:-1000000}
ROUNDS=${2:-3}
shift $(( $# < 2 ? $# : 2 ))

bash tools/require-postgres.sh
if ! command -v psql >/dev/null 2>&1; then
  echo "bench/ingest.sh needs the psql client: sudo apt-get install postgresql-client" >&2
  exit 1
fi

args=(-orders "$ORDERS" -rounds "$ROUNDS")
[ -n "${PROFILE:-}" ] && args+=(-cpuprofile "$PROFILE")
mkdir -p bin
go build -trimpath -o bin/ingestbench ./tools/ingestbench
./bin/ingestbench "${args[@]}" "$@"
