# Shared by the benchmark scripts (source it): the tools they need, a work
# directory removed on exit (with the processes in $pids and nginx), free
# ports, the nginx peer, the POST /v1/orders requests for wrk, medians.

need() { command -v "$1" >/dev/null 2>&1; }

# need_load_tools NAME: nginx and wrk, installed from Debian when missing and
# root; python3; two CPUs (servers on one, load on the other).
need_load_tools() {
  if ! need nginx || ! need wrk; then
    if [ "$(id -u)" = 0 ] && need apt-get; then
      echo "installing nginx-light and wrk (Debian packages) for the benchmark" >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk) >/dev/null
    else
      echo "$1 needs nginx and wrk: sudo apt-get install nginx-light wrk" >&2
      exit 1
    fi
  fi
  need python3 || { echo "$1 needs python3 (free ports)" >&2; exit 1; }
  [ "$(nproc)" -ge 2 ] || { echo "$1 needs 2 CPUs (servers on one, load on the other)" >&2; exit 1; }
}

# make_work: $work, a directory everyone may read (PostgreSQL runs as
# postgres when we are root), removed on exit with what runs in it.
make_work() {
  work=$(mktemp -d)
  chmod 755 "$work"
  pids=()
  trap cleanup_work EXIT
}
cleanup_work() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_nginx PORT: nginx on CPU 0, one worker, keep-alive without limits,
# answering GET /healthz like the edge (200, the same 15-byte body) and
# POST /v1/orders with a 202 and a Location like the edge's.
start_nginx() {
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
    listen 127.0.0.1:$1 reuseport;
    location /healthz { default_type application/json; return 200 '{"status":"ok"}'; }
    location /v1/orders {
      default_type application/json;
      add_header Location /v1/orders/251168050470977536;
      return 202 '{"order_id":"251168050470977536","status":"accepted","sku":"BENCH","qty":1,"user_id":"u12345"}';
    }
  }
}
CONF
  taskset -c 0 nginx -c "$work/nginx.conf" -e "$work/nginx-error.log"
}

# write_orders_lua USERS: $work/orders.lua, POST /v1/orders of one BENCH unit
# from USERS rotating users. The requests are built once in init: building
# each with wrk.format costs wrk about a fifth of its rate, which would cap
# both servers at wrk's limit.
write_orders_lua() {
  cat > "$work/orders.lua" <<LUA
local reqs, n, i = {}, $1, 0
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
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# table_row FIGURE FLASHGATE PEER PEER_VALUE RATIO GOAL VERDICT: one row of
# the table `make bench` prints at the end (bench/table.sh), appended to
# $BENCH_TABLE when it is set. RATIO is flashgate's figure against the
# peer's, "better" direction first (e.g. 0.86x of nginx's req/s, 6.2x lower
# p99); VERDICT is PASS, FAIL or - (no goal).
table_row() {
  [ -n "${BENCH_TABLE:-}" ] || return 0
  printf '%s|%s|%s|%s|%s|%s|%s\n' "$@" >> "$BENCH_TABLE"
}
