#!/usr/bin/env bash
# The main job on one machine: builds cdc-monitor and runs `cdc-monitor
# quickstart` (a private MariaDB with the binlog on, capture into the
# embedded store, the dashboard). Installs the build's system packages first
# when run as root on Debian. Arguments go to `quickstart`, e.g.
#   bash scripts/quickstart.sh --data-dir /tmp/cdc --http-addr 127.0.0.1:3000
set -euo pipefail
cd "$(dirname "$0")/.."
export HOME="${HOME:-/root}"
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install a Rust toolchain (1.85 or newer), e.g. from rustup.rs" >&2
  exit 1
fi
need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v cmake >/dev/null || need_apt+=(cmake)
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
dpkg -s pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing build packages: ${need_apt[*]} (run as root, or: sudo apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
  echo "installing ${need_apt[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
cargo build --release --locked --quiet
exec ./target/release/cdc-monitor quickstart "$@"
