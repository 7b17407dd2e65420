#!/usr/bin/env bash
# 100,000 idle `messageReceived` subscriptions on one machine whose hard RLIMIT_NOFILE is 20,000
# per process (ours: a container that cannot raise it): six chatapp instances over one Redis and
# one data directory, each driven by its own `loadtest` (16,667 connections each, held open
# together with --idle-hold). Prints each tool's figures and the largest sample of the servers'
# open descriptors and summed RSS. Needs redis-server and a release build:
#   cargo build --release --workspace && bench/idle_100k.sh
# Settings: N (instances, 6), PER (connections each, 16667), HOLD (seconds, 60), BIN, LOADTEST.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-6}; PER=${PER:-16667}; HOLD=${HOLD:-60}
BIN=${BIN:-$PWD/target/release/chatapp}; LOADTEST=${LOADTEST:-$PWD/target/release/loadtest}
OUT=$(mktemp -d); DATA=$(mktemp -d); REDIS_PORT=${REDIS_PORT:-6391}
redis-server --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes --logfile "$OUT/redis.log"
PIDS=()
for i in $(seq 0 $((N - 1))); do
  env -i PATH="$PATH" BIND_ADDRESS=127.0.0.1 PORT=$((5400 + i)) DATA_DIR="$DATA" RUST_LOG=warn \
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT" JWT_SECRET=benchmark-secret-benchmark-secret-benchmark \
    RATE_LIMIT_AUTH_PER_ADDRESS=100000000 RATE_LIMIT_AUTH_PER_PHONE=100000000 \
    RATE_LIMIT_MESSAGES_PER_USER=100000000 WS_MAX_CONNECTIONS_PER_USER=100000 \
    BCRYPT_MAX_QUEUE=100000000 BCRYPT_COST=4 "$BIN" > "$OUT/server$i.log" 2>&1 &
  PIDS+=($!)
done
sleep 2
TOOLS=()
for i in $(seq 0 $((N - 1))); do
  "$LOADTEST" --server-url "http://127.0.0.1:$((5400 + i))" --server-pid "${PIDS[$i]}" \
    --scenarios idle --idle "$PER" --idle-hold "$HOLD" > "$OUT/loadtest$i.log" 2>&1 &
  TOOLS+=($!)
done
started=$(date +%s)
while kill -0 "${TOOLS[@]}" 2>/dev/null; do
  fds=0; rss=0
  for p in "${PIDS[@]}"; do
    fds=$((fds + $(ls "/proc/$p/fd" | wc -l)))
    rss=$((rss + $(awk '/VmRSS/ {print $2}' "/proc/$p/status")))
  done
  echo "t=$(($(date +%s) - started))s server_fds=$fds server_rss_kib=$rss" >> "$OUT/samples.log"
  sleep 2
done
kill "${PIDS[@]}"; redis-cli -p "$REDIS_PORT" shutdown nosave > /dev/null 2>&1 || true
grep -h -E "^idle:|^Error" "$OUT"/loadtest*.log
sort -t= -k3 -n "$OUT/samples.log" | tail -1
echo "logs: $OUT"
