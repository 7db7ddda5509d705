#!/usr/bin/env bash
# Idle wake-ups and RSS of a three-node cluster on 127.0.0.1 holding TOPICS
# topics of 3 partitions, replication factor 3 (every node has a replica
# of every partition; each leads about a third). Wake-ups are every
# thread's voluntary context switches of each node over 10 s, from 5 s
# after the topics are made; RSS is read at the end.
# usage: bus/server/bench/cluster_idle.sh BIN [TOPICS] (a release edgebus)
set -eu
B=$1; topics=${2:-0}; d=$(mktemp -d); base=$((20000 + RANDOM % 20000)); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait; rm -rf "$d"; }
trap cleanup EXIT
"$B" tls init "$d/ca" > /dev/null
peers=(); brokers=
for n in 1 2 3; do
  peers+=(--peer "$n=127.0.0.1:$((base + n))")
  brokers=${brokers:+$brokers,}127.0.0.1:$((base + n))
done
for n in 1 2 3; do
  RUST_LOG=warn "$B" serve --data "$d/n$n" --listen "127.0.0.1:$((base + n))" --node-id "$n" \
    "${peers[@]}" --cluster-ca "$d/ca" > "$d/log$n" 2>&1 < /dev/null & pids+=($!)
done
C=(--broker "$brokers" --ca "$d/ca/ca.pem")
up=0
for _ in $(seq 100); do
  up=$("$B" cluster status "${C[@]}" --output json 2>/dev/null | grep -o '"up":true' | wc -l) || true
  [ "$up" = 3 ] && break
  sleep 0.2
done
[ "$up" = 3 ] || { echo "only $up of 3 nodes up; their logs:" >&2; cat "$d"/log* >&2; exit 1; }
for i in $(seq "$topics"); do
  "$B" topic create "t$i" --partitions 3 --replication-factor 3 "${C[@]}" > /dev/null
done
sleep 5
switches() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt_switches/{s += $2} END {print s}'; }
before=(); for p in "${pids[@]}"; do before+=("$(switches "$p")"); done
sleep 10
for i in 0 1 2; do
  p=${pids[$i]}
  rss=$(awk '/VmRSS/{print $2}' "/proc/$p/status")
  echo "node $((i + 1)), topics $topics: wake-ups/s $(( ($(switches "$p") - ${before[$i]}) / 10 )), VmRSS $rss kB"
done
