#!/usr/bin/env bash
# Usage: STEPS="3 22" growth.sh GANCHO_BIN GANCHO_BENCH_BIN OUTDIR
# One daemon (default config, no rules): posts grouped Mailjet events for each step's seconds
# (gancho-bench --attach), waits for the indexer, and records the events stored, RSS, peak RSS,
# the size of the log and index databases, RSS after IDLE more seconds (default 30) without
# load, and RSS IDLE seconds after a restart on the same store (what the store itself costs,
# without what the load left in the allocator). Traffic goes to 127.0.0.1 only.
# Give equal steps (STEPS="4 4 4 4 4 4 4 4 4 4": about 700,000 events each, to 7 M) to compare
# the store's sizes: the RSS after a load depends on the load as well (a 40 s step leaves more
# in the allocator than a 2 s one), and single readings vary by ±5-10 MB, so compare the median
# of a few steps at each size. RESTARTS=6 reads six restarts a step (see below).
set -u
BIN=$1; BENCH=$2; OUT=$3
rm -rf "$OUT"; mkdir -p "$OUT/rules"
cat > "$OUT/g.toml" <<CFG
listen = "127.0.0.1:0"
data_dir = "$OUT/data"
rules_dir = "$OUT/rules"
[store]
# The bench's events are a year old: the hourly prune (a minute after the start) would delete
# them while the script runs.
retention = "0"
[sources.mailjet]
kind = "mailjet"
basic_auth = { user = "bench", password = "bench-password" }
CFG
start() {
  : > "$OUT/log"
  "$BIN" --config "$OUT/g.toml" run 2>> "$OUT/log" &
  PID=$!
  for i in $(seq 1 300); do grep -q 'gancho is ready' "$OUT/log" && break; sleep 0.2; done
  ADDR=$(grep -o 'listen=[^ ]*' "$OUT/log" | tail -1 | cut -d= -f2)
}
start
status() { "$BIN" --config "$OUT/g.toml" status --json; }
wait_idx() { for i in $(seq 1 600); do S=$(status); D=$(echo "$S" | grep -o '"durable":[0-9]*' | cut -d: -f2); I=$(echo "$S" | grep -o '"indexed":[0-9]*' | cut -d: -f2); [ "$D" = "$I" ] && break; sleep 1; done; echo "$D"; }
echo "step events rss_mb peak_mb log_mb indexes_mb idle_rss_mb restarted_rss_mb" > "$OUT/rss.txt"

for secs in ${STEPS:-3 22}; do
  "$BENCH" --attach "$ADDR" --group 100 --duration ${secs}s --warmup 0s > "$OUT/bench-$secs.log" 2>&1
  N=$(wait_idx); sleep 3
  RSS=$(grep VmRSS /proc/$PID/status | awk '{print $2/1024}'); HWM=$(grep VmHWM /proc/$PID/status | awk '{print $2/1024}')
  L=$(du -sm "$OUT/data/store/log" | cut -f1); X=$(du -sm "$OUT/data/store/indexes" | cut -f1)
  # And once the load's transients are gone (merges done, the allocator settled): what the
  # store's size itself costs.
  sleep ${IDLE:-30}
  IDLE_RSS=$(grep VmRSS /proc/$PID/status | awk '{print $2/1024}')
  # And what the store costs a daemon that did not take the load: restarted on it, idle.
  kill -TERM $PID; wait $PID
  start; sleep ${IDLE:-30}
  RESTARTED_RSS=$(grep VmRSS /proc/$PID/status | awk '{print $2/1024}')
  # A restart's reading varies by several MB from one start to the next (which thread's
  # allocator keeps what the start freed): RESTARTS=N restarts N times, each read after
  # RESTART_IDLE seconds, and lists every reading (compare their medians).
  for r in $(seq 2 ${RESTARTS:-1}); do
    kill -TERM $PID; wait $PID
    start; sleep ${RESTART_IDLE:-5}
    RESTARTED_RSS="$RESTARTED_RSS,$(grep VmRSS /proc/$PID/status | awk '{print $2/1024}')"
  done
  echo "$secs $N $RSS $HWM $L $X $IDLE_RSS $RESTARTED_RSS" >> "$OUT/rss.txt"
done
kill -TERM $PID; wait $PID
cat "$OUT/rss.txt"
