#!/usr/bin/env bash
# RSS of a broker after 200k x 1 KiB produced, then after reading it all back.
# usage: bus/server/bench/rss.sh BIN (a release edgebus)
set -u
B=$1; d=$(mktemp -d); port=$((20000 + RANDOM % 20000))
[ -f /tmp/rss-input ] || python3 -c '
import random,string
r=random.Random(7)
with open("/tmp/rss-input","w") as f:
    for i in range(200000):
        f.write("".join(r.choice(string.ascii_letters) for _ in range(1023))+"\n")'
RUST_LOG=warn setsid $B serve --data $d/data --listen 127.0.0.1:$port > $d/log 2>&1 < /dev/null & pid=$!
sleep 1
export EDGEBUS_BROKER=127.0.0.1:$port EDGEBUS_CA=$d/data/tls/ca.pem
rss() { awk '/VmRSS/{print int($2/1024)}' /proc/$pid/status; }
idle=$(rss)
$B topic create t --partitions 3 >/dev/null
$B produce t < /tmp/rss-input > /dev/null
sleep 2; produced=$(rss)
$B consume t > /dev/null
sleep 2; read=$(rss)
sleep 8; later=$(rss)
echo "idle=$idle produced=$produced read=$read read+10s=$later MiB"
kill $pid; wait $pid 2>/dev/null; rm -rf $d
