#!/usr/bin/env bash
# Set up what the service and its tests need, on Debian, as root: Docker, the Python venv and the
# tiny test agent image. Idempotent: every step is skipped when it is already done, so a second run
# takes a second or two. Works from any directory.
#   --no-images   do not build/tag the test agent image
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TEST_IMAGE=parallax/agent-testing:latest
TEST_PREFIX=parallax-test/agent-
AGENT_TYPES=(claude codex gemini aider base)
HASH_LABEL=parallax.context-hash
DOCKERD_LOG=/var/log/parallax-dockerd.log

build_images=1
for arg in "$@"; do
    case "$arg" in
        --no-images) build_images=0 ;;
        -h | --help)
            sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup.sh: unknown argument: $arg (only --no-images)" >&2
            exit 2
            ;;
    esac
done

say() { echo "setup: $*"; }

# a. Debian packages
packages=()
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    packages+=(docker.io)
fi
[ -x /bin/busybox ] || packages+=(busybox-static)
command -v python3 >/dev/null 2>&1 || packages+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || packages+=(python3-venv)
if [ "${#packages[@]}" -gt 0 ]; then
    say "installing ${packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
else
    say "packages present (docker.io, busybox-static, python3-venv)"
fi

# b. Docker daemon
if docker info >/dev/null 2>&1; then
    say "dockerd running"
else
    say "starting dockerd (log: $DOCKERD_LOG)"
    setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    dockerd_pid=$!
    deadline=$((SECONDS + 60))
    until docker info >/dev/null 2>&1; do
        if ! kill -0 "$dockerd_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            echo "setup: dockerd exited or did not answer within 60 s; last lines of $DOCKERD_LOG:" >&2
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            exit 1
        fi
        sleep 1
    done
fi

# c. Python venv
if [ ! -x .venv/bin/pip ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
if [ ! -x .venv/bin/parallax ] || [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    say "installing the project into .venv (pip install -e '.[test]')"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch .venv/.installed
else
    say ".venv up to date"
fi

# d. Test agent image (FROM scratch + static busybox), tagged for every agent type
if [ "$build_images" = 1 ]; then
    ctx=images/testing
    cmp -s /bin/busybox "$ctx/busybox" || cp /bin/busybox "$ctx/busybox"
    hash=$(cat "$ctx/Dockerfile" "$ctx/agent.sh" "$ctx/busybox" | sha256sum | cut -d' ' -f1)
    current=$(docker image inspect -f "{{index .Config.Labels \"$HASH_LABEL\"}}" "$TEST_IMAGE" 2>/dev/null || true)
    if [ "$current" = "$hash" ]; then
        say "$TEST_IMAGE up to date"
    else
        say "building $TEST_IMAGE"
        if ! out=$(docker build -q --label "$HASH_LABEL=$hash" -t "$TEST_IMAGE" "$ctx" 2>&1); then
            echo "$out" >&2
            exit 1
        fi
    fi
    for type in "${AGENT_TYPES[@]}"; do
        docker tag "$TEST_IMAGE" "${TEST_PREFIX}${type}:latest"
    done
    say "tagged ${TEST_PREFIX}{$(IFS=,; echo "${AGENT_TYPES[*]}")}:latest"
else
    say "skipping the test agent image (--no-images)"
fi

# e. Real agent images are built elsewhere; only note that they exist.
real=()
for dir in images/*/; do
    name=$(basename "$dir")
    [ "$name" != testing ] && [ -f "$dir/Dockerfile" ] && real+=("$name")
done
if [ "${#real[@]}" -gt 0 ]; then
    say "not building images/{$(IFS=,; echo "${real[*]}")} here"
fi

say "ready"
