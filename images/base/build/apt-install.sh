#!/bin/sh
# apt-install.sh PACKAGE...: install Debian packages (no recommends) and leave no apt lists or caches
# behind. Used by install-node.sh and setup-base.sh, and by images built on agent-base (aider).
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "$@" >/dev/null
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt/* /var/log/dpkg.log
