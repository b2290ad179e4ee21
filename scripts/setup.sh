#!/usr/bin/env bash
# Set up everything the service and the tests need, on a fresh Debian machine, as root.
# Idempotent: each step is skipped when already done.
#   --no-images   skip building the test agent image
set -euo pipefail
cd "$(dirname "$0")/.."

build_images=1
for arg in "$@"; do
    case "$arg" in
        --no-images) build_images=0 ;;
        *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

step() { echo "setup: $*"; }

if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null || [ ! -x /bin/busybox ]; then
    step "installing docker.io and busybox-static"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io busybox-static >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    step "starting dockerd (log: /var/log/parallax-dockerd.log)"
    nohup dockerd >/var/log/parallax-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        echo "setup: dockerd did not come up in 60 s; see /var/log/parallax-dockerd.log" >&2
        tail -n 20 /var/log/parallax-dockerd.log >&2 || true
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    step "creating .venv"
    python3 -m venv .venv
fi
if [ ! -x .venv/bin/parallax ] || [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    step "installing Python dependencies"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch .venv/.installed
fi

if [ "$build_images" = 1 ]; then
    cp /bin/busybox images/testing/busybox
    step "building the test agent image parallax/agent-testing:latest"
    if ! docker build -q -t parallax/agent-testing:latest images/testing >/tmp/parallax-build.log 2>&1; then
        cat /tmp/parallax-build.log >&2
        exit 1
    fi
    for type in claude codex gemini aider base; do
        docker tag parallax/agent-testing:latest "parallax-test/agent-${type}:latest"
    done
fi
step "ready"
