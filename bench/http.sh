#!/usr/bin/env bash
# The edge's HTTP core against nginx on the same machine: both answer a fixed
# response (GET /healthz, 200, the same 15-byte JSON body), each pinned to CPU
# 0 with one event loop / one worker, while wrk runs on CPU 1 with the same
# command against each, alternating. Prints requests/s and p99 per run, the
# medians, and edge/nginx ratios, without and with 16-deep pipelining; then
# orders through admission with the Kafka hand-off off, against the same
# nginx figure.
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
cat > "$work/orders.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/v1/orders",
    {["X-User-ID"] = "u" .. (counter % 100000), ["Content-Type"] = "application/json"},
    '{"sku":"BENCH","qty":1}')
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
for mode in keepalive pipeline16; do
  args=(); [ $mode = pipeline16 ] && args=(-s "$work/pipeline.lua")
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
# Orders through admission (no Kafka) on the edge, against nginx's fixed response above.
: > "$work/edge.orders"
for r in $(seq "$ROUNDS"); do
  res=$(run "$EDGE_PORT" -s "$work/orders.lua")
  echo "$res" >> "$work/edge.orders"
  printf "%-22s %-6s %14s %10s\n" "orders (run $r)" edge $res
done

echo
printf "%-12s %16s %16s %8s %12s %12s\n" mode "edge req/s" "nginx req/s" ratio "edge p99µs" "nginx p99µs"
for mode in keepalive pipeline16 orders; do
  ref=$mode; [ $mode = orders ] && ref=keepalive # orders compare with nginx's fixed response
  e=$(cut -d' ' -f1 "$work/edge.$mode" | median); n=$(cut -d' ' -f1 "$work/nginx.$ref" | median)
  ep=$(cut -d' ' -f2 "$work/edge.$mode" | median); np=$(cut -d' ' -f2 "$work/nginx.$ref" | median)
  if [ $mode = pipeline16 ]; then ep="n/a"; np="n/a"; fi # wrk's percentiles are broken with pipelining
  printf "%-12s %16.0f %16.0f %7.2fx %12s %12s\n" $mode "$e" "$n" "$(awk -v a="$e" -v b="$n" 'BEGIN {print a/b}')" "$ep" "$np"
done
echo "(medians of $ROUNDS runs of ${SECS}s; wrk -t1 -c$CONNS on CPU 1, server on CPU 0; p99 from wrk --latency;"
echo " orders = POST /v1/orders through parse, identity, rate limits and admission with the Kafka hand-off off)"
