#!/usr/bin/env bash
# Idle RSS and wake-ups of a broker restarted on a data dir that holds
# TOPICS topics of 3 partitions, with the binary dropped from the page
# cache first (so the figure does not depend on how the file was cached).
# RSS is read 3 s after the restart's `listening` line; wake-ups are every
# thread's voluntary context switches over the 5 s after that.
# usage: bus/server/bench/idle_rss.sh BIN [TOPICS] (a release edgebus)
set -eu
B=$1; topics=${2:-0}; d=$(mktemp -d); port=$((20000 + RANDOM % 20000)); pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$d"; }
trap cleanup EXIT
export EDGEBUS_BROKER=127.0.0.1:$port EDGEBUS_CA=$d/data/tls/ca.pem
serve() {
  : > "$d/log"
  RUST_LOG=warn "$B" serve --data "$d/data" --listen "$EDGEBUS_BROKER" > "$d/log" 2>&1 < /dev/null & pid=$!
  for _ in $(seq 100); do grep -q listening "$d/log" && return; sleep 0.1; done
  echo "no listening line:" >&2; cat "$d/log" >&2; exit 1
}
serve
for i in $(seq "$topics"); do "$B" topic create "t$i" --partitions 3 > /dev/null; done
kill "$pid"; wait "$pid" 2>/dev/null || true
python3 -c 'import os, sys; os.posix_fadvise(os.open(sys.argv[1], os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)' "$B"
serve
sleep 3
rss=$(grep -E 'VmRSS|RssAnon|RssFile' "/proc/$pid/status" | tr -s ' \t\n' ' ')
switches() { cat /proc/"$pid"/task/*/status | awk '/^voluntary_ctxt_switches/{s += $2} END {print s}'; }
before=$(switches); sleep 5; after=$(switches)
echo "topics $topics: ${rss}wake-ups/s $(( (after - before) / 5 ))"
