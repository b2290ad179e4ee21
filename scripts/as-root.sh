# Sourced by scripts/setup.sh and scripts/test.sh. The few steps that need root (installing Debian
# packages, starting dockerd, giving a user access to Docker) go through as_root: run directly when the
# script runs as root (sudo need not be installed), through sudo otherwise. Everything else (the venv,
# the test image, the tests) runs as the invoking user.
# shellcheck shell=bash

uid="$(id -u)"

# as_root WHY COMMAND...: run COMMAND as root; WHY says what for, in the note printed before sudo asks.
as_root() {
    local why="$1"
    shift
    if [ "$uid" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        echo "${script_name:-setup}: $why needs root: sudo $*" >&2
        sudo "$@"
    else
        echo "${script_name:-setup}: $why needs root, and sudo is not installed: run this as root, or install sudo" >&2
        exit 1
    fi
}

# apt_install [APT-GET OPTION...] PACKAGE...: apt-get update and install, as root, quietly.
apt_install() {
    local packages=()
    for arg in "$@"; do
        case "$arg" in -*) ;; *) packages+=("$arg") ;; esac
    done
    as_root "installing ${packages[*]}" env DEBIAN_FRONTEND=noninteractive sh -c \
        'apt-get update -qq && apt-get install -y -qq "$@" >/dev/null' apt_install "$@"
}
