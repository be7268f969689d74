#!/usr/bin/env bash
# The three-edge example of the README, measured: `flashgate dev` (PostgreSQL,
# broker, ingest, edge 1) plus edges 2 and 3 and a second ingest worker, all
# with stock leases, on this machine; a sale replayed across the edges with
# user affinity and verified. Prints the replay's outcomes and, per edge, how
# its orders were answered (accepted, sold out, waiting for a lease grant)
# and its lease traffic.
#
#   bash bench/fleet.sh [trace]     (default: 100K orders, 20K units, 1K SKUs)
#
# Env: ROUNDS (default 1), CONNS (replay connections, default 1000),
# SPEED (default 1), EDGE_ARGS (extra flags for every edge), KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

bin=bin/flashgate
[ -x "$bin" ] || { echo "fleet.sh: build first (make build)" >&2; exit 1; }
need python3 || { echo "fleet.sh: needs python3" >&2; exit 1; }
need curl || { echo "fleet.sh: needs curl" >&2; exit 1; }
mkdir -p var/bench
trace=${1:-var/bench/sale-100k.trace.zst}
[ -f "$trace" ] || "$bin" tracegen -tracegen.out "$trace" -tracegen.orders 100000 -tracegen.stock 20000 >&2
out=var/bench/fleet-$(date -u +%Y%m%dT%H%M%S)
mkdir -p "$out"
make_work

lease="-edge.leaseTTL 10s ${EDGE_ARGS:-}"

round() {
  local r=$1 dir="$out/round-$1" status=0
  mkdir -p "$dir"
  local p1 a1 p2 a2 p3 a3
  p1=$(port); a1=$(port); p2=$(port); a2=$(port); p3=$(port); a3=$(port)
  # shellcheck disable=SC2086
  "$bin" dev -data-dir "$work/dev-$r" -edge-addr 127.0.0.1:$p1 -admin-addr 127.0.0.1:$a1 \
    -kafka-addr 127.0.0.1:$(port) -edge.nodeID 1 $lease >"$dir/dev.log" 2>&1 &
  local dev=$!
  pids+=($dev)
  for _ in $(seq 1 240); do [ -s "$work/dev-$r/dev.env" ] && break; sleep 0.5; done
  [ -s "$work/dev-$r/dev.env" ] || { echo "fleet.sh: flashgate dev did not start:" >&2; tail -30 "$dir/dev.log" >&2; exit 1; }
  # shellcheck disable=SC1090
  . "$work/dev-$r/dev.env"
  local others=()
  for n in 2 3; do
    local p a
    if [ $n = 2 ]; then p=$p2 a=$a2; else p=$p3 a=$a3; fi
    # shellcheck disable=SC2086
    "$bin" edge --kafka-brokers "$KAFKA_BROKERS" --database-url "$DATABASE_URL" \
      --edge-addr 127.0.0.1:$p --admin-addr 127.0.0.1:$a -edge.nodeID $n $lease >"$dir/edge-$n.log" 2>&1 &
    others+=($!)
  done
  "$bin" ingest --kafka-brokers "$KAFKA_BROKERS" --database-url "$DATABASE_URL" >"$dir/ingest-2.log" 2>&1 &
  others+=($!)
  pids+=("${others[@]}")
  for a in $a2 $a3; do
    for _ in $(seq 1 120); do curl -fs "http://127.0.0.1:$a/admin/v1/status" >/dev/null && break; sleep 0.5; done
  done
  "$bin" replay -replay.env "$work/dev-$r/dev.env" -replay.trace "$trace" -replay.out "$dir/replay" \
    -replay.edge 127.0.0.1:$p1,127.0.0.1:$p2,127.0.0.1:$p3 -replay.settle 2s -replay.verify \
    -replay.conns "${CONNS:-1000}" -replay.speed "${SPEED:-1}" >"$dir/replay.txt" 2>"$dir/replay.log" || status=$?
  for n in 1 2 3; do
    local a
    case $n in 1) a=$a1 ;; 2) a=$a2 ;; 3) a=$a3 ;; esac
    curl -fs "http://127.0.0.1:$a/metrics" >"$dir/metrics-$n.txt" || true
  done
  for p in "${others[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${others[@]}"; do wait "$p" 2>/dev/null || true; done
  kill -INT $dev; wait $dev 2>/dev/null || true
  python3 - "$dir" <<'PY'
