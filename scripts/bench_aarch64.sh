#!/usr/bin/env bash
# The Raspberry Pi 64-bit build: cross-compiles the release binary for
# aarch64-unknown-linux-gnu with Debian's cross gcc, strips it, reports its
# size, and runs it under qemu-user (`--version`, then the demo for
# DEMO_S seconds, counting the alarms its platform console prints). Prints
# one JSON line. Needs the aarch64 target (rustup), gcc-aarch64-linux-gnu,
# binutils-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user-static:
# `scripts/cross-check` installs all but the last; `apt-get install
# qemu-user-static`.
#
#   scripts/bench_aarch64.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
demo_s=${DEMO_S:-30}
for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-strip qemu-aarch64-static; do
    command -v "$tool" >/dev/null || { echo "bench aarch64: needs $tool (see the header of $0)" >&2; exit 1; }
done
CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    cargo build --release --locked --quiet --target "$target"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
bin=${CARGO_TARGET_DIR:-target}/$target/release/estate-gateway
aarch64-linux-gnu-strip -o "$dir/estate-gateway" "$bin"
size=$(stat -c %s "$dir/estate-gateway")
run() { qemu-aarch64-static -L /usr/aarch64-linux-gnu "$dir/estate-gateway" "$@"; }
version=$(run --version)
(cd "$dir" && run demo --duration-s "$demo_s" >"$dir/demo.log" 2>&1) || { cat "$dir/demo.log" >&2; exit 1; }
alarms=$(grep -c ' alarm\.raised ' "$dir/demo.log" || true)
printf '{"bench":"aarch64","target":"%s","stripped_bytes":%s,"stripped_mib":%.2f,"version":"%s","demo_s":%s,"demo_alarms_raised":%s}\n' \
    "$target" "$size" "$(awk -v s="$size" 'BEGIN{print s/1048576}')" "$version" "$demo_s" "$alarms"
