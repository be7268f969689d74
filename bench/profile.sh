#!/usr/bin/env bash
# make profile: replays a flash-sale trace against `flashgate dev` while
# capturing CPU, heap, allocation, mutex, block and goroutine profiles from
# its admin plane (/debug/pprof; in dev the edge, ingest and the lifecycle
# workers are one process, so one set of profiles covers all of them), then
# prints the commands that open them.
#
#   bash bench/profile.sh [trace] [cpu seconds, default 15]
#
# Without a trace it makes the default 1M-order flash sale once
# (var/profile/sale-1m.trace.zst) and replays it. Profiles land in
# var/profile/<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

bin=bin/flashgate
[ -x "$bin" ] || { echo "profile: build first (make build)" >&2; exit 1; }
need curl || { echo "profile: needs curl" >&2; exit 1; }

trace=${1:-}
secs=${2:-15}
mkdir -p var/profile
if [ -z "$trace" ]; then
  trace=var/profile/sale-1m.trace.zst
  [ -f "$trace" ] || "$bin" tracegen -tracegen.out "$trace"
fi
out=var/profile/$(date -u +%Y%m%dT%H%M%S)
mkdir -p "$out"

make_work
edge_port=$(port); admin_port=$(port); kafka_port=$(port)
# Mutex and block profiling on at a low sampling rate: they cost little and
# show what waits.
"$bin" dev -data-dir "$work/dev" -edge-addr 127.0.0.1:$edge_port -admin-addr 127.0.0.1:$admin_port \
  -kafka-addr 127.0.0.1:$kafka_port -pprof.mutexFraction 5 -pprof.blockRate 10000 \
  ${DEV_ARGS:-} >"$out/dev.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 240); do [ -f "$work/dev/dev.env" ] && break; sleep 0.5; done
[ -f "$work/dev/dev.env" ] || { echo "profile: flashgate dev did not start; see $out/dev.log" >&2; tail -20 "$out/dev.log" >&2; exit 1; }
admin=http://127.0.0.1:$admin_port

"$bin" replay -replay.env "$work/dev/dev.env" -replay.trace "$trace" -replay.out "$out/replay" -replay.verify \
  ${REPLAY_ARGS:-} >"$out/replay.txt" 2>"$out/replay.log" &
replay_pid=$!

# Profile while the sale runs: the CPU profile starts with the replay (the
# thundering herd is in its first seconds); the others are taken at its end.
sleep 1
curl -fsS -o "$out/cpu.pprof" "$admin/debug/pprof/profile?seconds=$secs" &
cpu_pid=$!
curl -fsS -o "$out/trace.out" "$admin/debug/pprof/trace?seconds=2" || true
wait "$cpu_pid" || echo "profile: the CPU profile failed" >&2
for p in heap allocs mutex block goroutine; do
  curl -fsS -o "$out/$p.pprof" "$admin/debug/pprof/$p" || echo "profile: $p failed" >&2
done
status=0
wait "$replay_pid" || status=$?
cat "$out/replay.txt"
cp "$bin" "$out/flashgate"   # the binary the profiles belong to

cat <<EOF

profiles in $out (replay exit status $status; its log: $out/replay.log)
  go tool pprof -top -nodecount 25 $out/flashgate $out/cpu.pprof     # where the CPU went
  go tool pprof -http :0 $out/flashgate $out/cpu.pprof               # web UI; View > Flame Graph
  go tool pprof -http :0 -sample_index alloc_space $out/flashgate $out/allocs.pprof   # who allocates
  go tool pprof -http :0 $out/flashgate $out/heap.pprof              # live heap at the end
  go tool pprof -http :0 $out/flashgate $out/mutex.pprof             # lock contention
  go tool pprof -http :0 $out/flashgate $out/block.pprof             # where goroutines waited
  go tool trace $out/trace.out                                       # 2 s execution trace at the sale's start
EOF
exit "$status"
