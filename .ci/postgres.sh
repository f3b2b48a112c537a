#!/usr/bin/env bash
# A throwaway PostgreSQL server for the architecture-search tests (and anyone who wants one).
#
#   .ci/postgres.sh install           install the Debian package if initdb/pg_ctl are missing
#   .ci/postgres.sh start DIR PORT    initdb into DIR, serve on 127.0.0.1:PORT only, create database
#                                     "convrnn"; prints the URL (postgresql://postgres@127.0.0.1:PORT/convrnn)
#   .ci/postgres.sh stop DIR          stop the server of DIR (fast shutdown)
#
# Exit code 3: no PostgreSQL found (the tests skip, saying so). PostgreSQL refuses to run as root, so
# as root the server runs as the "postgres" user (which the Debian package creates) and DIR is handed to it.
set -euo pipefail

find_bin() {
    local name=$1 dir
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return 0
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/$name" ]; then
            echo "$dir/$name"
            return 0
        fi
    done
    return 1
}

as_server_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

cmd=${1:-}
case "$cmd" in
install)
    if find_bin initdb >/dev/null && find_bin pg_ctl >/dev/null; then
        exit 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "postgres.sh: no initdb/pg_ctl and no apt-get to install PostgreSQL" >&2
        exit 3
    fi
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    find_bin initdb >/dev/null && find_bin pg_ctl >/dev/null
    ;;
start)
    dir=${2:?usage: postgres.sh start DIR PORT}
    port=${3:?usage: postgres.sh start DIR PORT}
    initdb=$(find_bin initdb) || { echo "postgres.sh: no PostgreSQL (initdb) found" >&2; exit 3; }
    pg_ctl=$(find_bin pg_ctl) || { echo "postgres.sh: no PostgreSQL (pg_ctl) found" >&2; exit 3; }
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || { echo "postgres.sh: running as root but there is no 'postgres' user" >&2; exit 3; }
        chown postgres "$dir"
    fi
    as_server_user "$initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    # Loopback TCP only; the Unix socket in DIR, so no system directory is needed.
    as_server_user "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=50" start >/dev/null ||
        { cat "$dir/server.log" >&2; exit 1; }
    psql=$(find_bin psql) || psql=""
    if [ -n "$psql" ]; then
        "$psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "CREATE DATABASE convrnn" >/dev/null
    else
        as_server_user "$(dirname "$pg_ctl")/createdb" -h 127.0.0.1 -p "$port" -U postgres convrnn
    fi
    echo "postgresql://postgres@127.0.0.1:$port/convrnn"
    ;;
stop)
    dir=${2:?usage: postgres.sh stop DIR}
    pg_ctl=$(find_bin pg_ctl) || exit 0
    [ -f "$dir/data/postmaster.pid" ] || exit 0
    as_server_user "$pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
*)
    echo "usage: postgres.sh install | start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
