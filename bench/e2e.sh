#!/usr/bin/env bash
# Orders end to end: HTTP -> admission -> Kafka (acks=all, a 202 only after the
# broker's ack), against nginx answering the same requests with a fixed 202
# with one worker on CPU 0; load from CPU 1. Two layouts (LAYOUT=):
#
#  handoff (default; issue 5's "admit + produce + ack against the embedded
#      broker"): the edge (one event loop) and the embedded broker in one
#      `flashgate dev -ingest.workers 0` on CPU 0; a separate `flashgate
#      ingest` and the dev PostgreSQL on CPU 1, beside the load generator.
#      Ingest is paused (SIGSTOP) for all of (a) and (b), and resumed at the
#      end, when the script waits for every accepted order to be in
#      PostgreSQL and prints how long that took. Running, ingest and
#      PostgreSQL took half of CPU 1 from the load generator (autogroups make
#      nice useless), which then left CPU 0 20% idle; and PostgreSQL's work
#      after a catch-up (autovacuum, checkpoints) delayed the open-loop
#      generator, which kept CPU 1 96-98% busy at 25K/s, by milliseconds.
#  stack: the whole dev stack (edge, broker, ingest, PostgreSQL) on CPU 0:
#      what one core does for everything. Ingest runs throughout, and the
#      script waits after each edge run until it has caught up.
#
#  (a) closed loop, maximum throughput: wrk -t1 -c64 with the POST /v1/orders
#      requests of bench/http.sh (100K rotating users, prebuilt in wrk's
#      init), alternating edge and nginx, ROUNDS runs of SECS each; medians of
#      202s per second and the edge/nginx ratio.
#  (b) open loop at half the edge's measured maximum: tools/openloop for SECS
#      (after a 2 s warm-up), OPEN_ROUNDS runs (default 5) alternating edge
#      and nginx (the reference, at the same rate); latency from each
#      request's intended send time (p50/p99/p99.9) and the responses other
#      than 202. tools/stallwatch runs beside each run and counts host stalls:
#      times a CPU did not run at all for 20 ms or more (this VM's host takes
#      a vCPU away for ~100 ms a few times a minute, idle or not; one such
#      stall in a run puts its p99 in the tens of milliseconds, nginx's as
#      the edge's). The p99 check is the median over the runs free of host
#      stalls; the median over all runs is printed beside it.
#
# Then the issue's two goals as PASS/FAIL lines: edge >= 0.5x nginx, and p99 <
# 5 ms at half the edge's maximum (INCONCLUSIVE when no run was free of host
# stalls). They do not fail the script: this machine is shared and single
# runs vary by +-15%.
#
#   bash bench/e2e.sh [seconds per run, default 10] [rounds, default 3]
#   OPEN_ROUNDS=9 bash bench/e2e.sh         # more open-loop runs (default 5)
#   LAYOUT=stack bash bench/e2e.sh          # everything on CPU 0
#   PROFILE=edge.pprof bash bench/e2e.sh    # also a CPU profile of flashgate dev during (b)
#   EDGE_ARGS='-edge.produceLinger 2ms' bash bench/e2e.sh   # extra flags for flashgate dev
#   EDGE_ARGS='-kafka.syncWrites=false' bash bench/e2e.sh   # broker log in the page cache, as Kafka's default
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}
OPEN_ROUNDS=${OPEN_ROUNDS:-5}
CONNS=64
USERS=100000
PROFILE=${PROFILE:-}
LAYOUT=${LAYOUT:-handoff}
case $LAYOUT in handoff|stack) ;; *) echo "e2e.sh: LAYOUT must be handoff or stack, not $LAYOUT" >&2; exit 2 ;; esac
read -ra EXTRA <<<"${EDGE_ARGS:-}"

. bench/lib.sh
need_load_tools bench/e2e.sh
make_work
EDGE_PORT=$(port); NGINX_PORT=$(port); ADMIN_PORT=$(port); KAFKA_PORT=$(port)
start_nginx "$NGINX_PORT"

