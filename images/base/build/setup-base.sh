#!/bin/sh
# The final stage of images/base, as root: Debian's git, ripgrep, tini and CA certificates (with any
# extra ones from /usr/local/share/ca-certificates/parallax/), the user `agent` (uid/gid 1000, replacing
# a uid 1000 user the base may have, such as node:* images' `node`), its home /home/agent (mode 1777,
# as Docker makes the tmpfs mounted over it) and /workspace (owned by agent), and the entrypoint.
set -eu
here="$(dirname "$0")"

sh "$here/apt-install.sh" ca-certificates git ripgrep tini
update-ca-certificates >/dev/null

node_version="$(node --version)"
npm_version="$(npm --version)"
case "$node_version" in
    v22.*) ;;
    *) echo "setup-base: expected Node.js 22, got $node_version" >&2; exit 1 ;;
esac

user="$(getent passwd 1000 | cut -d: -f1)"
if [ -n "$user" ] && [ "$user" != agent ]; then
    userdel --remove "$user" 2>/dev/null || userdel "$user"
fi
group="$(getent group 1000 | cut -d: -f1)"
if [ -n "$group" ] && [ "$group" != agent ]; then
    groupdel "$group"
fi
getent group agent >/dev/null || groupadd --gid 1000 agent
getent passwd agent >/dev/null ||
    useradd --uid 1000 --gid 1000 --home-dir /home/agent --no-create-home --shell /bin/bash agent

mkdir -p /home/agent /workspace
chown agent:agent /home/agent /workspace
chmod 1777 /home/agent
chmod 0755 /workspace /usr/local/bin/parallax-agent
rm -rf /tmp/* /root/.npm /root/.cache
echo "setup-base: Node.js $node_version, npm $npm_version, $(git --version), $(rg --version | sed -n 1p), user agent (1000:1000)"
