#!/usr/bin/env bash
# The edge's HTTP core against nginx on the same machine: both answer a fixed
# response (GET /healthz, 200, the same 15-byte JSON body), each pinned to CPU
# 0 with one event loop / one worker, while wrk runs on CPU 1 with the same
# command against each, alternating. Prints requests/s and p99 per run, the
# medians, and edge/nginx ratios, without and with 16-deep pipelining; then
# the same POST /v1/orders requests to both: the edge takes them through
# admission with the Kafka hand-off off, nginx answers a fixed 202.
#
#   bash bench/http.sh [seconds per run, default 10] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}
CONNS=64

. bench/lib.sh
need_load_tools bench/http.sh
make_work
EDGE_PORT=$(port); NGINX_PORT=$(port); ADMIN_PORT=$(port)
start_nginx "$NGINX_PORT"

# The edge: the whole dev stack (it idles but for the edge), on CPU 0, one
# event loop. -edge.unsafeNoKafka answers orders right after admission (the
# "orders" mode measures HTTP + admission, not Kafka); wrk comes from one IP,
# so the per-IP limit is off.
make -s build
taskset -c 0 ./bin/flashgate dev --data-dir "$work/dev" --edge-addr "127.0.0.1:$EDGE_PORT" \
  --admin-addr "127.0.0.1:$ADMIN_PORT" --kafka-addr 127.0.0.1:0 -edge.loops 1 -log.level error \
  -edge.unsafeNoKafka -edge.ratePerIP 0 > "$work/dev.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$EDGE_PORT/healthz" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$EDGE_PORT/healthz" >/dev/null || { echo "edge did not start:"; cat "$work/dev.log"; exit 1; }

curl -sf -X PUT "http://127.0.0.1:$ADMIN_PORT/admin/v1/skus/BENCH" -d '{"stock": 1000000000000, "price_cents": 100, "per_user_limit": 0}' >/dev/null

# POST /v1/orders from 100K rotating users (each well under its rate limit).
write_orders_lua 100000

cat > "$work/pipeline.lua" <<'LUA'
init = function(args)
  local r = {}
  for i = 1, 16 do r[i] = wrk.format(nil, "/healthz") end
  req = table.concat(r)
end
request = function() return req end
LUA

# run PORT [wrk args...]: prints "req/s p99_us"
run() {
  local port=$1; shift
  local out
  out=$(taskset -c 1 wrk -t1 -c$CONNS -d"${SECS}s" --latency "$@" "http://127.0.0.1:$port/healthz")
  if grep -q "Non-2xx" <<<"$out"; then echo "wrk saw errors:" >&2; echo "$out" >&2; exit 1; fi
  local rps p99
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000}}' <<<"$out")
  echo "$rps ${p99:-0}"
}


printf "%-22s %-6s %14s %10s\n" mode server "requests/s" "p99 µs"
for mode in keepalive pipeline16 orders; do
  args=()
  [ $mode = pipeline16 ] && args=(-s "$work/pipeline.lua")
  [ $mode = orders ] && args=(-s "$work/orders.lua")
  : > "$work/edge.$mode"; : > "$work/nginx.$mode"
  for r in $(seq "$ROUNDS"); do
    for srv in edge nginx; do
      p=$EDGE_PORT; [ $srv = nginx ] && p=$NGINX_PORT
      res=$(run "$p" "${args[@]}")
      echo "$res" >> "$work/$srv.$mode"
      printf "%-22s %-6s %14s %10s\n" "$mode (run $r)" "$srv" $res
    done
  done
done

echo
printf "%-22s %16s %16s %8s %12s %12s\n" mode "edge req/s" "nginx req/s" ratio "edge p99µs" "nginx p99µs"
row() { # label edge-file nginx-file [goal ratio]
  local e n ep np r
  e=$(cut -d' ' -f1 "$work/$2" | median); n=$(cut -d' ' -f1 "$work/$3" | median)
  ep=$(cut -d' ' -f2 "$work/$2" | median); np=$(cut -d' ' -f2 "$work/$3" | median)
  if [ "$1" = pipeline16 ]; then ep="n/a"; np="n/a"; fi # wrk's percentiles are broken with pipelining
  r=$(awk -v a="$e" -v b="$n" 'BEGIN {printf "%.2f", a/b}')
  printf "%-22s %16.0f %16.0f %7.2fx %12s %12s\n" "$1" "$e" "$n" "$r" "$ep" "$np"
  local goal="-" verdict="-"
  if [ -n "${4:-}" ]; then
    goal=">= ${4}x"
    verdict=$(awk -v r="$r" -v g="$4" 'BEGIN {print (r >= g) ? "PASS" : "FAIL"}')
  fi
  table_row "HTTP $1 req/s (1 loop vs 1 nginx worker)" "$(printf %.0f "$e")" "nginx return" "$(printf %.0f "$n")" "${r}x" "$goal" "$verdict"
}
row keepalive edge.keepalive nginx.keepalive
row pipeline16 edge.pipeline16 nginx.pipeline16
row orders edge.orders nginx.orders 0.9
row "orders vs keepalive" edge.orders nginx.keepalive
echo "(medians of $ROUNDS runs of ${SECS}s; wrk -t1 -c$CONNS on CPU 1, server on CPU 0; p99 from wrk --latency;"
echo " orders = the same POST /v1/orders requests to both: the edge takes each through parse, identity, rate"
echo " limits and admission with the Kafka hand-off off, nginx answers a fixed 202 of the same size;"
echo " 'orders vs keepalive' sets the edge's orders against nginx's fixed GET response)"
