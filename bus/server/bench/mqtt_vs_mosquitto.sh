#!/bin/bash
# One round: the same MQTT load against edgebus, then against mosquitto.
# usage: bus/server/bench/mqtt_vs_mosquitto.sh PORT_BASE (from the repo root;
# MSGS=messages per client, EXTRA=more mqtt_load flags, e.g. "--inflight 100").
# Prints each run and the broker's CPU (utime+stime, s) before and after.
B=${EDGEBUS:-target/release/edgebus}
L=${MQTT_LOAD:-target/release/examples/mqtt_load}
base=$1
T=$(mktemp -d)
cpu() { awk '{printf "%.2f", ($14+$15)/100}' /proc/$1/stat; }
RUST_LOG=warn $B serve --data $T/d --listen 127.0.0.1:$((base+1)) --mqtt-listen 127.0.0.1:$((base+2)) --mqtt-map 'load/#=load' > $T/log 2>&1 & EP=$!
sleep 2
$B topic create load --partitions 4 --broker 127.0.0.1:$((base+1)) --ca $T/d/tls/ca.pem >/dev/null
c0=$(cpu $EP)
r=$($L --port $((base+2)) --clients 100 --messages ${MSGS:-2000} --size 100 $EXTRA)
echo "edgebus: $r cpu $c0 -> $(cpu $EP)"
kill $EP; wait $EP 2>/dev/null
mosquitto -p $((base+3)) > $T/mlog 2>&1 & MP=$!
sleep 1
c0=$(cpu $MP)
r=$($L --port $((base+3)) --clients 100 --messages ${MSGS:-2000} --size 100 $EXTRA)
echo "mosquitto: $r cpu $c0 -> $(cpu $MP)"
kill $MP; wait $MP 2>/dev/null
rm -rf $T
