#!/bin/sh
# Fake coding agent for the Parallax test suite. Behaviour is driven by environment variables:
#   ALLOC_MB=N      allocate N MiB of memory once (over the memory limit => OOM kill, exit 137)
#   EXIT_AFTER=S    sleep S seconds (0 allowed), then exit with EXIT_CODE (default 0)
#   TICK_SECONDS=S  otherwise run forever, printing "tick <n>" every S seconds (default 5)
# While running it echoes every stdin line as "received: <line>". SIGTERM/SIGINT: "agent stopping", exit 0.

host="$(hostname 2>/dev/null || cat /etc/hostname 2>/dev/null)"
echo "agent ${host} started"
echo "agent ${host} stderr ready" >&2
if [ "$#" -gt 0 ]; then
    echo "agent args: $*"
fi

pids=""
sleeper=""

cleanup() {
    # shellcheck disable=SC2086
    kill $sleeper $pids 2>/dev/null
}

on_term() {
    echo "agent stopping"
    cleanup
    exit 0
}

trap on_term TERM INT

# Sleep in the background and wait, so a trapped signal interrupts the wait immediately.
nap() {
    sleep "$1" &
    sleeper=$!
    wait "$sleeper"
    sleeper=""
}

if [ -n "${ALLOC_MB:-}" ]; then
    echo "agent allocating ${ALLOC_MB} MiB"
    # dd reads into one buffer of that size, touching every page; over the memory limit the kernel
    # OOM-kills it and the agent exits 137, which Docker reports as OOMKilled.
    if ! dd if=/dev/zero of=/dev/null bs="${ALLOC_MB}M" count=1 2>/dev/null; then
        echo "agent memory allocation was killed" >&2
        exit 137
    fi
fi

if [ -n "${EXIT_AFTER:-}" ]; then
    nap "${EXIT_AFTER}"
    code="${EXIT_CODE:-0}"
    echo "agent exiting with code ${code}"
    cleanup
    exit "${code}"
fi

# Echo stdin. An asynchronous list gets /dev/null as stdin, so hand it the real one on fd 3.
exec 3<&0
while IFS= read -r line <&3; do
    echo "received: ${line}"
done &
pids="$pids $!"

n=0
while :; do
    nap "${TICK_SECONDS:-5}"
    n=$((n + 1))
    echo "tick ${n}"
done
