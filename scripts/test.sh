#!/usr/bin/env bash
# Runs every test: the Rust workspace, then the Python front (built into a
# virtual environment this script makes, `.venv`, then its pytest suite). The
# L2 tests start their own redis-server processes, so this installs
# redis-server when it is missing (Debian/Ubuntu: apt-get) and fails loudly
# when it cannot: the tests are never skipped for want of Redis or Python.
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

# A CI run builds once from a clean clone: incremental caches would only take
# disk space there.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

# The library with no feature, then with each feature alone: each builds
# without a warning (code that only one feature uses is compiled only with it).
for features in "" l1 redis tls axum metrics testing; do
  echo "library with --no-default-features ${features:+--features $features}"
  cargo clippy -q -p resilient-cache --lib --no-default-features ${features:+--features "$features"} -- -D warnings
done

# The extension is tested by its pytest suite (below), not by cargo.
cargo test --workspace --all-features --exclude resilient-cache-python "$@"
# The library's own unit tests once more with the default features, for the
# rules that depend on a feature being absent (e.g. rediss:// without `tls`).
cargo test -p resilient-cache --lib "$@"

# The Python front: maturin, pytest and Flask into .venv, the extension built
# into it (debug build: the suite checks behaviour, not speed), then its
# pytest suite against real redis-server processes and the Rust peer.
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -c "import venv, ensurepip" >/dev/null 2>&1; then
  echo "$PYTHON with venv not found: installing it (apt-get install -y python3 python3-venv)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv >/dev/null || true
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv || { echo "ERROR: cannot create a virtual environment with $PYTHON (3.10+ with venv is required)." >&2; exit 1; }
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "maturin>=1.9,<2" "pytest>=7" "flask>=2" || {
  echo "ERROR: cannot install maturin, pytest and flask into .venv from the Python registry." >&2
  exit 1
}
cargo build -q -p resilient-cache --example interop_peer
(cd crates/python && VIRTUAL_ENV="$PWD/../../.venv" PATH="$PWD/../../.venv/bin:$PATH" maturin develop -q)
.venv/bin/python -m pytest -q crates/python/tests
