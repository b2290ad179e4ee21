#!/usr/bin/env bash
# Set up (Docker daemon, venv, test image, Prometheus's tools) and run the checks and the whole test suite.
# As root or as a user with sudo, like scripts/setup.sh: only installing packages uses root. Arguments go
# to pytest (e.g. -m 'not slow', or -x).
set -euo pipefail
cd "$(dirname "$0")/.."
script_name=test
# shellcheck source=scripts/as-root.sh
source scripts/as-root.sh
bash scripts/setup.sh
# The tests also run deploy/'s Prometheus pieces with the real thing (promtool, a prometheus server).
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    echo "test: installing Debian's prometheus package (promtool and the server, for tests/integration/test_prometheus.py)"
    apt_install --no-install-recommends prometheus
fi
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
# The PostgreSQL store's tests use the cluster scripts/setup-postgres.sh started (via setup.sh).
export PARALLAX_TEST_POSTGRES="${PARALLAX_TEST_POSTGRES:-postgresql://parallax:parallax@127.0.0.1:55432/parallax}"
echo "== pytest"
.venv/bin/pytest -q -p no:cacheprovider "$@"
