#!/usr/bin/env bash
# A private PostgreSQL instance on loopback for bridges that share one store. No system
# service is used: initdb + pg_ctl in a temporary directory.
#   postgres.sh install            install PostgreSQL from Debian's packages if missing
#   postgres.sh start PORT DIR     start in the background; DIR/password holds the password of
#                                  role `hsm` (0600), DIR/url the store URL; prints the URL
#   postgres.sh run PORT DIR       the same in the foreground until stdin closes (the tests)
#   postgres.sh stop DIR           stop the one started with `start`
# PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user from a
# data directory it owns under /tmp.
source "$(dirname "$0")/lib.sh"

install() {
    if [ -n "$(pg_bin 2>/dev/null)" ]; then return 0; fi
    say "installing PostgreSQL from Debian's packages"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    [ -n "$(pg_bin)" ] || die "PostgreSQL's server programs were not found after installing it"
}

# The newest installed server's bin directory.
pg_bin() {
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}

as_server() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

launch() {
    local port="$1" dir="$2" bin data
    bin="$(pg_bin)" || die "PostgreSQL is not installed: run softhsm-test/install-deps.sh"
    mkdir -p "$dir"
    data="$(mktemp -d /tmp/hsm-bridge-pg-XXXXXX)"
    echo "$data" >"$dir/datadir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$data"
    # The password of role `hsm`: the bridge reads it from a file, as in production.
    (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$dir/password")
    local pwfile="$data/pwfile"
    command install -m 0600 "$dir/password" "$pwfile"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$pwfile"
    as_server "$bin/initdb" -D "$data/db" -U hsm --pwfile="$pwfile" -A scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    rm -f "$pwfile"
    as_server "$bin/pg_ctl" -D "$data/db" -w -t 60 -l "$data/server.log" \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c max_connections=200 -c fsync=on" \
        start >/dev/null || { cat "$data/server.log" >&2; die "PostgreSQL did not start on port $port"; }
    echo "postgres://hsm@127.0.0.1:$port/postgres" >"$dir/url"
}

stop_dir() {
    local dir="$1" data bin
    [ -s "$dir/datadir" ] || return 0
    data="$(cat "$dir/datadir")"
    bin="$(pg_bin)" || return 0
    as_server "$bin/pg_ctl" -D "$data/db" -m fast -w stop >/dev/null 2>&1 || true
    cp "$data/server.log" "$dir/server.log" 2>/dev/null || true
    rm -rf "$data" "$dir/datadir"
}

case "${1:-}" in
    install) install ;;
    start)
        [ $# -eq 3 ] || die "usage: $0 start PORT DIR"
        install
        launch "$2" "$3"
        cat "$3/url"
        ;;
    run)
        [ $# -eq 3 ] || die "usage: $0 run PORT DIR"
        parent=$PPID
        run_dir="$3"
        trap 'stop_dir "$run_dir"' EXIT
        launch "$2" "$3"
        echo "ready"
        until_parent_goes "$parent"
        ;;
    stop)
        [ $# -eq 2 ] || die "usage: $0 stop DIR"
        stop_dir "$2"
        ;;
    *) die "usage: $0 install | start PORT DIR | run PORT DIR | stop DIR" ;;
esac
