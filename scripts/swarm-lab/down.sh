#!/usr/bin/env bash
# Tear down what up.sh made: the daemons by their pidfiles, the namespaces (and so the veths and the
# bridge), the mounts and the state directory. Usage: down.sh PREFIX DIR
P=${1:?prefix}; S=${2:?state directory}
for i in 1 2 3; do
    f=$S/n$i/docker.pid
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null
done
for _ in $(seq 1 30); do
    alive=0
    for i in 1 2 3; do f=$S/n$i/docker.pid; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.2
done
for i in 1 2 3; do f=$S/n$i/docker.pid; [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
for i in 1 2 3; do ip netns del "$P-n$i" 2>/dev/null; done
ip netns del "$P-hub" 2>/dev/null
grep " $S/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
# The daemons' logs outlive the lab (a node that died on its own is explained there).
for i in 1 2 3; do [ -f "$S/n$i/dockerd.log" ] && cp "$S/n$i/dockerd.log" "/var/log/parallax-swarm-lab-$P-n$i.log" 2>/dev/null; done
rm -rf "$S"
exit 0