# flashgate dev on CPU 0 (its child PostgreSQL inherits the pinning), with
# the Kafka hand-off and one event loop; wrk and openloop come from one IP,
# so the per-IP limit is off (the per-user limits stay: 100K users are each
# far below theirs).
make -s build
go build -o "$work/openloop" ./tools/openloop
go build -o "$work/stallwatch" ./tools/stallwatch
INGEST_ARGS=(); [ "$LAYOUT" = handoff ] && INGEST_ARGS=(-ingest.workers 0)
taskset -c 0 ./bin/flashgate dev --data-dir "$work/dev" --edge-addr "127.0.0.1:$EDGE_PORT" \
  --admin-addr "127.0.0.1:$ADMIN_PORT" --kafka-addr "127.0.0.1:$KAFKA_PORT" -edge.loops 1 -log.level error \
  -edge.ratePerIP 0 "${INGEST_ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"} > "$work/dev.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do [ -s "$work/dev/dev.env" ] && curl -sf "http://127.0.0.1:$EDGE_PORT/healthz" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$EDGE_PORT/healthz" >/dev/null || { echo "the dev stack did not start:"; cat "$work/dev.log"; exit 1; }
EDGE_METRICS="http://127.0.0.1:$ADMIN_PORT/metrics"
INGEST_METRICS=$EDGE_METRICS
INGEST_PID=
if [ "$LAYOUT" = handoff ]; then
  # PostgreSQL to CPU 1 (new backends fork from the postmaster and follow
  # it), and ingest as its own process there.
  pm=$(head -1 "$work/dev/pg/postmaster.pid")
  for p in "$pm" $(pgrep -P "$pm"); do taskset -pc 1 "$p" >/dev/null; done
  INGEST_ADMIN=$(port)
  ( . "$work/dev/dev.env"
    exec taskset -c 1 ./bin/flashgate ingest --kafka-brokers "$KAFKA_BROKERS" --database-url "$DATABASE_URL" \
      -ingest.adminAddr "127.0.0.1:$INGEST_ADMIN" -log.level error ) > "$work/ingest.log" 2>&1 &
  INGEST_PID=$!; pids+=($!)
  INGEST_METRICS="http://127.0.0.1:$INGEST_ADMIN/metrics"
  for _ in $(seq 100); do curl -sf "$INGEST_METRICS" >/dev/null && break; sleep 0.2; done
  curl -sf "$INGEST_METRICS" >/dev/null || { echo "flashgate ingest did not start:"; cat "$work/ingest.log"; exit 1; }
fi

curl -sf -X PUT "http://127.0.0.1:$ADMIN_PORT/admin/v1/skus/BENCH" -d '{"stock": 1000000000000, "price_cents": 100, "per_user_limit": 0}' >/dev/null
# One order through the real path before measuring: a 202 means Kafka acked.
code=$(curl -s -o "$work/first.json" -w '%{http_code}' -X POST "http://127.0.0.1:$EDGE_PORT/v1/orders" \
  -H 'X-User-ID: warmup' -d '{"sku":"BENCH","qty":1}')
[ "$code" = 202 ] || { echo "first order got $code:"; cat "$work/first.json"; echo; cat "$work/dev.log"; exit 1; }

# The requests of bench/http.sh's orders mode, built once in init.
write_orders_lua "$USERS"

# closed PORT: prints "2xx_per_s p99_us non2xx" for one wrk run. The edge may
# shed (503) when Kafka falls behind: only 2xx count as throughput.
closed() {
  local out
  out=$(taskset -c 1 wrk -t1 -c$CONNS -d"${SECS}s" --latency -s "$work/orders.lua" "http://127.0.0.1:$1/v1/orders")
  awk -v secs="$SECS" '
    / requests in / {n=$1; d=$4; sub(/s,?$/,"",d); if (d+0 == 0) d=secs}
    /Non-2xx or 3xx responses:/ {bad=$NF}
    $1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); p=v} else if (v ~ /ms$/) {sub(/ms/,"",v); p=v*1000} else if (v ~ /s$/) {sub(/s/,"",v); p=v*1000000}}
    END {printf "%.0f %.0f %d\n", (n-bad)/d, p, bad}' <<<"$out"
}

