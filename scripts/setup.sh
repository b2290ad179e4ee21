#!/usr/bin/env bash
# Set up what the service and its tests need, on Debian: Docker, the Python venv and the tiny test
# agent image. Run it as root or as a user with sudo: only installing packages, starting dockerd and
# giving that user access to Docker run as root (through sudo when not root); the venv belongs to the
# user who ran it. Idempotent: every step is skipped when it is already done. Works from any directory.
#   --no-images   do not build/tag the test agent image
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
script_name=setup
# shellcheck source=scripts/as-root.sh
source scripts/as-root.sh

TEST_IMAGE=parallax/agent-testing:latest
TEST_PREFIX=parallax-test/agent-
AGENT_TYPES=(claude codex gemini aider base)
HASH_LABEL=parallax.context-hash
DOCKERD_LOG="${PARALLAX_DOCKERD_LOG:-/var/log/parallax-dockerd.log}"
DOCKER_SOCKET_PATH="${DOCKER_SOCKET:-/var/run/docker.sock}"
# dockerd lives in /usr/sbin, which is not on a user's PATH on Debian.
PATH="$PATH:${PARALLAX_SBIN_PATH:-/usr/local/sbin:/usr/sbin:/sbin}"

build_images=1
for arg in "$@"; do
    case "$arg" in
        --no-images) build_images=0 ;;
        -h | --help)
            sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || packages+=(iproute2) # the swarm lab (scripts/swarm-lab)
command -v python3 >/dev/null 2>&1 || packages+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || packages+=(python3-venv)
if [ "${#packages[@]}" -gt 0 ]; then
    say "installing ${packages[*]}"
    apt_install "${packages[@]}"
else
    say "packages present (docker.io, busybox-static, python3-venv)"
fi

# b. Docker daemon, and access to it for a user who is not root
docker_state() { # running | denied (it runs, but this user may not use its socket) | down
    local out
    if out="$(docker info 2>&1 >/dev/null)"; then
        echo running
    elif [[ "$out" == *"permission denied"* ]]; then
        echo denied
    else
        echo down
    fi
}
state="$(docker_state)"
if [ "$state" = down ]; then
    say "starting dockerd (log: $DOCKERD_LOG)"
    dockerd_pid="$(as_root "starting dockerd" sh -c 'setsid nohup dockerd >>"$1" 2>&1 </dev/null & echo $!' \
        start-dockerd "$DOCKERD_LOG")"
    deadline=$((SECONDS + 60))
    while state="$(docker_state)" && [ "$state" = down ]; do
        if [ ! -e "/proc/$dockerd_pid" ] || [ "$SECONDS" -ge "$deadline" ]; then
            echo "setup: dockerd exited or did not answer within 60 s; see the end of $DOCKERD_LOG" >&2
            tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 1
    done
else
    say "dockerd running"
fi
if [ "$state" = denied ]; then
    # Access to the Docker socket is root on this machine (README: Security); the user asked for it by
    # running the setup. The docker group gives it to the user's next logins; an ACL on the socket gives
    # it now, so `.venv/bin/parallax serve` and the tests work in this session (until dockerd restarts).
    user="$(id -un)"
    if getent group docker >/dev/null && ! id -nG "$user" | tr ' ' '\n' | grep -qx docker; then
        as_root "adding $user to the docker group" usermod -aG docker "$user"
        say "added $user to the docker group (applies to new logins)"
    fi
    command -v setfacl >/dev/null 2>&1 || apt_install acl
    as_root "letting $user use $DOCKER_SOCKET_PATH now" setfacl -m "u:$user:rw" "$DOCKER_SOCKET_PATH"
    if [ "$(docker_state)" != running ]; then
        echo "setup: $user still cannot use $DOCKER_SOCKET_PATH; log in again (the docker group) and rerun" >&2
        exit 1
    fi
    say "$user may use Docker: through the docker group from the next login, through an ACL on the socket until then"
fi

bash scripts/setup-gvisor.sh  # runsc, registered with dockerd (spec.runtimeClassName: gvisor)
bash scripts/setup-browser.sh  # Chromium for tests/browser (the dashboard)

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

bash scripts/setup-postgres.sh  # f. a private PostgreSQL on 127.0.0.1:55432 for the PostgreSQL store's tests
say "ready"
