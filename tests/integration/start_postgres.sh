#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests, from Debian's packages (`apt-get install -y postgresql`).
#   start_postgres.sh DIR PORT    initdb in DIR/data, start on 127.0.0.1:PORT (socket in DIR), print its URL
#   start_postgres.sh --stop DIR  stop it
# PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user the package creates,
# and DIR is handed to that user. Trust authentication on loopback only: for tests, never for real data.
set -euo pipefail

bin_dir() {
    if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$found" ]; then
        echo "start_postgres.sh: no PostgreSQL server binaries under /usr/lib/postgresql/*/bin:" \
             "run 'apt-get install -y postgresql' (or set PG_BIN)" >&2
        exit 1
    fi
    echo "$found"
}

as_server_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if [ "${1:-}" = "--stop" ]; then
    as_server_user "$(bin_dir)/pg_ctl" -D "$2/data" -m fast -w stop >/dev/null
    exit 0
fi

dir=${1:?usage: start_postgres.sh DIR PORT}
port=${2:?usage: start_postgres.sh DIR PORT}
bin=$(bin_dir)
if [ "$(id -u)" = 0 ]; then
    if ! id postgres >/dev/null 2>&1; then
        echo "start_postgres.sh: running as root needs the 'postgres' user (created by the postgresql package)" >&2
        exit 1
    fi
    chown postgres "$dir"
fi
as_server_user "$bin/initdb" -D "$dir/data" --username=autoannotator --auth=trust --encoding=UTF8 \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
as_server_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=on" start >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
echo "postgresql://autoannotator@127.0.0.1:$port/postgres"
