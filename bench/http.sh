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

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk; then
  if [ "$(id -u)" = 0 ] && need apt-get; then
    echo "installing nginx-light and wrk (Debian packages) for the benchmark" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk) >/dev/null
  else
    echo "bench/http.sh needs nginx and wrk: sudo apt-get install nginx-light wrk" >&2
    exit 1
  fi
fi
[ "$(nproc)" -ge 2 ] || { echo "bench/http.sh needs 2 CPUs (server on one, wrk on the other)" >&2; exit 1; }

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EDGE_PORT=$(port); NGINX_PORT=$(port); ADMIN_PORT=$(port)

# nginx: one worker, keep-alive without limits, the edge's body.
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon on;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server_tokens off;
  keepalive_requests 100000000;
  keepalive_timeout 60s;
  server {
    listen 127.0.0.1:$NGINX_PORT reuseport;
    location /healthz { default_type application/json; return 200 '{"status":"ok"}'; }
    # The orders mode's requests, answered with a 202 and a Location like the edge's.
    location /v1/orders {
      default_type application/json;
      add_header Location /v1/orders/251168050470977536;
      return 202 '{"order_id":"251168050470977536","status":"accepted","sku":"BENCH","qty":1,"user_id":"u12345"}';
    }
  }
}
CONF
taskset -c 0 nginx -c "$work/nginx.conf" -e "$work/nginx-error.log"

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
# The requests are built once in init: building each with wrk.format costs
# wrk about a fifth of its rate, which would cap both servers at wrk's limit.
cat > "$work/orders.lua" <<'LUA'
local reqs, n, i = {}, 100000, 0
init = function(args)
  for u = 1, n do
    reqs[u] = "POST /v1/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-ID: u" .. u ..
      "\r\nContent-Type: application/json\r\nContent-Length: 23\r\n\r\n{\"sku\":\"BENCH\",\"qty\":1}"
  end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
LUA

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

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

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
row() { # label edge-file nginx-file
  local e n ep np
  e=$(cut -d' ' -f1 "$work/$2" | median); n=$(cut -d' ' -f1 "$work/$3" | median)
  ep=$(cut -d' ' -f2 "$work/$2" | median); np=$(cut -d' ' -f2 "$work/$3" | median)
  if [ "$1" = pipeline16 ]; then ep="n/a"; np="n/a"; fi # wrk's percentiles are broken with pipelining
  printf "%-22s %16.0f %16.0f %7.2fx %12s %12s\n" "$1" "$e" "$n" "$(awk -v a="$e" -v b="$n" 'BEGIN {print a/b}')" "$ep" "$np"
}
row keepalive edge.keepalive nginx.keepalive
row pipeline16 edge.pipeline16 nginx.pipeline16
row orders edge.orders nginx.orders
row "orders vs keepalive" edge.orders nginx.keepalive
echo "(medians of $ROUNDS runs of ${SECS}s; wrk -t1 -c$CONNS on CPU 1, server on CPU 0; p99 from wrk --latency;"
echo " orders = the same POST /v1/orders requests to both: the edge takes each through parse, identity, rate"
echo " limits and admission with the Kafka hand-off off, nginx answers a fixed 202 of the same size;"
echo " 'orders vs keepalive' sets the edge's orders against nginx's fixed GET response)"
