#!/usr/bin/env bash
# A throwaway Debian PostgreSQL 15 cluster for the PostgreSQL test suites.
#
#   .ci/pg15.sh start [DIR]   initdb + start in DIR (default: a new temp dir); prints a DSN
#   .ci/pg15.sh stop DIR      stop the cluster and delete DIR
#
# Installs postgresql-15 with apt when its binaries are missing. PostgreSQL refuses to
# run as root: as root, the cluster belongs to (and runs as) the `postgres` user. The
# server listens on a Unix socket in DIR/sock and on 127.0.0.1 at a free port; the DSN
# uses the socket. Logs go to DIR/log; everything but the DSN goes to stderr.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cmd=${1:-start}
dir=${2:-}

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case "$cmd" in
start)
  if [ ! -x "$PGBIN/initdb" ]; then
    echo "pg15.sh: installing postgresql-15 with apt" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql-15 >&2
  fi
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres >&2
  fi
  [ -n "$dir" ] || dir=$(mktemp -d /tmp/flows-pg15.XXXXXX)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$dir"
    chmod 0755 "$dir"
  fi
  as_pg mkdir -p "$dir/sock"
  as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale >&2
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  {
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $port"
    echo "unix_socket_directories = '$dir/sock'"
    echo "max_connections = 200"
    echo "fsync = off"
    echo "synchronous_commit = off"
    echo "full_page_writes = off"
  } | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
  if ! as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/data/log" -w -t 60 start >&2; then
    cat "$dir/data/log" >&2 || true
    exit 1
  fi
  echo "postgresql://postgres@/postgres?host=$dir/sock&port=$port"
  ;;
stop)
  if [ -z "$dir" ]; then
    echo "usage: $0 stop DIR" >&2
    exit 2
  fi
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 || true
  fi
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start [DIR] | stop DIR" >&2
  exit 2
  ;;
esac
