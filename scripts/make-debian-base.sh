#!/usr/bin/env bash
# Make a local Debian bookworm base image without pulling from any container registry:
# `debootstrap --variant=minbase` into a temporary folder, then `docker import`.
# Cached: does nothing when the image already exists (pass --force to rebuild it).
#
#   scripts/make-debian-base.sh [--force] [TAG]       default TAG: parallax/debian-bookworm:local
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR
# (default http://deb.debian.org/debian-security). Needs root (runs itself again with sudo when not root)
# and a Docker daemon; installs debootstrap with apt-get when it is missing.
set -euo pipefail

tag="parallax/debian-bookworm:local"
force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        -*) echo "make-debian-base: unknown option $arg" >&2; exit 2 ;;
        *) tag="$arg" ;;
    esac
done
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

say() { echo "make-debian-base: $*"; }

if ! docker info >/dev/null 2>&1; then
    echo "make-debian-base: the Docker daemon is not reachable (run scripts/setup.sh)" >&2
    exit 1
fi
if [ "$force" = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    say "$tag already exists (use --force to rebuild)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "make-debian-base: debootstrap needs root, and sudo is not installed: run this as root" >&2
        exit 1
    fi
    echo "make-debian-base: debootstrap needs root: sudo bash $0 $*" >&2
    exec sudo --preserve-env=DEBIAN_MIRROR,DEBIAN_SECURITY_MIRROR bash "$0" "$@"
fi
if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    apt-get update -qq
    if ! DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq debootstrap \
        >/tmp/parallax-debootstrap-install.log 2>&1; then
        cat /tmp/parallax-debootstrap-install.log >&2
        exit 1
    fi
fi

started=$(date +%s)
rootfs="$(mktemp -d /var/tmp/parallax-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

say "debootstrap --variant=minbase bookworm from $mirror"
if ! debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
    tail -n 30 "$rootfs.log" >&2
    rm -f "$rootfs.log"
    echo "make-debian-base: debootstrap failed" >&2
    exit 1
fi
rm -f "$rootfs.log"

# What an official slim image has: full apt sources, no docs or man pages, no apt caches.
cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security_mirror bookworm-security main
SOURCES
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/parallax-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
SLIM
cat >"$rootfs/etc/apt/apt.conf.d/parallax-slim" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
APT
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
: >"$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"

say "docker import as $tag"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'LABEL org.opencontainers.image.description="Debian bookworm minbase, made locally with debootstrap"' \
    - "$tag" >/dev/null
say "$tag ready in $(( $(date +%s) - started )) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
