#!/usr/bin/env bash
# A 3-node Docker Swarm on one machine, for the swarm runtime's tests and benchmark: three dockerd, each
# in its own network namespace (own data-root, exec-root, pidfile, socket, cgroup parent), joined over a
# bridge inside a fourth "hub" namespace; nothing is attached to the host's network or its own dockerd.
# Node 1 is the manager (dispatcher heartbeat 1 s, drained: it runs no tasks), nodes 2 and 3 workers. Every node's daemon.json sets
# {"no-new-privileges": true} (the service spec cannot, see README "Swarm runtime"). Idempotent: what is
# already up is reused. Root only. Usage: up.sh PREFIX SUBNET3 DIR [IMAGE...]
#   e.g. up.sh pxsw 192.168.241 /tmp/pxsw-swarm parallax/agent-testing:latest
#   -> sockets DIR/nN/docker.sock, node hostnames PREFIX-nodeN, the images loaded on every node.
set -euo pipefail
P=${1:?prefix}; NET=${2:?subnet, e.g. 192.168.241}; S=${3:?state directory}
shift 3
mkdir -p "$S"
d() { local n=$1; shift; docker -H "unix://$S/n$n/docker.sock" "$@"; }
if ! ip netns list | grep -qw "$P-hub"; then
    ip netns add "$P-hub"
    ip -n "$P-hub" link set lo up
    ip -n "$P-hub" link add "${P}br0" type bridge
    ip -n "$P-hub" link set "${P}br0" up
    for i in 1 2 3; do
        ip netns add "$P-n$i"
        ip -n "$P-n$i" link set lo up
        ip link add "${P}v$i" netns "$P-n$i" type veth peer name "${P}h$i" netns "$P-hub"
        ip -n "$P-hub" link set "${P}h$i" master "${P}br0" up
        ip -n "$P-n$i" link set "${P}v$i" name eth0
        ip -n "$P-n$i" addr add "$NET.$i/24" dev eth0
        ip -n "$P-n$i" link set eth0 up
    done
fi
start_node() { # start node $1's dockerd unless it answers
    local i=$1 D=$S/n$1
    mkdir -p "$D/data" "$D/exec"
    echo '{"no-new-privileges": true}' >"$D/daemon.json"
    docker -H "unix://$D/docker.sock" info >/dev/null 2>&1 && return 0
    # nsenter --net only: `ip netns exec` remounts /sys and hides the cgroup v1 mounts
    nsenter --net="/run/netns/$P-n$i" -- unshare --uts -- sh -c "hostname $P-node$i; exec dockerd \
      --config-file $D/daemon.json --data-root $D/data --exec-root $D/exec --pidfile $D/docker.pid \
      -H unix://$D/docker.sock --cgroup-parent /$P-n$i --swarm-default-advertise-addr $NET.$i" \
        >>"$D/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 300); do
        docker -H "unix://$D/docker.sock" info >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "swarm-lab: node $i's dockerd did not answer; see $D/dockerd.log" >&2
    tail -n 20 "$D/dockerd.log" >&2
    return 1
}
for i in 1 2 3; do start_node "$i"; done
if [ "$(d 1 info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    d 1 swarm init --advertise-addr "$NET.1" --listen-addr "$NET.1:2377" >/dev/null
    d 1 swarm update --dispatcher-heartbeat 1s >/dev/null
    # The manager runs no agents, as in a production swarm: every task is on a worker (reached through
    # its own endpoint), and a worker can be killed with the swarm still answering.
    d 1 node update --availability drain "$P-node1" >/dev/null
fi
TOK=$(d 1 swarm join-token -q worker)
for i in 2 3; do
    if [ "$(d "$i" info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
        d "$i" swarm join --token "$TOK" --advertise-addr "$NET.$i" --listen-addr "$NET.$i:2377" "$NET.1:2377" >/dev/null
    fi
done
if [ "$#" -gt 0 ]; then
    for i in 1 2 3; do
        missing=()
        for image in "$@"; do
            [ "$(d "$i" image inspect -f '{{.Id}}' "$image" 2>/dev/null)" = "$(docker image inspect -f '{{.Id}}' "$image")" ] ||
                missing+=("$image")
        done
        [ "${#missing[@]}" = 0 ] || docker save "${missing[@]}" | d "$i" load -q >/dev/null
    done
fi
for _ in $(seq 1 150); do
    [ "$(d 1 node ls --format '{{.Status}}' | grep -c Ready)" = 3 ] && break
    sleep 0.2
done
d 1 node ls --format '{{.Hostname}} {{.Status}} {{.ManagerStatus}}'
[ "$(d 1 node ls --format '{{.Status}}' | grep -c Ready)" = 3 ]
