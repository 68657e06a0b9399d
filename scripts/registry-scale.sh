#!/usr/bin/env bash
# The registry scale test (not part of CI): fills a SQLite and a PostgreSQL registry with
# 1 000, 10 000 and 100 000 tenants (two tokens each: 200 000 at the top), and reports
# for each the start-up load time, resident memory, the rows a poll reads after a handful
# of changes (and after 10x as many), and the token + tenant lookup cost. One JSON line
# per run; docs/benchmarks.md keeps the figures.
#
# Usage: scripts/registry-scale.sh [sizes...]   (default: 1000 10000 100000)
# Needs Debian's postgresql package for the PostgreSQL runs (skipped with a message when
# it is not installed).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000 100000)
cargo build --release --example registry_scale >&2
bin="${CARGO_TARGET_DIR:-target}/release/examples/registry_scale"
work=$(mktemp -d)
chmod 755 "$work"
pg_pid=""
cleanup() {
    if [ -n "$pg_pid" ]; then kill "$pg_pid" 2>/dev/null || true; wait "$pg_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

run() { # url tenants changes
    "$bin" --database-url "$1" --tenants "$2" --changes "$3"
}

for n in "${sizes[@]}"; do
    for changes in 10 100; do
        run "sqlite://$work/sqlite-$n-$changes.db" "$n" "$changes"
    done
done

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$pg_bin" ]; then
    echo "PostgreSQL is not installed: skipping the PostgreSQL runs" >&2
    exit 0
fi
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi
mkdir "$work/pg"
[ "$(id -u)" = 0 ] && chown postgres "$work/pg"
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/pg" -U promgate --auth=trust >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$pg_bin/postgres" -D "$work/pg" -p "$port" -k "$work/pg" -c listen_addresses=127.0.0.1 \
    -c fsync=on >"$work/pg.log" 2>&1 &
pg_pid=$!
for _ in $(seq 50); do
    "$pg_bin/pg_isready" -h 127.0.0.1 -p "$port" >/dev/null 2>&1 && break
    sleep 0.2
done
for n in "${sizes[@]}"; do
    for changes in 10 100; do
        db="scale_${n}_${changes}"
        "${as_pg[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U promgate "$db"
        run "postgres://promgate@127.0.0.1:$port/$db" "$n" "$changes"
    done
done
