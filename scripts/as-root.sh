# Sourced by scripts/setup.sh and scripts/test.sh. The few steps that need root (installing Debian
# packages, starting dockerd, giving a user access to Docker) go through as_root: run directly when the
# script runs as root (sudo need not be installed), through sudo otherwise. Everything else (the venv,
# the test image, the tests) runs as the invoking user.
# shellcheck shell=bash

uid="$(id -u)"

# need_root WHY: return when this is root or sudo is there; otherwise say so and stop.
need_root() {
    if [ "$uid" = 0 ] || command -v sudo >/dev/null 2>&1; then
        return 0
    fi
    echo "${script_name:-setup}: $1 needs root, and sudo is not installed: run this as root, or install sudo" >&2
    exit 1
}

# as_root WHY COMMAND...: run COMMAND as root; WHY says what for, in the note printed before sudo asks.
as_root() {
    local why="$1"
    shift
    need_root "$why"
    if [ "$uid" = 0 ]; then
        "$@"
    else
        echo "${script_name:-setup}: $why needs root: sudo $*" >&2
        sudo "$@"
    fi
}

# apt_install [APT-GET OPTION...] PACKAGE...: apt-get update and install, as root; output only on failure.
apt_install() {
    local packages=() run=() log
    for arg in "$@"; do
        case "$arg" in -*) ;; *) packages+=("$arg") ;; esac
    done
    need_root "installing ${packages[*]}"
    if [ "$uid" != 0 ]; then
        run=(sudo)
        echo "${script_name:-setup}: installing ${packages[*]} needs root: sudo apt-get install $*" >&2
    fi
    log="$(mktemp)"
    if ! "${run[@]}" env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 sh -c \
        'apt-get update -qq && apt-get install -y -qq "$@"' apt_install "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "${script_name:-setup}: installing ${packages[*]} failed" >&2
        exit 1
    fi
    rm -f "$log"
}
