#!/usr/bin/env bash
# Smoke test of the broker built for 64-bit ARM gateways
# (aarch64-unknown-linux-gnu), run here under qemu-user: serve, create a
# topic, produce and consume 1,000 records, and run one plugin (the
# embedded json-filter as an ingest chain, so wasmtime compiles and runs
# aarch64 code). Both the broker and the CLI are the aarch64 binary.
#
# Needs: `rustup target add aarch64-unknown-linux-gnu` and Debian's
# gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user (the linker
# and runner are set in .cargo/config.toml). `.ci/run` installs them.
#
# `--build-only` builds and stops. The build has a target dir of its own,
# under the usual one: it shares no compiled unit with the host build (even
# proc macros are built again for a cross build), and so it never waits on
# the host build's lock and can run beside it (.ci/run does), without debug
# info, which only slows it down here.
set -euo pipefail
cd "$(dirname "$0")/.."

triple=aarch64-unknown-linux-gnu
for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
  if ! command -v "$tool" >/dev/null; then
    echo "aarch64 smoke: $tool is missing; apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user" >&2
    exit 1
  fi
done
dir="${CARGO_TARGET_DIR:-target}/aarch64-smoke"
CARGO_TARGET_DIR="$dir" CARGO_PROFILE_DEV_DEBUG=0 \
  cargo build -p edgebus --bin edgebus --target "$triple"
[ "${1:-}" = --build-only ] && exit 0
bin="$dir/$triple/debug/edgebus"
# ELF e_machine 183 is EM_AARCH64.
python3 -c 'import sys; sys.exit(open(sys.argv[1], "rb").read(20)[18:20] != (183).to_bytes(2, "little"))' "$bin" || {
  echo "aarch64 smoke: $bin is not an aarch64 executable" >&2
  exit 1
}

work=$(mktemp -d)
broker_pid=
cleanup() {
  if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

arm() { qemu-aarch64 -L /usr/aarch64-linux-gnu "$bin" "$@"; }
fail() {
  echo "aarch64 smoke: $*" >&2
  echo "--- broker log ---" >&2
  cat "$work/serve.log" >&2 || true
  exit 1
}

port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr="127.0.0.1:$port"
# Emulated, unoptimised guest code runs tens of times slower than native:
# the plugin deadline (50 ms by default) gets room to match.
printf '[plugins]\ndeadline_ms = 5000\n' >"$work/edgebus.toml"
qemu-aarch64 -L /usr/aarch64-linux-gnu "$bin" serve --config "$work/edgebus.toml" \
  --data "$work/data" --listen "$addr" >"$work/serve.log" 2>&1 &
broker_pid=$!
# Emulation is slow: give the start up to two minutes, checked every 0.2 s.
for _ in $(seq 600); do
  grep -q 'listening on' "$work/serve.log" && break
  kill -0 "$broker_pid" 2>/dev/null || fail "the broker exited during start"
  sleep 0.2
done
grep -q 'listening on' "$work/serve.log" || fail "the broker did not start within 120 s"
export EDGEBUS_BROKER="$addr" EDGEBUS_CA="$work/data/tls/ca.pem" EDGEBUS_CONNECT_TIMEOUT=30s

arm topic create smoke --partitions 3 || fail "topic create"
seq 1 1000 | sed 's/^/record-/' >"$work/records"
arm produce smoke <"$work/records" >"$work/produced" || fail "produce"
arm consume smoke --output json >"$work/consumed" || fail "consume"
consumed=$(grep -c '"value":"record-' "$work/consumed" || true)
[ "$consumed" = 1000 ] || fail "consumed $consumed records of 1000"
sort "$work/records" >"$work/want"
python3 -c '
import json, sys
for line in open(sys.argv[1]):
    print(json.loads(line)["value"])' "$work/consumed" | sort >"$work/got"
cmp -s "$work/want" "$work/got" || fail "the consumed values differ from the produced ones"

# One plugin: keep JSON records whose n >= 500, on ingest.
arm plugin add --bundled json-filter || fail "plugin add --bundled json-filter"
arm topic create filtered --partitions 1 --ingest 'json-filter:field=n,op=>=,value=500' || fail "topic create --ingest"
seq 0 999 | sed 's/.*/{"n":&}/' | arm produce filtered >"$work/filtered-acks" || fail "produce through the plugin"
arm consume filtered --output json >"$work/filtered" || fail "consume the filtered topic"
kept=$(wc -l <"$work/filtered")
[ "$kept" = 500 ] || fail "the json-filter plugin kept $kept records, not 500"
first=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["value"])' "$work/filtered")
[ "$first" = '{"n":500}' ] || fail "the first kept record is $first, not {\"n\":500}"

kill "$broker_pid"
wait "$broker_pid" || true
broker_pid=
echo "aarch64 smoke: passed under qemu-aarch64 ($(stat -c %s "$bin") bytes, debug build)"
