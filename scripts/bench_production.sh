#!/usr/bin/env bash
# Production figures of the release binary: stripped size, and idle RSS of a
# gateway connected to a local mosquitto with the example's monitoring on
# (no field devices), sampled after IDLE_S seconds. Prints one JSON line.
#
#   scripts/bench_production.sh target/release/estate-gateway
set -euo pipefail
bin=${1:?usage: bench_production.sh BINARY}
idle=${IDLE_S:-20}
dir=$(mktemp -d)
trap 'kill "${gw:-}" "${mq:-}" 2>/dev/null || true; rm -rf "$dir"' EXIT

strip -o "$dir/stripped" "$bin"
size=$(stat -c %s "$dir/stripped")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mport=$(free_port)
wport=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$mport" >"$dir/mosquitto.conf"
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$mosq" -c "$dir/mosquitto.conf" >/dev/null 2>&1 &
mq=$!
cat >"$dir/gateway.toml" <<TOML
[site]
id = "bench"
gateway = "gw"
[journal]
path = "$dir/journal"
[uplink]
host = "127.0.0.1"
port = $mport
[web]
listen = "127.0.0.1:$wport"
TOML
sleep 0.5
RUST_LOG=warn "$dir/stripped" run --config "$dir/gateway.toml" >"$dir/gateway.log" 2>&1 &
gw=$!
sleep "$idle"
curl -sf "http://127.0.0.1:$wport/metrics" >/dev/null
rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$gw/status")
hwm_kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$gw/status")
kill -TERM "$gw"
wait "$gw" || true
gw=
printf '{"bench":"production","stripped_bytes":%s,"idle_s":%s,"idle_rss_kib":%s,"peak_rss_kib":%s}\n' \
    "$size" "$idle" "$rss_kb" "$hwm_kb"
