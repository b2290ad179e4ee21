#!/usr/bin/env bash
# A private PostgreSQL cluster for the PostgreSQL store's tests and benchmarks, on Debian: installs the
# postgresql package when absent, initdb's a cluster under $PARALLAX_PG_DATA (owned by postgres), starts
# it on a unix socket in $PARALLAX_PG_SOCKET and on 127.0.0.1:$PARALLAX_PG_PORT, and creates the role and
# database `parallax` (password `parallax`). As root or as a user with sudo (scripts/as-root.sh).
# Idempotent: a running cluster is left as it is (a second run does nothing and takes milliseconds).
# Prints nothing but one line on success; the URL tests use is
#   postgresql://parallax:parallax@127.0.0.1:55432/parallax   (PARALLAX_TEST_POSTGRES)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
script_name=setup-postgres
# shellcheck source=scripts/as-root.sh
source scripts/as-root.sh

DATA="${PARALLAX_PG_DATA:-/var/lib/parallax-pg}"
SOCKET="${PARALLAX_PG_SOCKET:-/var/run/parallax-pg}"
PORT="${PARALLAX_PG_PORT:-55432}"
LOG="${PARALLAX_PG_LOG:-/var/log/parallax-pg.log}"

say() { echo "setup-postgres: $*"; }

pg_bin() { # the newest installed server's bin directory (Debian keeps them off PATH)
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$dir" ] && [ -x "$dir/pg_ctl" ] && echo "$dir"
}

ready() { # the cluster answers on its TCP port
    local bin="$1"
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$PORT" >/dev/null 2>&1
}

bin="$(pg_bin || true)"
if [ -n "$bin" ] && ready "$bin" && [ -f "$DATA/PG_VERSION" ]; then
    say "running on 127.0.0.1:$PORT ($DATA)"
    exit 0
fi

if [ -z "$bin" ]; then
    say "installing postgresql"
    # Debian's package creates and starts its own cluster (port 5432); ours is separate and private.
    apt_install --no-install-recommends postgresql
    bin="$(pg_bin)"
fi
getent passwd postgres >/dev/null || { echo "setup-postgres: no postgres user after installing postgresql" >&2; exit 1; }

pg() { as_root "running PostgreSQL as postgres" runuser -u postgres -- "$@"; }

if [ ! -f "$DATA/PG_VERSION" ]; then
    say "initdb $DATA"
    as_root "creating $DATA" install -d -o postgres -g postgres -m 0700 "$DATA"
    pg "$bin/initdb" -D "$DATA" -U postgres --auth=trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
    # Tests open many short-lived databases and connections; fsync stays on (the store promises durability).
    {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $PORT"
        echo "unix_socket_directories = '$SOCKET'"
        echo "max_connections = 400"
        echo "shared_buffers = 128MB"
    } | as_root "configuring $DATA" tee -a "$DATA/postgresql.conf" >/dev/null
fi
as_root "creating $SOCKET" install -d -o postgres -g postgres -m 0755 "$SOCKET"
as_root "creating $LOG" sh -c 'touch "$1" && chown postgres:postgres "$1"' touch-log "$LOG"
if ! ready "$bin"; then
    say "starting PostgreSQL on 127.0.0.1:$PORT (log: $LOG)"
    pg "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null
fi
psql_pg() { pg "$bin/psql" -h "$SOCKET" -p "$PORT" -U postgres -qAtX "$@"; }
if [ "$(psql_pg -c "SELECT 1 FROM pg_roles WHERE rolname = 'parallax'")" != 1 ]; then
    psql_pg -c "CREATE ROLE parallax LOGIN CREATEDB PASSWORD 'parallax'" >/dev/null
fi
if [ "$(psql_pg -c "SELECT 1 FROM pg_database WHERE datname = 'parallax'")" != 1 ]; then
    psql_pg -c "CREATE DATABASE parallax OWNER parallax" >/dev/null
fi
say "running on 127.0.0.1:$PORT ($DATA)"