import json, re, sys
d = sys.argv[1]
run = json.load(open(d + "/replay/run.json"))
t = run["totals"]
names = run["outcomes"]
total = sum(t["outcomes"])
print("replay: %d responses, %.0f accepted orders/s, p99 %.1f ms" % (total, t["accepted_per_s"], t["latency"]["all"]["p99_us"] / 1000))
for n, c in zip(names, t["outcomes"]):
    if c:
        print("  %-24s %8d  %5.1f%%" % (n, c, 100.0 * c / total))
checks = run.get("checks") or []
passed = sum(1 for c in checks if c["pass"])
print("checks: %d/%d PASS" % (passed, len(checks)))
out = dict(zip(names, t["outcomes"]))
with open(d + "/../figures.jsonl", "a") as f:
    f.write(json.dumps({"accepted_per_s": t["accepted_per_s"], "p99_ms": t["latency"]["all"]["p99_us"] / 1000,
                        "unavailable": out.get("unavailable", 0) / total, "pass": passed == len(checks) and passed > 0}) + "\n")
for c in checks:
    if not c["pass"]:
        print("  FAIL", c.get("name"), c.get("detail", ""))
want = [("accepted", "orders_accepted_total"), ("sold-out", 'orders_rejected_total{reason="sold-out"}'),
        ("lease-wait", 'orders_rejected_total{reason="lease-wait"}'), ("grants", "lease_grants_total"),
        ("granted", 'lease_units_total{way="granted"}'), ("returned", 'lease_units_total{way="returned"}'),
        ("parked", "orders_parked_total")]
print("%-6s" % "edge" + "".join("%12s" % h for h, _ in want))
for n in (1, 2, 3):
    try:
        text = open("%s/metrics-%d.txt" % (d, n)).read()
    except OSError:
        continue
    row = []
    for _, w in want:
        m = re.search(r"^flashgate_edge_" + re.escape(w) + r" (\S+)$", text, re.M)
        row.append("%12s" % (m.group(1) if m else "-"))
    print("%-6s" % n + "".join(row))
PY
  return $status
}

failed=0
for r in $(seq 1 "${ROUNDS:-1}"); do
  echo "== round $r"
  round "$r" || failed=1
done
python3 - "$out/figures.jsonl" <<'PY'
import json, os, statistics, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
med = lambda k: statistics.median(r[k] for r in rs)
ok = all(r["pass"] for r in rs)
print("\nthree edges, %d round(s), medians: %.0f accepted orders/s, p99 %.1f s, %.1f%% 503, invariants %s"
      % (len(rs), med("accepted_per_s"), med("p99_ms") / 1000, 100 * med("unavailable"), "PASS" if ok else "FAIL"))
table = os.environ.get("BENCH_TABLE")
if table:
    with open(table, "a") as f:
        f.write("three edges (leases), 100K-order sale: 503 share of responses|%.1f%%|-|-|-|-|-\n" % (100 * med("unavailable")))
        f.write("three edges (leases), 100K-order sale: accepted orders/s|%.0f|-|-|-|-|-\n" % med("accepted_per_s"))
        f.write("three edges (leases), 100K-order sale: invariants verified|%s|-|-|-|PASS|%s\n" % ("PASS" if ok else "FAIL", "PASS" if ok else "FAIL"))
PY
[ "${KEEP:-0}" = 1 ] || rm -f "$out"/*/replay/results.zst
echo "logs and reports: $out"
exit $failed
