#!/usr/bin/env bash
# Usage: wrk-rss.sh GANCHO_BIN RULES_DIR OUTDIR [SECONDS] [CACHE_MB]
# One daemon on its defaults (cache_mb as given, else its own) with the rules of RULES_DIR, and
# wrk posting single Mailjet events (scripts/mailjet.lua: a sent, an open and a click per
# message) for SECONDS (default 20) over 64 connections; prints wrk's figures, the daemon's peak
# RSS (VmHWM) and its RSS after. Traffic goes to 127.0.0.1 only.
set -u
BIN=$1; RULES=$2; OUT=$3; SECS=${4:-20}; CACHE=${5:-}
HERE=$(cd "$(dirname "$0")" && pwd)
rm -rf "$OUT"; mkdir -p "$OUT"
{
  echo 'listen = "127.0.0.1:0"'
  echo "data_dir = \"$OUT/data\""
  echo "rules_dir = \"$RULES\""
  if [ -n "$CACHE" ]; then printf '[store]\ncache_mb = %s\n' "$CACHE"; fi
  echo '[sources.mailjet]'
  echo 'kind = "mailjet"'
  echo 'basic_auth = { user = "bench", password = "bench-password" }'
} > "$OUT/g.toml"
"$BIN" --config "$OUT/g.toml" run 2> "$OUT/log" &
PID=$!
for i in $(seq 1 50); do grep -q 'gancho is ready' "$OUT/log" && break; sleep 0.2; done
ADDR=$(grep -o 'listen=[^ ]*' "$OUT/log" | head -1 | cut -d= -f2)
echo "RSS after start: $(grep VmRSS /proc/$PID/status | awk '{print $2/1024}') MB"
wrk -t2 -c64 -d"${SECS}s" -s "$HERE/mailjet.lua" "http://$ADDR" | grep -E "Requests/sec|Latency|requests in|Non-2xx"
sleep 5
echo "peak RSS: $(grep VmHWM /proc/$PID/status | awk '{print $2/1024}') MB; RSS 5 s after: $(grep VmRSS /proc/$PID/status | awk '{print $2/1024}') MB"
kill -TERM $PID; wait $PID
