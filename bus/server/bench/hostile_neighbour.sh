#!/usr/bin/env bash
# Other topics keep flowing (issue 12, item 3): the ack latency of
# `edgebus bench produce --rate 2000` on its own topic, alone, then beside a
# load into a topic whose ingest plugin burns its deadline on every call
# (plugins/test/spin; HOSTILE=NAME for another test plugin), then beside the
# same load into a topic without a plugin (the control). ROUNDS (5) alternating
# rounds; CONFIG=FILE serves with that config file. One JSON line per run,
# labelled. Needs a release build and
# plugins/build.sh. It starts one broker of its own, and stops it and the
# load loops it started.
set -u -m
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
BIN=${EDGEBUS:-$repo/target/release/edgebus}
PLUG=$repo/plugins/target/wasm32-wasip2/release
HOSTILE=${HOSTILE:-spin}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
PORT=$(python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
ADDR=127.0.0.1:$PORT
RUST_LOG=error $BIN serve --data $D/data --listen $ADDR ${CONFIG:+--config "$CONFIG"} > $D/serve.out 2> $D/serve.err &
SERVE=$!
sleep 1
CA=$D/data/tls/ca.pem
C="--broker $ADDR --ca $CA"
$BIN plugin add $HOSTILE $PLUG/$HOSTILE.wasm $C > /dev/null
$BIN topic create hostile --partitions 1 --ingest "$HOSTILE${HOSTILE_PARAMS:-}" $C > /dev/null
# The control: the same load generator into a topic without a plugin.
$BIN topic create plain --partitions 1 $C > /dev/null
# One producer process fed 200 one-record lines a second (adaptive
# batching sends each at once): the chain gets a batch every 5 ms, more
# than a 50 ms deadline burner can take, and the load generator itself
# costs little CPU, so the control measures the load, not process starts.
load_on() {
  ( python3 -u -c '
import time
while True:
    print("{\"n\":1}", flush=True)
    time.sleep(0.005)' | $BIN produce $1 $C > /dev/null 2>&1 ) &
  LOAD=$!
  sleep 2
}
load_off() {
  kill -- -$LOAD 2>/dev/null
  wait $LOAD 2>/dev/null
  sleep 1
}
bench() {
  $BIN bench produce $C --records 6000 --size 1024 --rate 2000 --window 8 --output json 2>/dev/null | tail -1
}
for i in $(seq 1 "${ROUNDS:-5}"); do
  echo "alone $i $(bench)"
  load_on hostile
  echo "with-$HOSTILE $i $(bench)"
  load_off
  load_on plain
  echo "with-control $i $(bench)"
  load_off
done
$BIN topic describe hostile $C 2>/dev/null | tail -5
kill $SERVE
wait $SERVE 2>/dev/null