# settle: waits until ingest has written every order the edge accepted (at
# most 300 s) and prints the seconds: in the stack layout after each edge run,
# so that no run pays for the previous one's backlog; in the handoff layout
# once, at the end.
metric() { curl -sf "$1" | awk -v m="$2" '$1==m {print $2}'; }
pause_ingest() { [ -z "$INGEST_PID" ] || kill -STOP "$INGEST_PID"; }
resume_ingest() { [ -z "$INGEST_PID" ] || kill -CONT "$INGEST_PID"; }
settle() {
  local t0 a i
  t0=$(date +%s.%N)
  for _ in $(seq 3000); do
    a=$(metric "$EDGE_METRICS" flashgate_edge_orders_accepted_total); i=$(metric "$INGEST_METRICS" flashgate_ingest_rows_total)
    if [ -n "$a" ] && [ -n "$i" ] && awk -v a="$a" -v i="$i" 'BEGIN {exit !(i >= a)}'; then
      awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.1f", t1-t0}'
      return
    fi
    sleep 0.1
  done
  echo "ingest did not catch up in 300 s: $i of $a accepted orders written" >&2
  echo "never"
}


echo "(a) closed loop: wrk -t1 -c$CONNS, POST /v1/orders from $USERS users, ${SECS}s per run"
printf "%-10s %-6s %14s %10s %10s %16s\n" run server "202s/s" "p99 µs" "non-2xx" "ingest lag s"
: > "$work/edge.closed"; : > "$work/nginx.closed"
settle >/dev/null
pause_ingest
for r in $(seq "$ROUNDS"); do
  for srv in edge nginx; do
    p=$EDGE_PORT; [ $srv = nginx ] && p=$NGINX_PORT
    res=$(closed "$p")
    lag=""; [ $srv = edge ] && [ "$LAYOUT" = stack ] && lag=$(settle)
    echo "$res" >> "$work/$srv.closed"
    printf "%-10s %-6s %14s %10s %10s %16s\n" "$r" "$srv" $res "$lag"
  done
done
if [ "$LAYOUT" = stack ]; then
  echo "(ingest lag: how long ingest took after the run to write the orders the edge had accepted)"
else
  echo "(flashgate ingest is paused until the end)"
fi
BATCHES=$(metric "$EDGE_METRICS" flashgate_edge_produce_batches_total)
ACCEPTED=$(metric "$EDGE_METRICS" flashgate_edge_orders_accepted_total)
awk -v a="$ACCEPTED" -v b="$BATCHES" 'BEGIN {if (b > 0) printf "(orders per Kafka produce batch in these runs: %.1f)\n", a/b}'

E_MAX=$(cut -d' ' -f1 "$work/edge.closed" | median)
N_MAX=$(cut -d' ' -f1 "$work/nginx.closed" | median)
E_P99=$(cut -d' ' -f2 "$work/edge.closed" | median)
N_P99=$(cut -d' ' -f2 "$work/nginx.closed" | median)
RATIO=$(awk -v a="$E_MAX" -v b="$N_MAX" 'BEGIN {printf "%.2f", (b > 0) ? a/b : 0}')

