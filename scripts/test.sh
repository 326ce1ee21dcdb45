#!/usr/bin/env bash
# Runs every test. The L2 tests start their own redis-server processes, so this
# installs redis-server when it is missing (Debian/Ubuntu: apt-get) and fails
# loudly when it cannot: the tests are never skipped for want of Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found: installing it (apt-get install -y redis-server)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null || true
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "ERROR: redis-server is required by the tests and could not be installed." >&2
    echo "       Install Redis 6+ (e.g. 'apt-get install -y redis-server') and run again." >&2
    exit 1
  fi
fi
echo "using $(redis-server --version)"

# The library with no feature, then with each feature alone: each builds
# without a warning (code that only one feature uses is compiled only with it).
for features in "" l1 redis tls axum metrics testing; do
  echo "library with --no-default-features ${features:+--features $features}"
  cargo clippy -q -p resilient-cache --lib --no-default-features ${features:+--features "$features"} -- -D warnings
done

cargo test --workspace --all-features "$@"
# The library's own unit tests once more with the default features, for the
# rules that depend on a feature being absent (e.g. rediss:// without `tls`).
cargo test -p resilient-cache --lib "$@"
