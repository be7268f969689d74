#!/usr/bin/env bash
# Well-behaved clients while the server is under attack: for nginx `return 202`
# (the peer), the edge's HTTP + admission path (`flashgate dev
# -edge.unsafeNoKafka`) and the whole order path (`flashgate dev`, 202 after the
# broker's ack; its log in the page cache, as a Kafka broker's default, since
# this measures the attack and not the disk's fsync times: ORDER_SYNC=1 keeps
# the dev default of synced writes), tools/openloop sends orders at a modest fixed rate and
# measures latency from each request's intended send time, first alone, then
# while the edge tests' attacker runs: 10,000 slowloris connections (a byte a
# second), header floods, gigabyte bodies and pipelining floods that never
# read (edge/hostile_test.go). The attacker is pinned to CPU 1, so it can take
# at most half of this machine; servers and client float. Prints p50/p90/p99
# per server and state, and the under-attack p99 against the goal (< 50 ms).
#
#   bash bench/attack.sh [seconds measured, default 8] [rate, default 100] [rounds, default 1]
#   EDGE_ARGS='-edge.loops 1' bash bench/attack.sh              # flags for both dev stacks
#   ATTACK_SLOW=2000 bash bench/attack.sh                       # fewer slowloris connections
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
RATE=${2:-100}
ROUNDS=${3:-1}
SLOW=${ATTACK_SLOW:-10000}
EDGE_ARGS=${EDGE_ARGS:-} # extra flags for both dev stacks
ORDER_SYNC=${ORDER_SYNC:-0}

. bench/lib.sh
need_load_tools bench/attack.sh
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((SLOW + 2000)) ]; then
  echo "bench/attack.sh needs $((SLOW + 2000)) open files per process (ulimit -Hn is $(ulimit -Hn)); raise it or set ATTACK_SLOW lower" >&2
  exit 1
fi
make_work
make -s build
go build -o "$work/openloop" ./tools/openloop
go test -c -o "$work/edge.test" ./edge

# nginx needs room for the attacker's connections: the shared config with
# more of them.
NGINX_PORT=$(port)
start_nginx "$NGINX_PORT"
kill "$(cat "$work/nginx.pid")"; sleep 0.3
sed -i "s/worker_connections 4096/worker_connections 15000/; s/^worker_processes 1;/worker_processes 1;\nworker_rlimit_nofile $(ulimit -n);/" "$work/nginx.conf"
sed -i 's/^http {/http {\n  client_header_timeout 3s;\n  client_body_timeout 3s;\n  client_max_body_size 1m;\n  large_client_header_buffers 4 8k;/' "$work/nginx.conf"
nginx -c "$work/nginx.conf" -e "$work/nginx-error.log"

# start_dev NAME [flags...]: a dev stack on fresh ports; sets $dev_port.
start_dev() {
  local name=$1; shift
  dev_port=$(port); local admin; admin=$(port)
  ./bin/flashgate dev --data-dir "$work/$name" --edge-addr "127.0.0.1:$dev_port" \
    --admin-addr "127.0.0.1:$admin" --kafka-addr 127.0.0.1:0 -log.level error \
    -edge.ratePerIP 0 -edge.headerReadTimeout 3s "$@" > "$work/$name.log" 2>&1 &
  dev_pid=$!
  pids+=($dev_pid)
  for _ in $(seq 150); do curl -sf "http://127.0.0.1:$dev_port/readyz" >/dev/null && break; sleep 0.2; done
  curl -sf "http://127.0.0.1:$dev_port/readyz" >/dev/null || { echo "$name did not start:"; cat "$work/$name.log"; exit 1; }
  curl -sf -X PUT "http://127.0.0.1:$admin/admin/v1/skus/BENCH" \
    -d '{"stock": 1000000000000, "price_cents": 100, "per_user_limit": 0}' >/dev/null
  sleep 3 # start-up work (partitions, the previous stack's files going) settles
}

# measure PORT: one open-loop run; prints "p50_ms p90_ms p99_ms non2xx errors".
measure() {
  "$work/openloop" -url "127.0.0.1:$1" -rate "$RATE" -duration "${SECS}s" -warmup 2s -conns 8 -json 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency"]["all"]
print("%.2f %.2f %.2f %d %d" % (l["p50_us"]/1e3, l["p90_us"]/1e3, l["p99_us"]/1e3, r["non_2xx"], r["errors"]+r["unanswered"]+r["unsent"]))'
}

# attacked PORT: measure while the attacker runs (started 3 s ahead so its
# slowloris connections are all open).
attacked() {
  exec 7> >(FLASHGATE_TEST_ATTACK="127.0.0.1:$1" FLASHGATE_TEST_ATTACK_SLOW=$SLOW taskset -c 1 "$work/edge.test" > "$work/attack.json" 2>&1)
  sleep 3
  measure "$1"
  exec 7>&-
  sleep 2
}

results=$work/results
: > "$results"
row() { # NAME PORT
  local quiet loud
  quiet=$(measure "$2")
  loud=$(attacked "$2")
  echo "$1 $quiet $loud" | tee -a "$results"
}
echo "server p50 p90 p99 non2xx failed | under attack: p50 p90 p99 non2xx failed (ms, $RATE orders/s, 8 connections, ${SECS}s)"
for r in $(seq "$ROUNDS"); do
  row nginx "$NGINX_PORT"
  start_dev http -edge.unsafeNoKafka $EDGE_ARGS
  row edge-http "$dev_port"
  kill -INT "$dev_pid"; wait "$dev_pid" || true
  if [ "$ORDER_SYNC" = 1 ]; then start_dev order $EDGE_ARGS; else start_dev order -kafka.syncWrites=false $EDGE_ARGS; fi
  row edge-order "$dev_port"
  kill -INT "$dev_pid"; wait "$dev_pid" || true
  rm -rf "$work/http" "$work/order"
done

med() { awk -v n="$1" -v c="$2" '$1==n {print $c}' "$results" | median; }
echo
echo "medians over $ROUNDS round(s), p99 in ms: quiet -> under attack"
for n in nginx edge-http edge-order; do
  printf '%-10s %8s -> %8s\n' "$n" "$(med $n 4)" "$(med $n 9)"
done
ng=$(med nginx 9)
for n in edge-http edge-order; do
  p=$(med $n 9)
  verdict=$(awk -v p="$p" 'BEGIN {print (p < 50) ? "PASS" : "FAIL"}')
  ratio=$(awk -v p="$p" -v g="$ng" 'BEGIN {printf "%.2fx", p/g}')
  table_row "p99 under attack, $n (ms)" "$p" "nginx" "$ng" "$ratio of nginx" "< 50 ms" "$verdict"
done