# open PORT RATE: runs openloop, keeps its JSON in $work/open.PORT.json.
RATE=$(awk -v m="$E_MAX" 'BEGIN {printf "%.0f", m/2}')
[ "$RATE" -ge 1 ] || { echo "the edge answered no 202 in the closed-loop runs; see $work/dev.log:"; tail -20 "$work/dev.log"; exit 1; }
# The host stalls of both CPUs are watched over the warm-up and the measured
# window (a stall at the end of the warm-up delays measured requests).
open_run() {
  "$work/stallwatch" -cpus 0,1 -duration "$((SECS + 2))s" -json > "$work/stalls.$1.json" &
  local sw=$!
  taskset -c 1 "$work/openloop" -url "127.0.0.1:$1" -rate "$2" -duration "${SECS}s" -warmup 2s -conns $CONNS \
    -users $USERS -sku BENCH -qty 1 -quiet -json > "$work/open.$1.json" 2> "$work/open.$1.txt"
  wait "$sw"
}
summary() { # PORT: "p50 p99 p99.9 (µs) non202 unsent achieved/s host-stalls longest-stall-ms"
  python3 - "$work/open.$1.json" "$work/stalls.$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
st = json.load(open(sys.argv[2]))
lat = r["latency"]["all"]
non202 = sum(n for code, n in r["status"].items() if code != "202") + r["errors"] + r["unanswered"]
stalls = sum(c["over_20ms"] for c in st["cpus"])
longest = max(c["max_late_ms"] for c in st["cpus"])
print("%.0f %.0f %.0f %d %d %.0f %d %.0f" % (lat["p50_us"], lat["p99_us"], lat["p999_us"], non202, r["unsent"], r["responses_per_s"], stalls, longest))
PY
}
# clean_runs FILE: the runs in FILE free of host stalls. clean_median FILE:
# their median p99; empty when there were none.
clean_runs() { awk '$7 == 0' "$1"; }
clean_median() {
  local v; v=$(clean_runs "$1" | cut -d' ' -f2)
  [ -z "$v" ] || median <<<"$v"
}

echo
echo "(b) open loop at $RATE req/s (half the edge's median maximum): tools/openloop, $CONNS connections, ${SECS}s after a 2s warm-up"
printf "%-10s %-6s %10s %10s %10s %10s %8s %12s %14s\n" run server "p50 µs" "p99 µs" "p99.9 µs" "non-202" unsent "answered/s" "host stalls"
: > "$work/edge.open"; : > "$work/nginx.open"
for r in $(seq "$OPEN_ROUNDS"); do
  for srv in edge nginx; do
    p=$EDGE_PORT; [ $srv = nginx ] && p=$NGINX_PORT
    prof_pid=
    if [ -n "$PROFILE" ] && [ $srv = edge ] && [ "$r" = 1 ]; then
      # The admin plane's CPU profile of the whole dev process, over the measured part of the first run.
      (sleep 2; curl -sf -o "$PROFILE" "http://127.0.0.1:$ADMIN_PORT/debug/pprof/profile?seconds=$((SECS > 1 ? SECS - 1 : 1))") &
      prof_pid=$!
    fi
    open_run "$p" "$RATE"
    lag=""; [ $srv = edge ] && [ "$LAYOUT" = stack ] && lag=$(settle)
    [ -z "$prof_pid" ] || wait "$prof_pid" || echo "profile failed" >&2
    summary "$p" >> "$work/$srv.open"
    read -r -a f < <(tail -1 "$work/$srv.open")
    stalls="none"; [ "${f[6]}" -gt 0 ] && stalls="${f[6]}, ${f[7]} ms"
    printf "%-10s %-6s %10s %10s %10s %10s %8s %12s %14s\n" "$r" $srv "${f[@]:0:6}" "$stalls"
    if [ $srv = edge ] && [ "$(tail -1 "$work/edge.open" | cut -d' ' -f4)" -gt 0 ]; then
      echo "edge responses other than 202:"; python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(" status", r["status"], " errors", r.get("error_kinds"), r.get("first_errors"))' "$work/open.$p.json"
    fi
  done
