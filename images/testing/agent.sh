#!/bin/sh
# Fake coding agent for the Parallax test suite. Behaviour is driven by environment variables:
#   ALLOC_MB=N      allocate N MiB of memory and hold it; over the memory limit the kernel OOM-kills
#                   the allocation and the agent exits 137 (Docker reports State.OOMKilled=true)
#   EXIT_AFTER=S    sleep S seconds (0 allowed), then exit with EXIT_CODE (default 0)
#   TICK_SECONDS=S  otherwise run forever, printing "tick <n>" every S seconds (default 5)
#   LISTEN_PORT=P   also serve TCP port P: every connection gets "hello from <hostname>" (for network
#                   tests: `nc <alias> P` from another container; ping needs NET_RAW, which is dropped)
# While running forever it echoes every stdin line as "received: <message>", the message decoded as the
# real entrypoint does (\n, \r and \\ inside a line are a newline, a carriage return and a backslash).
# SIGTERM/SIGINT: prints "agent stopping" and exits 0.

host="$(hostname 2>/dev/null || cat /etc/hostname 2>/dev/null)"
echo "agent ${host} started"
echo "agent ${host} stderr ready" >&2
if [ "$#" -gt 0 ]; then
    echo "agent args: $*"
fi

pids=""
sleeper=""
allocated=""

cleanup() {
    # shellcheck disable=SC2086
    kill $sleeper $pids 2>/dev/null
}

on_term() {
    echo "agent stopping"
    cleanup
    exit 0
}

on_oom() {
    echo "agent memory allocation was killed" >&2
    cleanup
    exit 137
}

on_allocated() {
    allocated=1
}

trap on_term TERM INT
trap on_oom USR1
trap on_allocated USR2

# Sleep in the background and wait, so a trapped signal interrupts the wait immediately.
nap() {
    sleep "$1" &
    sleeper=$!
    wait "$sleeper"
    sleeper=""
}

if [ -n "${LISTEN_PORT:-}" ]; then
    nc -ll -p "${LISTEN_PORT}" -e echo "hello from ${host}" </dev/null &
    pids="$pids $!"
    echo "agent listening on ${LISTEN_PORT}"
fi

if [ -n "${ALLOC_MB:-}" ]; then
    echo "agent allocating ${ALLOC_MB} MiB"
    main=$$
    # tail keeps its whole newline-free input in memory, and holds it while the pipe stays open
    # (the writer ends in a long sleep). head succeeding means tail has it all: USR2. If the kernel
    # OOM-kills tail, head fails on the broken pipe: USR1, and the main shell exits 137.
    {
        if head -c "${ALLOC_MB}m" /dev/zero; then
            kill -USR2 "$main"
            exec sleep 2147483647
        fi
        kill -USR1 "$main"
    } | tail >/dev/null &
    pids="$pids $!"
    while [ -z "$allocated" ]; do
        nap 0.2
    done
    echo "agent holding ${ALLOC_MB} MiB"
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
    printf 'received: %s\n' "$(printf '%b' "$line")"
done &
pids="$pids $!"

n=0
while :; do
    nap "${TICK_SECONDS:-5}"
    n=$((n + 1))
    echo "tick ${n}"
done
