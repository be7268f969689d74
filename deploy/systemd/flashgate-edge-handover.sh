#!/usr/bin/env bash
# Replaces the running edge on this host without failing a request: a new
# process, started beside it with -edge.handoverFrom, drains it, loads its
# stock, serves on the same port (SO_REUSEPORT) and then shuts it down.
# Use with two instances of a templated unit, or as a deploy step:
#
#   flashgate-edge-handover.sh /usr/local/bin/flashgate.new
#
# The new process uses the other admin port and another node id (leases of
# the old node id are returned by the old process when it stops).
set -euo pipefail
new_binary=${1:?usage: $0 NEW_BINARY}
. /etc/flashgate/flashgate.env
old_admin=http://127.0.0.1:8081
exec "$new_binary" edge \
    --edge-addr 0.0.0.0:8080 --admin-addr 127.0.0.1:8083 \
    --kafka-brokers "$KAFKA_BROKERS" --database-url "$DATABASE_URL" --database-read-url "$DATABASE_READ_URL" \
    --auth jwt -auth.eddsaPublicKey /etc/flashgate/jwt-ed25519.pub --trust-proxy 10.0.0.0/8 \
    -edge.nodeID "$((EDGE_NODE_ID + 32))" -edge.leaseTTL 30s \
    -edge.handoverFrom "$old_admin"