done
echo "(host stalls: times the host stopped CPU 0 or 1 for 20 ms or more during the run, and the longest)"
O_P99_ALL=$(cut -d' ' -f2 "$work/edge.open" | median)
O_BAD=$(cut -d' ' -f4 "$work/edge.open" | awk '{n+=$1} END {print n+0}')
NO_P99_ALL=$(cut -d' ' -f2 "$work/nginx.open" | median)
O_P99=$(clean_median "$work/edge.open"); NO_P99=$(clean_median "$work/nginx.open")
O_CLEAN=$(clean_runs "$work/edge.open" | wc -l); NO_CLEAN=$(clean_runs "$work/nginx.open" | wc -l)
echo "(medians of all runs: edge p99 $O_P99_ALL µs, nginx p99 $NO_P99_ALL µs; of the runs free of host stalls: edge ${O_P99:--} µs ($O_CLEAN of $OPEN_ROUNDS runs), nginx ${NO_P99:--} µs ($NO_CLEAN of $OPEN_ROUNDS)"
echo " responses other than 202 from the edge in all runs: $O_BAD)"
if [ "$LAYOUT" = handoff ]; then
  resume_ingest
  took=$(settle)
  if [ "$took" = never ]; then
    echo "(flashgate ingest resumed, but did not write every order the edge accepted in 300 s)"
  else
    echo "(flashgate ingest resumed: it wrote every order the edge accepted in these runs in ${took}s)"
  fi
fi

echo
printf "%-28s %14s %14s %8s %12s %12s\n" "closed loop (medians)" "edge 202s/s" "nginx 202s/s" ratio "edge p99µs" "nginx p99µs"
printf "%-28s %14.0f %14.0f %7sx %12s %12s\n" "POST /v1/orders" "$E_MAX" "$N_MAX" "$RATIO" "$E_P99" "$N_P99"
echo "(medians of $ROUNDS runs of ${SECS}s; wrk -t1 -c$CONNS on CPU 1; nginx on CPU 0; the edge (one event loop) answers 202 after the"
echo " embedded Kafka's ack (a sync per batch unless -kafka.syncWrites=false below);"
if [ "$LAYOUT" = handoff ]; then
  echo " layout handoff: edge and broker on CPU 0; ingest and PostgreSQL on CPU 1, ingest paused until every run is done;"
else
  echo " layout stack: edge, broker, ingest and PostgreSQL all on CPU 0;"
fi
echo " open-loop latency is from each request's intended send time, so queueing behind a slow response counts)"
[ ${#EXTRA[@]} -gt 0 ] && echo " flashgate dev with: ${EXTRA[*]}"
echo
verdict() { if [ "$1" = 1 ]; then echo PASS; else echo FAIL; fi; }
V_RATIO=$(verdict "$(awk -v r="$RATIO" 'BEGIN {print (r >= 0.5)}')")
ms() { if [ -n "$1" ]; then awk -v p="$1" 'BEGIN {printf "%.2f", p/1000}'; else echo "-"; fi; }
if [ -n "$O_P99" ]; then
  V_P99=$(verdict "$(awk -v p="$O_P99" 'BEGIN {print (p < 5000)}')")
else
  V_P99=INCONCLUSIVE # every run had a host stall: its p99 is the host's
fi
P99_MS=$(ms "$O_P99"); NP99_MS=$(ms "$NO_P99")
echo "check: edge >= 0.5x nginx (closed loop, 202s/s): ${RATIO}x $V_RATIO"
echo "check: p99 < 5 ms at half the edge's maximum ($RATE req/s, median of the $O_CLEAN of $OPEN_ROUNDS runs free of host stalls): $P99_MS ms $V_P99 (nginx at the same rate: $NP99_MS ms; medians of all runs: edge $(ms "$O_P99_ALL") ms, nginx $(ms "$NO_P99_ALL") ms)"
MODE="synced broker"; [[ " ${EXTRA[*]:-} " == *"syncWrites=false"* ]] && MODE="page-cache broker"
[ "$LAYOUT" = stack ] && MODE="$MODE, whole stack on one core"
table_row "orders end to end 202s/s ($MODE)" "$(printf %.0f "$E_MAX")" "nginx return 202" "$(printf %.0f "$N_MAX")" "${RATIO}x" ">= 0.5x" "$V_RATIO"
table_row "orders p99 ms at $RATE/s open loop ($MODE)" "$P99_MS" "nginx p99 ms, same rate" "$NP99_MS" "-" "< 5 ms" "$V_P99"
[ -n "$PROFILE" ] && echo "CPU profile of flashgate dev during (b)'s first edge run: $PROFILE (go tool pprof -top bin/flashgate $PROFILE)"
exit 0
