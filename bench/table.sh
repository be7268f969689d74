#!/usr/bin/env bash
# Prints the rows the benchmark scripts appended to a table file (see
# table_row in bench/lib.sh) as one aligned table.
#   bash bench/table.sh var/bench/table.txt
set -euo pipefail
[ -s "$1" ] || { echo "no benchmark rows in $1" >&2; exit 0; }
echo
echo "== make bench: flashgate against its peers, measured in the same run on this machine =="
awk -F'|' 'BEGIN { printf "%-44s %14s  %-22s %14s %10s  %-16s %s\n", "figure", "flashgate", "peer", "peer value", "ratio", "goal", "verdict" }
  { printf "%-44s %14s  %-22s %14s %10s  %-16s %s\n", $1, $2, $3, $4, $5, $6, $7 }' "$1"
