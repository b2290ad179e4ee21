#!/usr/bin/env bash
# gVisor for agents with spec.runtimeClassName: gvisor (README "gVisor (runtimeClassName)"): installs
# Debian's runsc and registers it with the Docker daemon as the runtime "runsc", merged into
# daemon.json (other keys and runtimes kept), then makes the running dockerd reload it with SIGHUP
# (runtimes are reloadable: nothing running is interrupted; dockerd is never restarted). Idempotent,
# as root or as a user with sudo (scripts/as-root.sh). Called by scripts/setup.sh once dockerd runs.
#   PARALLAX_DOCKER_DAEMON_JSON  the daemon's config file (default /etc/docker/daemon.json)
#   PARALLAX_DOCKER_PIDFILE      its pidfile, for the reload (default /var/run/docker.pid)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
script_name=setup-gvisor
# shellcheck source=scripts/as-root.sh
source scripts/as-root.sh

DAEMON_JSON="${PARALLAX_DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}"
PIDFILE="${PARALLAX_DOCKER_PIDFILE:-/var/run/docker.pid}"
RUNTIME=runsc
# --network=host: Debian's runsc 20221219 refuses its own network stack on kernels that show
# /proc/sys/net in every namespace ("cannot run with network enabled in root network namespace"), so
# the sandbox uses the container's network namespace (Docker's network, its isolation) through host
# sockets. --platform=ptrace: kvm hangs inside a VM, and ptrace needs no device.
RUNTIME_ARGS='["--network=host", "--platform=ptrace"]'

say() { echo "setup-gvisor: $*"; }

if [ -x /usr/bin/runsc ]; then
    say "runsc present ($(/usr/bin/runsc --version 2>/dev/null | head -n 1))"
else
    say "installing runsc"
    apt_install runsc
fi

# Merge the runtime into daemon.json; print "changed" when the file was (re)written.
merge='
import json, os, sys
path, name, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
try:
    with open(path) as f:
        config = json.load(f)
except FileNotFoundError:
    config = {}
if not isinstance(config, dict):
    sys.exit(f"{path}: not a JSON object")
wanted = {"path": "/usr/bin/runsc", "runtimeArgs": args}
runtimes = config.setdefault("runtimes", {})
if runtimes.get(name) == wanted:
    sys.exit(0)
runtimes[name] = wanted
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".parallax-tmp", "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(path + ".parallax-tmp", path)
print("changed")
'
changed="$(as_root "registering runsc in $DAEMON_JSON" python3 -c "$merge" "$DAEMON_JSON" "$RUNTIME" "$RUNTIME_ARGS")"

has_runtime() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q "\"$RUNTIME\""; }
if [ -z "$changed" ] && has_runtime; then
    say "runtime $RUNTIME registered ($DAEMON_JSON)"
    exit 0
fi
if ! pid="$(cat "$PIDFILE" 2>/dev/null)" || [ -z "$pid" ] || [ ! -e "/proc/$pid" ]; then
    echo "setup-gvisor: no running dockerd in $PIDFILE to reload; $DAEMON_JSON takes effect when it starts" >&2
    exit 1
fi
say "reloading dockerd (pid $pid) with SIGHUP"
as_root "reloading dockerd's runtimes" kill -HUP "$pid"
for _ in $(seq 50); do
    if has_runtime; then
        say "runtime $RUNTIME registered: docker info lists it"
        exit 0
    fi
    sleep 0.2
done
echo "setup-gvisor: dockerd did not take runtime $RUNTIME from $DAEMON_JSON (is it started with another --config-file?); see its log" >&2
exit 1
