#!/usr/bin/env bash
# The test command: installs what the tests need (once), then runs format,
# lint, the stack checks and every Rust test. Works on a fresh Debian machine
# as root; later runs reuse what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
# CI may start with a minimal environment: find cargo and its installs.
export HOME="${HOME:-/root}"
export PATH="$HOME/.cargo/bin:${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}"

log() { printf '\n== %s\n' "$*" >&2; }

need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server mariadb-client)
command -v cmake >/dev/null || need_apt+=(cmake)
# The dashboard tests drive headless Chromium through chromedriver.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
dpkg -s pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

TANSU_VERSION=0.6.0
if ! { [ -x "$HOME/.cargo/bin/tansu" ] && "$HOME/.cargo/bin/tansu" --version 2>/dev/null | grep -q "$TANSU_VERSION"; }; then
  # One-time build, about 16 minutes on 2 cores.
  log "cargo install tansu $TANSU_VERSION"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi
export TANSU_BIN="$HOME/.cargo/bin/tansu"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

if [ -x scripts/test-stack.sh ] || [ -f scripts/test-stack.sh ]; then
  log "stack checks (compose, Prometheus rules, Grafana, db/init.sql)"
  bash scripts/test-stack.sh
fi

log "cargo test"
# Scenario tests start consumers, a broker and Prometheus: a few at a time
# keeps two cores responsive enough for their timing.
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
cargo test --locked --all-targets -- --test-threads "${CDC_TEST_THREADS:-3}" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one per binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "cargo: %d passed, %d failed\n", p, f }' "$out"
exit "$status"
