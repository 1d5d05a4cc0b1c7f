#!/usr/bin/env bash
# bench/trigger.sh: trigger mode (change capture for sources without logical replication,
# such as Heroku Postgres), cutover against Bucardo 5.6, on the same source, in one run.
#
# One source cluster (wal_level = replica, as on Heroku) with a pgbench database, and one
# target cluster holding cutover's target database (bench_cutover), Bucardo's target
# database (bench_bucardo) and Bucardo's own control database (bucardo). Both tools capture
# the same four tables (pgbench_accounts, _branches, _tellers and _history, the last given a
# bigserial primary key first) with their own triggers; the script switches each tool's
# triggers on or off (ALTER TABLE ... ENABLE/DISABLE TRIGGER) so that exactly the capture
# being measured fires. Three measurements:
#
#   1. overhead  pgbench TPC-B on the source, CLIENTS clients for DURATION s, with no capture,
#                with cutover's capture triggers, and with Bucardo's (delta rows plus its
#                per-statement kick NOTIFY), no follower running. ROUNDS rounds, the order
#                rotating. Before each run both change logs are emptied, the pgbench tables
#                vacuumed and a CHECKPOINT taken. Reported: TPS (median), the overhead
#                against no capture, the source cluster's CPU time per transaction (all its
#                processes, from /proc: far less sensitive than TPS to other people's load
#                on a shared machine), WAL bytes per transaction and log bytes per change.
#   2. apply     both captures on, both followers stopped, both targets equal to the source;
#                pgbench -t APPLY_TXNS per client writes a backlog that both logs hold; then,
#                one tool after the other (the order rotating over APPLY_ROUNDS rounds),
#                the follower is started and timed until the backlog is applied. cutover:
#                `cutover db follow` until `cutover db status` shows no backlog; the end is
#                when its last batch was reported. Bucardo: `bucardo start` until no delta
#                row lacks a track row for the target; the end is the last sync run's end
#                (bucardo.syncrun). Both targets are then compared with the source (row
#                counts and a hash of every row). Reported: row changes per second from the
#                follower's start (wall) and during its apply alone (cutover's batch times,
#                Bucardo's sync run times), and the CPU time per 100k changes of the
#                follower's processes and of both clusters.
#   3. lag       for each tool, only its triggers on, its target refreshed and its follower
#                running: pgbench -R at half the median no-capture TPS of step 1 for
#                LAG_DURATION s; every SAMPLE_EVERY s the age of the oldest committed change
#                not yet applied (cutover: backlog.oldest_age_seconds of `cutover --json db
#                status`; Bucardo: the oldest delta row without a track row for the target),
#                0 when there is none. Reported: p50, p95 and max lag, the time to drain
#                once the load stops, the follower's CPU (% of one core) and the source's
#                CPU per transaction during the load.
#
# Before each timed measurement the script waits (up to QUIET_WAIT s) until the 1-minute
# load average is below QUIET_LOAD, and records the figure it found: the machine may be
# shared with other benchmarks. Every cluster, follower and Bucardo daemon it started is
# stopped and every temporary file removed on exit (trap). Nothing leaves 127.0.0.1.
# Passwords reach the clients through the environment (PGPASSWORD, the plan's ${SRC} and
# ${DST}) or files in the work folder, never through a command line.
# This is a benchmark to run by hand; it is not part of the test suite.
#
# Usage:   bench/trigger.sh       (from anywhere; prints a Markdown section for RESULTS.md)
# Knobs (environment):
#   SCALE=10          pgbench scale factor (10 = 1 million accounts)
#   CLIENTS=8         pgbench clients (-c), every step
#   THREADS=2         pgbench threads (-j)
#   DURATION=30       seconds of each overhead run
#   ROUNDS=3          overhead rounds (each: none, cutover, bucardo, order rotating)
#   APPLY_TXNS=5000   transactions per client in each backlog (4 row changes each)
#   APPLY_ROUNDS=3    backlogs applied by each tool
#   LAG_DURATION=60   seconds of rate-limited load for the lag measurement
#   LAG_ROUNDS=1      lag runs of each tool
#   LAG_RATE=         transactions per second for the lag runs (default: half the median
#                     no-capture TPS of the overhead step)
#   SAMPLE_EVERY=0.5  seconds between lag samples
#   STEPS="overhead apply lag"
#   QUIET_LOAD=1.0    wait for a 1-minute load average below this before each timed run
#   QUIET_WAIT=180    seconds to wait at most
#   CUTOVER=          a cutover binary to use instead of building one
#                     (default: `cargo build --release --bin cutover`, target/release/cutover)
#   LOG_DIR=          if set, every log is copied there before cleanup
#   CARGO_TARGET_DIR  honoured when looking for the cutover binary
#
# When run as root, PostgreSQL runs as the `postgres` user (it refuses root). Bucardo, its
# Perl driver and PL/Perl are installed with apt-get when missing (root only; PL/Perl pinned
# to the installed server's version, so that the server itself is not upgraded).

set -euo pipefail
export LC_ALL=C # a "." in $EPOCHREALTIME and in awk's numbers
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
DURATION=${DURATION:-30}
ROUNDS=${ROUNDS:-3}
APPLY_TXNS=${APPLY_TXNS:-5000}
APPLY_ROUNDS=${APPLY_ROUNDS:-3}
LAG_DURATION=${LAG_DURATION:-60}
LAG_ROUNDS=${LAG_ROUNDS:-1}
LAG_RATE=${LAG_RATE:-}
SAMPLE_EVERY=${SAMPLE_EVERY:-0.5}
STEPS=${STEPS:-"overhead apply lag"}
QUIET_LOAD=${QUIET_LOAD:-1.0}
QUIET_WAIT=${QUIET_WAIT:-180}
CUTOVER=${CUTOVER:-}
LOG_DIR=${LOG_DIR:-}

COMMAND_LINE="SCALE=$SCALE CLIENTS=$CLIENTS DURATION=$DURATION ROUNDS=$ROUNDS APPLY_TXNS=$APPLY_TXNS APPLY_ROUNDS=$APPLY_ROUNDS LAG_DURATION=$LAG_DURATION LAG_ROUNDS=$LAG_ROUNDS${LAG_RATE:+ LAG_RATE=$LAG_RATE} bench/trigger.sh${*:+ $*}"

TABLES="pgbench_accounts pgbench_branches pgbench_tellers pgbench_history"
SYNC=bench # Bucardo's sync (and relgroup) name

# Every cluster setting, identical for the source and the target. wal_level = replica: trigger
# mode needs no logical decoding (and Heroku offers none). fsync and synchronous_commit stay
# at their (durable) defaults.
CLUSTER_SETTINGS="
listen_addresses = '127.0.0.1'
password_encryption = 'scram-sha-256'
wal_level = replica
max_connections = 100
shared_buffers = '256MB'
max_wal_size = '4GB'
checkpoint_timeout = '30min'
fsync = on
synchronous_commit = on
log_min_messages = warning
"

# --------------------------------------------------------------------------------------
# Programs

# Bucardo needs: the bucardo program and Bucardo.pm (Debian package bucardo), DBD::Pg
# (libdbd-pg-perl) for itself, and PL/PerlU in the server that holds its control database
# (postgresql-plperl-NN, NN the server's major version, PG_MAJOR). jq reads cutover's JSON.
find_tools() {
    local need=() plperl pin=""
    PG_MAJOR=$("$PGBIN/postgres" --version | sed -E 's/.* ([0-9]+)\..*/\1/')
    command -v bucardo >/dev/null || need+=(bucardo)
    perl -MDBD::Pg -e 1 2>/dev/null || need+=(libdbd-pg-perl)
    plperl="$("$PGBIN/pg_config" --pkglibdir 2>/dev/null || echo "/usr/lib/postgresql/$PG_MAJOR/lib")/plperl.so"
    if [[ ! -e $plperl ]]; then
        # Pinned to the server's own version: a newer PL/Perl would pull a newer server in,
        # under the clusters that other people may be running.
        pin=$(dpkg-query -W -f='${Version}' "postgresql-$PG_MAJOR" 2>/dev/null || true)
        need+=("postgresql-plperl-$PG_MAJOR${pin:+=$pin}")
    fi
    command -v jq >/dev/null || need+=(jq)
    if ((${#need[@]})); then apt_install --no-install-recommends "missing ${need[*]}" "${need[@]}"; fi
    command -v bucardo >/dev/null || die "no bucardo program after the installation"
    [[ -e $plperl ]] || die "no PL/Perl ($plperl) after the installation"
    BUCARDO_SCHEMA=$(dpkg -L bucardo 2>/dev/null | grep -m1 '/bucardo\.schema$' || true)
    [[ -n $BUCARDO_SCHEMA && -r $BUCARDO_SCHEMA ]] || die "Bucardo's bucardo.schema not found (dpkg -L bucardo)"
    BUCARDO_VERSION=$(bucardo --version | awk '{ print $NF }')
    DBD_PG_VERSION=$(perl -MDBD::Pg -e 'print $DBD::Pg::VERSION')
}

# --------------------------------------------------------------------------------------
# Temporary clusters and processes

FOLLOW_PID=""        # cutover db follow
declare -a BG_PIDS=()    # samplers and the like, still running
BUCARDO_READY=""

setup_workdir() {
    WORK=$(mktemp -d /tmp/cutover-bench.XXXXXX)
    use_postgres_user
    mkdir -p "$WORK/logs/bucardo" "$WORK/bucardo-run"
    PASSWORD=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
    printf '%s\n' "$PASSWORD" > "$WORK/pwfile"
    chmod 600 "$WORK/pwfile"
    [[ $(id -u) -eq 0 ]] && chown -R postgres: "$WORK"
    # Every client (psql, pgbench, pg_dump, Bucardo's test connections) logs in as postgres
    # over TCP with this password, taken from the environment.
    export PGPASSWORD=$PASSWORD PGHOST=127.0.0.1 PGUSER=postgres PGSSLMODE=disable
}

# The Bucardo daemon's processes, from its PID files (all of them started by this script).
bucardo_pids() { cat "$WORK"/bucardo-run/*.pid 2>/dev/null | grep -Eo '^[0-9]+' || true; }

# stop_processes: run by lib.sh's cleanup on exit, before it keeps the logs and removes WORK.
stop_processes() {
    local pid dir
    for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    [[ -n $FOLLOW_PID ]] && kill "$FOLLOW_PID" 2>/dev/null && wait "$FOLLOW_PID" 2>/dev/null
    if [[ -n $BUCARDO_READY ]]; then
        bucardo_cmd stop >/dev/null 2>&1
        sleep 2
        for pid in $(bucardo_pids); do kill "$pid" 2>/dev/null; done
    fi
    stop_clusters
    if [[ -n $LOG_DIR && -n $WORK ]]; then
        for dir in "${CLUSTERS[@]}"; do cp "$dir/server.log" "$WORK/logs/server-$(basename "$dir").log"; done
    fi
}

port_of() { local p="PORT_$1"; echo "${!p}"; }

# sql CLUSTER DB QUERY: runs a query, unaligned output. The password comes from PGPASSWORD.
sql() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(port_of "$1")" -d "$2" -c "$3"; }
# sql_in CLUSTER DB: runs the SQL on stdin (for statements that carry a password).
sql_in() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(port_of "$1")" -d "$2" >/dev/null; }

# url CLUSTER DB: a URL for cutover's plan; only ever handed over in the environment.
url() { echo "postgres://postgres:$PASSWORD@127.0.0.1:$(port_of "$1")/$2?sslmode=disable"; }

# --------------------------------------------------------------------------------------
# Timing helpers

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
median() { tr ' ' '\n' <<<"$*" | grep . | sort -g | awk '{ v[NR] = $1 } END { if (NR) printf "%.3f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { printf f, v }'; } # fmt VALUE FORMAT
pct() { # pct P VALUES...: the P-th percentile (nearest rank) of the values, 2 decimals
    local p=$1; shift
    tr ' ' '\n' <<<"$*" | grep . | sort -g | awk -v p="$p" '{ v[NR] = $1 } END { i = int(NR * p / 100 + 0.999999); if (i < 1) i = 1; printf "%.2f", v[i] }'
}
load1() { awk '{ print $1 }' /proc/loadavg; }

# CPU time, which other people's load on the machine changes far less than TPS: in clock
# ticks from /proc/PID/stat (utime + stime, and cutime + cstime for ended children).
CLK_TCK=$(getconf CLK_TCK)
# cluster_ticks NAME: CPU used so far by a cluster: its postmaster, its live children (the
# backends, walwriter, autovacuum, ...) and the children that have ended.
cluster_ticks() {
    local pm
    pm=$(head -n 1 "$WORK/$1/postmaster.pid")
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm" '{ pid = $1; line = $0; sub(/^.*\) /, "", line); split(line, f, " ")
        if (pid == pm) t += f[12] + f[13] + f[14] + f[15]; else if (f[2] == pm) t += f[12] + f[13] } END { print t + 0 }'
}
# pid_ticks PID...: CPU used so far by these processes and their ended children.
pid_ticks() {
    local p
    for p in "$@"; do cat "/proc/$p/stat" 2>/dev/null || true; done \
        | awk '{ line = $0; sub(/^.*\) /, "", line); split(line, f, " "); t += f[12] + f[13] + f[14] + f[15] } END { print t + 0 }'
}
# follower_ticks TOOL: CPU used so far by the tool's running follower.
follower_ticks() { if [[ $1 == cutover ]]; then pid_ticks "$FOLLOW_PID"; else pid_ticks $(bucardo_pids); fi; }
# per TICKS N SCALE: TICKS as seconds, times SCALE, per N (e.g. µs per transaction).
per() { awk -v t="$1" -v n="$2" -v k="$3" -v h="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.1f", t / h * k / n; else print "-" }'; }

# wait_quiet: waits until the 1-minute load average is below QUIET_LOAD, QUIET_WAIT s at
# most; sets LOAD (the figure when the measurement starts).
wait_quiet() {
    local deadline=$((SECONDS + QUIET_WAIT))
    LOAD=$(load1)
    while awk -v l="$LOAD" -v q="$QUIET_LOAD" 'BEGIN { exit !(l >= q) }' && ((SECONDS < deadline)); do
        sleep 5
        LOAD=$(load1)
    done
    if awk -v l="$LOAD" -v q="$QUIET_LOAD" 'BEGIN { exit !(l >= q) }'; then
        log "warning: the machine stays busy (1-minute load average $LOAD after ${QUIET_WAIT}s); measuring anyway"
        BUSY_RUNS=$((BUSY_RUNS + 1))
    fi
}
BUSY_RUNS=0

# --------------------------------------------------------------------------------------
# Data

make_clusters() {
    start_cluster source
    start_cluster target
    sql source postgres "CREATE DATABASE bench" >/dev/null
    log "pgbench -i -s $SCALE on the source"
    pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PORT_source" bench >"$WORK/logs/pgbench-init.log" 2>&1 \
        || { cat "$WORK/logs/pgbench-init.log" >&2; die "pgbench -i failed"; }
    # Both tools need a primary key on every table they follow.
    sql source bench "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY"
    sql source bench "VACUUM ANALYZE"
    SOURCE_SIZE=$(sql source bench "SELECT pg_size_pretty(pg_database_size('bench'))")
    log "source ready: $SOURCE_SIZE"
}

# checksum CLUSTER DB: per table, the row count and the sum of a 64-bit hash of every row.
checksum() {
    sql "$1" "$2" "SELECT string_agg(t || '=' || n || ':' || h, ' ' ORDER BY t) FROM (
        SELECT 'accounts' t, count(*) n, coalesce(sum(hashtextextended(x::text, 0)), 0) h FROM pgbench_accounts x UNION ALL
        SELECT 'branches', count(*), coalesce(sum(hashtextextended(x::text, 0)), 0) FROM pgbench_branches x UNION ALL
        SELECT 'tellers', count(*), coalesce(sum(hashtextextended(x::text, 0)), 0) FROM pgbench_tellers x UNION ALL
        SELECT 'history', count(*), coalesce(sum(hashtextextended(x::text, 0)), 0) FROM pgbench_history x) s"
}

# verify_equal TOOL: the tool's target database against the source (which must be quiet).
verify_equal() {
    local want got
    want=$(checksum source bench)
    got=$(checksum target "bench_$1")
    [[ $got == "$want" ]] || die "$1's target differs from the source: $got, the source has $want"
    log "$1's target equals the source ($(sed -E 's/:-?[0-9]+//g' <<<"$want"))"
}

# capture MODE: which triggers fire on the source: none, cutover, bucardo or both.
capture() {
    local mode=$1 t c b q=""
    case $mode in
        none) c=DISABLE b=DISABLE ;; cutover) c=ENABLE b=DISABLE ;;
        bucardo) c=DISABLE b=ENABLE ;; both) c=ENABLE b=ENABLE ;;
        *) die "capture $mode?" ;;
    esac
    for t in $TABLES; do
        q+="ALTER TABLE $t $c TRIGGER cutover_capture; ALTER TABLE $t $c TRIGGER cutover_capture_truncate;"
        q+="ALTER TABLE $t $b TRIGGER bucardo_delta; ALTER TABLE $t $b TRIGGER bucardo_kick_$SYNC; ALTER TABLE $t $b TRIGGER bucardo_note_trunc_$SYNC;"
    done
    sql source bench "BEGIN; $q COMMIT;" >/dev/null
}

# Bucardo's per-table log tables on the source.
bucardo_log_tables() {
    local t out=""
    for t in $TABLES; do out+="bucardo.delta_public_$t, bucardo.track_public_$t, bucardo.stage_public_$t, "; done
    echo "${out%, }"
}

# clear_logs: empties both change logs (the overhead runs start from the same, empty log).
clear_logs() { sql source bench "TRUNCATE cutover.changes; TRUNCATE $(bucardo_log_tables)" >/dev/null; }

# log_figures: "ROWS BYTES" of the log of the capture that is on (for the overhead runs).
log_figures() {
    case $1 in
        cutover) sql source bench "SELECT count(*) || ' ' || pg_total_relation_size('cutover.changes') FROM cutover.changes" ;;
        bucardo)
            local t q="SELECT sum(n) || ' ' || sum(b) FROM ("
            for t in $TABLES; do q+="SELECT count(*) n, pg_total_relation_size('bucardo.delta_public_$t') b FROM bucardo.delta_public_$t UNION ALL "; done
            sql source bench "${q% UNION ALL }) s" ;;
        *) echo "0 0" ;;
    esac
}

# --------------------------------------------------------------------------------------
# Bucardo

bucardo_cmd() { (cd "$WORK" && bucardo --bucardorc "$WORK/bucardorc" "$@"); }

# The oldest committed change Bucardo has not applied: "count age_seconds" (age 0 if none).
# A delta row is applied once a track row for the target carries its transaction time.
bucardo_backlog_sql() {
    local t q=""
    for t in $TABLES; do
        q+="SELECT d.txntime FROM bucardo.delta_public_$t d WHERE NOT EXISTS (SELECT 1 FROM bucardo.track_public_$t k WHERE k.target = 'dbgroup $SYNC' AND k.txntime = d.txntime) UNION ALL "
    done
    echo "SELECT count(*) || ' ' || coalesce(extract(epoch FROM clock_timestamp() - min(txntime)), 0) FROM (${q% UNION ALL }) s"
}

# setup_bucardo: its control database in the target cluster, the source and its own target
# database registered, the four tables in a relgroup and one sync (source -> target).
# `bucardo install` is not used: it creates its role with the password on a psql command
# line and writes ~/.pgpass; the same steps are done here by hand.
setup_bucardo() {
    log "installing Bucardo $BUCARDO_VERSION's control database in the target cluster"
    sql_in target postgres <<SQL
CREATE ROLE bucardo SUPERUSER LOGIN PASSWORD '$PASSWORD';
SQL
    psql -X -At -h 127.0.0.1 -p "$PORT_target" -d postgres -f "$BUCARDO_SCHEMA" >"$WORK/logs/bucardo-install.log" 2>&1 || true
    grep -q 'Pl/PerlU was successfully installed' "$WORK/logs/bucardo-install.log" \
        || { tail -n 20 "$WORK/logs/bucardo-install.log" >&2; die "Bucardo's schema did not install"; }
    # Bucardo's files (PID files, logs, reason and warning files) in the work folder.
    sql target bucardo "
        UPDATE bucardo.bucardo_config SET setting = '$WORK/bucardo-run' WHERE name = 'piddir';
        UPDATE bucardo.bucardo_config SET setting = '$WORK/logs/bucardo/restart.reason' WHERE name = 'reason_file';
        UPDATE bucardo.bucardo_config SET setting = '$WORK/logs/bucardo/conflict.log' WHERE name = 'log_conflict_file';
        UPDATE bucardo.bucardo_config SET setting = '$WORK/logs/bucardo/warning.log' WHERE name = 'warning_file';" >/dev/null
    # The program's own settings, password included, in a file only root can read.
    (umask 077 && cat >"$WORK/bucardorc" <<RC
dbhost = 127.0.0.1
dbport = $PORT_target
dbname = bucardo
dbuser = bucardo
dbpass = $PASSWORD
piddir = $WORK/bucardo-run
logdest = $WORK/logs/bucardo
RC
)
    BUCARDO_READY=1
    # Its target: the tables' definitions (keys included) from the source; the rows come
    # with refresh_bucardo.
    sql target postgres "CREATE DATABASE bench_bucardo" >/dev/null
    pg_dump --schema-only -h 127.0.0.1 -p "$PORT_source" --table='public.pgbench_*' bench 2>"$WORK/logs/bucardo-schema.err" \
        | psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT_target" -d bench_bucardo >/dev/null \
        || die "copying the schema to bench_bucardo failed"
    {
        bucardo_cmd add db src dbname=bench host=127.0.0.1 port="$PORT_source" user=postgres
        bucardo_cmd add db dst dbname=bench_bucardo host=127.0.0.1 port="$PORT_target" user=postgres
    } >"$WORK/logs/bucardo-setup.log" 2>&1 || { cat "$WORK/logs/bucardo-setup.log" >&2; die "bucardo add db failed"; }
    # The daemon (and validate_sync, which runs inside the control database) connects with
    # the password stored in bucardo.db; it goes in through psql's standard input.
    sql_in target bucardo <<SQL
UPDATE bucardo.db SET dbpass = '$PASSWORD';
SQL
    local tables=() t
    for t in $TABLES; do tables+=("public.$t"); done
    {
        bucardo_cmd add table "${tables[@]}" db=src relgroup=$SYNC
        bucardo_cmd add sync $SYNC relgroup=$SYNC dbs=src:source,dst:target
    } >>"$WORK/logs/bucardo-setup.log" 2>&1 || { cat "$WORK/logs/bucardo-setup.log" >&2; die "bucardo add sync failed"; }
    local n
    n=$(sql source bench "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'bucardo%' AND tgrelid::regclass::text LIKE 'pgbench_%'")
    [[ $n == 12 ]] || die "expected 12 Bucardo triggers on the source, found $n"
    BUCARDO_SETTINGS=$(sql target bucardo "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM bucardo.bucardo_config WHERE name IN ('kid_sleep','ctl_sleep','mcp_loop_sleep','kid_nodeltarows_sleep','endsync_sleep')")
    BUCARDO_SQL=$(bucardo_backlog_sql)
    log "Bucardo sync $SYNC set up (src -> bench_bucardo); its triggers are on the source"
}

# refresh_bucardo: Bucardo's target equal to the source, its delta and track tables empty
# (daemon stopped, source quiet).
refresh_bucardo() {
    sql target bench_bucardo "TRUNCATE $(tr ' ' ',' <<<"$TABLES")" >/dev/null
    pg_dump --data-only -h 127.0.0.1 -p "$PORT_source" --table='public.pgbench_*' bench 2>"$WORK/logs/bucardo-refresh.err" \
        | psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT_target" -d bench_bucardo >/dev/null \
        || die "refreshing bench_bucardo failed"
    sql source bench "TRUNCATE $(bucardo_log_tables)" >/dev/null
    sql target bench_bucardo "VACUUM ANALYZE" >/dev/null
}

# start_bucardo: starts the daemon (it forks; the MCP, a controller and a kid per sync).
start_bucardo() {
    bucardo_cmd start >>"$WORK/logs/bucardo-start.log" 2>&1 || { tail "$WORK/logs/bucardo-start.log" >&2; die "bucardo start failed"; }
    local i
    for i in $(seq 1 600); do
        [[ -e $WORK/bucardo-run/bucardo.kid.sync.$SYNC.pid ]] && return 0
        sleep 0.05
    done
    die "Bucardo started no kid for sync $SYNC (see its log)"
}

stop_bucardo() {
    local i
    bucardo_cmd stop >>"$WORK/logs/bucardo-start.log" 2>&1 || true
    for i in $(seq 1 300); do
        local alive=0 pid
        for pid in $(bucardo_pids); do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || return 0
        sleep 0.1
    done
    die "the Bucardo daemon did not stop"
}

# bucardo_backlog: "count age" of what Bucardo has still to apply.
bucardo_backlog() { sql source bench "$BUCARDO_SQL"; }

# --------------------------------------------------------------------------------------
# cutover

# The plan: trigger mode; Bucardo's own tables (schema bucardo) are not moved.
# (sync.schemas = ["public"] would be the natural way; see RESULTS.md for why it is not.)
write_plan() {
    local ex
    ex=$(sql source bench "SELECT string_agg(format('\"bucardo.%s\"', relname), ', ' ORDER BY relname) FROM pg_class WHERE relnamespace = 'bucardo'::regnamespace AND relkind IN ('r', 'p')")
    PLAN="$WORK/cutover.toml"
    cat >"$PLAN" <<TOML
[source]
url = "\${SRC}"

[target]
url = "\${DST}"

[sync]
mode = "trigger"
exclude_tables = [$ex]
TOML
    export SRC DST # what the plan refers to
    SRC=$(url source bench)
    DST=$(url target bench_cutover)
}

cutover_cmd() { "$CUTOVER" --plan "$PLAN" "$@"; }

# refresh_cutover: a new target database, copied and captured by `cutover db sync --no-follow`
# (follower stopped, source quiet).
refresh_cutover() {
    cutover_cmd db cleanup >>"$WORK/logs/cutover-cleanup.log" 2>&1 || true
    PGOPTIONS="-c client_min_messages=warning" sql target postgres "DROP DATABASE IF EXISTS bench_cutover WITH (FORCE)" >/dev/null
    sql target postgres "CREATE DATABASE bench_cutover" >/dev/null
    cutover_cmd db sync --no-follow >>"$WORK/logs/cutover-sync.out" 2>>"$WORK/logs/cutover-sync.err" \
        || { tail -n 20 "$WORK/logs/cutover-sync.err" >&2; die "cutover db sync --no-follow failed"; }
    sql target bench_cutover "VACUUM ANALYZE" >/dev/null
}

# cutover_backlog: "count age" of what cutover has still to apply.
cutover_backlog() {
    cutover_cmd --json db status 2>>"$WORK/logs/cutover-status.err" \
        | jq -r '"\(.backlog.changes) \(.backlog.oldest_age_seconds // 0)"'
}

# start_follow NAME: `cutover --json db follow` in the background; every event line it prints
# gets the time it arrived, in $WORK/logs/NAME.events. Sets FOLLOW_PID (cutover's own).
start_follow() {
    local name=$1
    "$CUTOVER" --plan "$PLAN" --json db follow 2>"$WORK/logs/$name.err" \
        > >(while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$WORK/logs/$name.events") &
    FOLLOW_PID=$!
}

# stop_follow: SIGTERM (the batch in progress commits with its position or not at all).
stop_follow() {
    [[ -n $FOLLOW_PID ]] || return 0
    kill -TERM "$FOLLOW_PID" 2>/dev/null || true
    wait "$FOLLOW_PID" 2>/dev/null || true
    FOLLOW_PID=""
    sleep 0.3 # the reader that timestamps its lines sees the end of the pipe
}

# --------------------------------------------------------------------------------------
# The generic "follower" of a tool

backlog_of() { "$1_backlog"; }
start_follower() { if [[ $1 == cutover ]]; then start_follow "$2"; else start_bucardo; fi; }
stop_follower() { if [[ $1 == cutover ]]; then stop_follow; else stop_bucardo; fi; }

# wait_caught_up TOOL TIMEOUT: polls every 0.2 s until the tool's backlog is empty.
wait_caught_up() {
    local tool=$1 deadline=$((SECONDS + $2)) b
    while true; do
        b=$(backlog_of "$tool" 2>/dev/null || echo "? ?")
        [[ ${b%% *} == 0 ]] && return 0
        ((SECONDS < deadline)) || die "$tool did not catch up within $2 s (backlog: $b)"
        sleep 0.2
    done
}

# --------------------------------------------------------------------------------------
# pgbench

# run_pgbench NAME ARGS...: pgbench -n on the source; sets TPS, LAT (ms), NTX (transactions).
run_pgbench() {
    local name=$1; shift
    pgbench -n -c "$CLIENTS" -j "$THREADS" -h 127.0.0.1 -p "$PORT_source" "$@" bench \
        >"$WORK/logs/$name.pgbench" 2>&1 || { tail "$WORK/logs/$name.pgbench" >&2; die "pgbench ($name) failed"; }
    TPS=$(awk '/^tps = / { printf "%.0f", $3 }' "$WORK/logs/$name.pgbench")
    LAT=$(awk '/^latency average = / { print $4 }' "$WORK/logs/$name.pgbench")
    NTX=$(awk -F': ' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1] + 0 }' "$WORK/logs/$name.pgbench")
    [[ -n $TPS ]] || die "no TPS in pgbench's output ($name)"
}

wal_lsn() { sql source bench "SELECT pg_current_wal_lsn()"; }
wal_diff() { sql source bench "SELECT pg_wal_lsn_diff('$2', '$1')::bigint"; }

# --------------------------------------------------------------------------------------
# 1. Overhead on the source's writes

declare -A OH_TPS=() OH_RUNS=() OH_WAL=() OH_LOG=() OH_CPU=()

overhead() {
    local order=(none cutover bucardo) round mode lsn0 lsn1 wal figs rows bytes c0 c1 cpu
    stop_follow
    for ((round = 1; round <= ROUNDS; round++)); do
        for mode in "${order[@]}"; do
            clear_logs
            capture "$mode"
            sql source bench "VACUUM ANALYZE $(tr ' ' ',' <<<"$TABLES")" >/dev/null
            sql source bench "CHECKPOINT" >/dev/null
            wait_quiet
            log "overhead round $round: $mode ($CLIENTS clients, $DURATION s; load $LOAD)"
            lsn0=$(wal_lsn)
            c0=$(cluster_ticks source)
            run_pgbench "overhead-$mode-r$round" -T "$DURATION"
            sleep 0.5 # the backends of pgbench's sessions end
            c1=$(cluster_ticks source)
            lsn1=$(wal_lsn)
            cpu=$(per $((c1 - c0)) "$NTX" 1000000)
            wal=$(wal_diff "$lsn0" "$lsn1")
            figs=$(log_figures "$mode"); rows=${figs% *}; bytes=${figs#* }
            log "overhead round $round: $mode $TPS tps, latency $LAT ms, source CPU $cpu µs/txn, WAL $((wal / 1024 / 1024)) MiB, log $rows rows"
            OH_TPS[$mode]+=" $TPS"
            OH_RUNS[$mode]+="${OH_RUNS[$mode]:+; }$TPS, $cpu µs (load $LOAD)"
            OH_CPU[$mode]+=" $cpu"
            OH_WAL[$mode]+=" $(awk -v w="$wal" -v n="$NTX" 'BEGIN { printf "%.0f", w / n }')"
            OH_LOG[$mode]+=" $(awk -v r="$rows" -v b="$bytes" 'BEGIN { if (r > 0) printf "%.0f", b / r; else print 0 }')"
        done
        order=("${order[@]:1}" "${order[0]}")
    done
    capture none
    clear_logs
}

# --------------------------------------------------------------------------------------
# 2. Apply throughput on a backlog

declare -A AP_WALL=() AP_APPLY=() AP_RUNS=() AP_FCPU=() AP_DBCPU=()
AP_CHANGES=""

# apply_cutover ROUND: times `cutover db follow` on the backlog; sets WALL and APPLY (s).
apply_cutover() {
    local r=$1 t0 tend
    t0=$EPOCHREALTIME
    start_follow "apply-cutover-r$r"
    wait_caught_up cutover 600
    FTICKS=$(follower_ticks cutover)
    stop_follow
    # The end: the arrival of its last batch's report (a moment after the batch's commit).
    tend=$(awk '/"event":"applied"/ { t = $1 } END { print t }' "$WORK/logs/apply-cutover-r$r.events")
    [[ -n $tend ]] || die "cutover reported no batch"
    WALL=$(elapsed "$t0" "$tend")
    APPLY=$(sed 's/^[^ ]* //' "$WORK/logs/apply-cutover-r$r.events" | jq -rs '[.[] | select(.event == "applied") | .ms] | add / 1000 | . * 1000 | round / 1000')
    DETAIL="$(sed 's/^[^ ]* //' "$WORK/logs/apply-cutover-r$r.events" | jq -rs '[.[] | select(.event == "applied")] | "\(length) batches, \(map(.batch.keys) | add) keys"')"
}

# apply_bucardo ROUND: times the Bucardo daemon on the backlog; sets WALL and APPLY (s).
apply_bucardo() {
    local r=$1 t0 since
    since=$(sql target bucardo "SELECT now()")
    t0=$EPOCHREALTIME
    start_bucardo
    wait_caught_up bucardo 600
    # The end: the end of its last sync run that changed something, as Bucardo records it
    # (written a moment after the commit that the backlog query sees).
    local figs i where="FROM bucardo.syncrun WHERE sync = '$SYNC' AND started >= '$since'"
    for i in $(seq 1 100); do
        [[ $(sql target bucardo "SELECT count(*) FILTER (WHERE ended IS NULL) = 0 AND count(*) FILTER (WHERE deletes + inserts > 0) > 0 $where") == t ]] && break
        sleep 0.1
    done
    FTICKS=$(follower_ticks bucardo)
    figs=$(sql target bucardo "SELECT extract(epoch FROM max(ended))::text || ' ' || extract(epoch FROM sum(ended - started))::text || ' ' || count(*) || ' ' || sum(deletes) || ' ' || sum(inserts)
                                 $where AND ended IS NOT NULL AND deletes + inserts > 0")
    stop_bucardo
    local tend runs del ins
    read -r tend APPLY runs del ins <<<"$figs"
    WALL=$(elapsed "$t0" "$tend")
    APPLY=$(awk -v a="$APPLY" 'BEGIN { printf "%.3f", a }')
    DETAIL="$runs sync runs, $del rows deleted, $ins inserted"
}

apply() {
    local order=(cutover bucardo) round tool want n b s0 s1 d0 d1 fcpu dbcpu
    stop_follow
    capture both
    log "apply: refreshing both targets"
    refresh_cutover
    refresh_bucardo
    capture both
    verify_equal cutover
    verify_equal bucardo
    for ((round = 1; round <= APPLY_ROUNDS; round++)); do
        sql source bench "CHECKPOINT" >/dev/null
        log "apply round $round: writing the backlog (pgbench -t $APPLY_TXNS, $CLIENTS clients)"
        run_pgbench "apply-backlog-r$round" -t "$APPLY_TXNS"
        n=$((CLIENTS * APPLY_TXNS * 4))
        AP_CHANGES=$n
        log "apply round $round: $((CLIENTS * APPLY_TXNS)) transactions, $n row changes; logs: cutover $(cutover_backlog | cut -d' ' -f1), Bucardo $(bucardo_backlog | cut -d' ' -f1) rows"
        sql source bench "VACUUM ANALYZE $(tr ' ' ',' <<<"$TABLES")" >/dev/null
        sql source bench "CHECKPOINT" >/dev/null
        sql target bench_cutover "CHECKPOINT" >/dev/null
        for tool in "${order[@]}"; do
            wait_quiet
            log "apply round $round: $tool (load $LOAD)"
            s0=$(cluster_ticks source); d0=$(cluster_ticks target)
            "apply_$tool" "$round"
            s1=$(cluster_ticks source); d1=$(cluster_ticks target)
            fcpu=$(per "$FTICKS" "$n" 100000)
            dbcpu=$(per $((s1 - s0 + d1 - d0)) "$n" 100000)
            DETAIL+="; CPU per 100k changes: follower $fcpu s, databases $dbcpu s"
            log "apply round $round: $tool took $WALL s from its start, $APPLY s applying ($DETAIL)"
            verify_equal "$tool"
            AP_WALL[$tool]+=" $WALL"
            AP_APPLY[$tool]+=" $APPLY"
            AP_FCPU[$tool]+=" $fcpu"
            AP_DBCPU[$tool]+=" $dbcpu"
            AP_RUNS[$tool]+="${AP_RUNS[$tool]:+; }$WALL / $APPLY s (load $LOAD; $DETAIL)"
        done
        order=("${order[@]:1}" "${order[0]}")
    done
}

# --------------------------------------------------------------------------------------
# 3. Lag under load

declare -A LAG_P50=() LAG_P95=() LAG_MAX=() LAG_RUNS=() LAG_DRAIN=() LAG_FCPU=() LAG_SCPU=()

# sample_lag TOOL FILE: one "time age count" line every SAMPLE_EVERY s, until killed.
sample_lag() {
    local tool=$1 out=$2 next b
    next=$EPOCHREALTIME
    while true; do
        b=$(backlog_of "$tool" 2>/dev/null || echo "")
        [[ -n $b ]] && printf '%s %s %s\n' "$EPOCHREALTIME" "${b#* }" "${b%% *}" >>"$out"
        next=$(awk -v n="$next" -v s="$SAMPLE_EVERY" 'BEGIN { printf "%.6f", n + s }')
        sleep "$(awk -v n="$next" -v now="$EPOCHREALTIME" 'BEGIN { d = n - now; printf "%.3f", (d > 0 ? d : 0) }')"
    done
}

LAG_BUCARDO_SINCE=""
lag_run() {
    local tool=$1 r=$2 samples="$WORK/logs/lag-$1-r$2.samples" spid t0 t1 ages f0 f1 c0 c1 l0 fcpu scpu
    stop_follow
    log "lag $tool round $r: refreshing its target"
    "refresh_$tool"
    capture "$tool"
    start_follower "$tool" "lag-$tool-r$r"
    wait_caught_up "$tool" 120
    wait_quiet
    log "lag $tool round $r: pgbench -R $RATE for $LAG_DURATION s (load $LOAD)"
    : >"$samples"
    [[ $tool == bucardo && -z $LAG_BUCARDO_SINCE ]] && LAG_BUCARDO_SINCE=$(sql target bucardo "SELECT now()")
    sample_lag "$tool" "$samples" &
    spid=$!
    BG_PIDS+=("$spid")
    l0=$EPOCHREALTIME; f0=$(follower_ticks "$tool"); c0=$(cluster_ticks source)
    run_pgbench "lag-$tool-r$r" -R "$RATE" -T "$LAG_DURATION"
    t0=$EPOCHREALTIME
    f1=$(follower_ticks "$tool"); c1=$(cluster_ticks source)
    fcpu=$(awk -v t=$((f1 - f0)) -v h="$CLK_TCK" -v a="$l0" -v b="$t0" 'BEGIN { printf "%.0f", 100 * t / h / (b - a) }')
    scpu=$(per $((c1 - c0)) "$NTX" 1000000)
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    BG_PIDS=()
    wait_caught_up "$tool" 600
    t1=$EPOCHREALTIME
    stop_follower "$tool"
    verify_equal "$tool"
    ages=$(awk '{ print $2 }' "$samples" | tr '\n' ' ')
    LAG_P50[$tool]+=" $(pct 50 $ages)"
    LAG_P95[$tool]+=" $(pct 95 $ages)"
    LAG_MAX[$tool]+=" $(pct 100 $ages)"
    LAG_DRAIN[$tool]+=" $(elapsed "$t0" "$t1")"
    LAG_FCPU[$tool]+=" $fcpu"
    LAG_SCPU[$tool]+=" $scpu"
    LAG_RUNS[$tool]+="${LAG_RUNS[$tool]:+; }p50 $(pct 50 $ages) / p95 $(pct 95 $ages) / max $(pct 100 $ages) s over $(wc -l <"$samples") samples, backlog max $(awk '$3 > m { m = $3 } END { print m + 0 }' "$samples") changes; follower $fcpu% of a core; source $scpu µs CPU/txn; pgbench $TPS tps, latency $LAT ms (load $LOAD)"
    log "lag $tool round $r: ${LAG_RUNS[$tool]##*; }"
}

lag() {
    local order=(cutover bucardo) r tool
    if [[ -n $LAG_RATE ]]; then
        RATE=$LAG_RATE
    elif [[ -n ${OH_TPS[none]:-} ]]; then
        RATE=$(awk -v t="$(median ${OH_TPS[none]})" 'BEGIN { printf "%.0f", t / 2 }')
    else
        die "the lag step needs LAG_RATE, or the overhead step before it"
    fi
    for ((r = 1; r <= LAG_ROUNDS; r++)); do
        for tool in "${order[@]}"; do lag_run "$tool" "$r"; done
        order=("${order[@]:1}" "${order[0]}")
    done
    capture both
}

# --------------------------------------------------------------------------------------
# Report

report() {
    local base mode tool med w a
    echo
    echo "## Trigger mode: cutover vs Bucardo $BUCARDO_VERSION (bench/trigger.sh)"
    echo
    echo "- command: \`$COMMAND_LINE\`"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB memory, $(uname -sr); timed runs that started with the 1-minute load average still at or above $QUIET_LOAD after waiting ${QUIET_WAIT}s: $BUSY_RUNS"
    echo "- versions: PostgreSQL $("$PGBIN/postgres" --version | sed 's/.*(PostgreSQL) //'); Bucardo $BUCARDO_VERSION (DBD::Pg $DBD_PG_VERSION; $BUCARDO_SETTINGS); cutover $("$CUTOVER" --version | awk '{ print $2 }') built from $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$( [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] && echo ' + uncommitted changes') ($CUTOVER_BUILT)"
    echo "- data: pgbench scale $SCALE ($SOURCE_SIZE), pgbench_history with a bigserial key; $CLIENTS clients, $THREADS threads, TPC-B (4 row changes per transaction)"
    if [[ -n ${OH_TPS[none]:-} ]]; then
        base=$(median ${OH_TPS[none]})
        echo
        echo "### 1. Source write overhead ($DURATION s per run, $ROUNDS rounds, medians)"
        echo
        echo "| capture | TPS | ÷ none | overhead | source CPU µs/txn | + vs none | WAL bytes/txn | log bytes/change | every run: TPS, CPU µs/txn (load before) |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
        for mode in none cutover bucardo; do
            med=$(median ${OH_TPS[$mode]})
            echo "| $mode | $(fmt "$med" %.0f) | $(ratio "$med" "$base") | $(awk -v m="$med" -v b="$base" 'BEGIN { printf "%.1f%%", 100 * (1 - m / b) }') | $(fmt "$(median ${OH_CPU[$mode]})" %.0f) | $(awk -v m="$(median ${OH_CPU[$mode]})" -v b="$(median ${OH_CPU[none]})" 'BEGIN { printf "%+.0f", m - b }') | $(fmt "$(median ${OH_WAL[$mode]})" %.0f) | $( [[ $mode == none ]] && echo - || fmt "$(median ${OH_LOG[$mode]})" %.0f) | ${OH_RUNS[$mode]} |"
        done
    fi
    if [[ -n ${AP_WALL[cutover]:-} ]]; then
        echo
        echo "### 2. Apply throughput ($APPLY_ROUNDS backlogs of $((CLIENTS * APPLY_TXNS)) transactions = $AP_CHANGES row changes, medians)"
        echo
        echo "| follower | s from start | changes/s from start | s applying | changes/s applying | CPU s per 100k changes: follower / databases | every run: s from start / applying (load before; detail) |"
        echo "|---|---:|---:|---:|---:|---:|---|"
        for tool in cutover bucardo; do
            w=$(median ${AP_WALL[$tool]}); a=$(median ${AP_APPLY[$tool]})
            echo "| $tool | $(fmt "$w" %.2f) | $(awk -v n="$AP_CHANGES" -v s="$w" 'BEGIN { printf "%.0f", n / s }') | $(fmt "$a" %.2f) | $(awk -v n="$AP_CHANGES" -v s="$a" 'BEGIN { printf "%.0f", n / s }') | $(fmt "$(median ${AP_FCPU[$tool]})" %.1f) / $(fmt "$(median ${AP_DBCPU[$tool]})" %.1f) | ${AP_RUNS[$tool]} |"
        done
        echo
        echo "cutover ÷ Bucardo, changes per second: from start $(ratio "$(median ${AP_WALL[bucardo]})" "$(median ${AP_WALL[cutover]})")×, applying $(ratio "$(median ${AP_APPLY[bucardo]})" "$(median ${AP_APPLY[cutover]})")×."
    fi
    if [[ -n ${LAG_P50[cutover]:-} ]]; then
        echo
        echo "### 3. Lag at $RATE TPS (half the no-capture TPS; $LAG_DURATION s, a sample every $SAMPLE_EVERY s, $LAG_ROUNDS round(s), medians)"
        echo
        echo "| follower | p50 s | p95 s | max s | drain after the load, s | follower CPU, % of a core | source CPU µs/txn | every run |"
        echo "|---|---:|---:|---:|---:|---:|---:|---|"
        for tool in cutover bucardo; do
            echo "| $tool | $(fmt "$(median ${LAG_P50[$tool]})" %.2f) | $(fmt "$(median ${LAG_P95[$tool]})" %.2f) | $(fmt "$(median ${LAG_MAX[$tool]})" %.2f) | $(fmt "$(median ${LAG_DRAIN[$tool]})" %.2f) | $(fmt "$(median ${LAG_FCPU[$tool]})" %.0f) | $(fmt "$(median ${LAG_SCPU[$tool]})" %.0f) | ${LAG_RUNS[$tool]} |"
        done
        echo
        echo "cutover's batches during the lag run(s): $(cat "$WORK"/logs/lag-cutover-r*.events 2>/dev/null | sed 's/^[^ ]* //' | jq -rs '[.[] | select(.event == "applied")] | if length == 0 then "none" else "\(length) batches, \((map(.batch.changes) | add) / length | floor) changes and \((map(.ms) | add) / length | floor) ms each on average" end')."
        echo "Bucardo's sync runs during the lag run(s): $(sql target bucardo "SELECT count(*) || ' runs, ' || round(avg(inserts)) || ' rows copied and ' || round(avg(extract(epoch FROM ended - started)) * 1000) || ' ms each on average' FROM bucardo.syncrun WHERE started >= '$LAG_BUCARDO_SINCE' AND deletes + inserts > 0" 2>/dev/null || echo '?')."
    fi
}

main() {
    local step
    for step in $STEPS; do
        case $step in overhead | apply | lag) ;; *) die "unknown step $step" ;; esac
    done
    find_pg_bindir
    find_tools
    setup_workdir
    build_cutover
    cd "$WORK" # whatever a tool writes to its working folder is removed with it
    make_clusters
    setup_bucardo
    write_plan
    log "cutover db sync --no-follow (copy, capture)"
    refresh_cutover
    for step in $STEPS; do "$step"; done
    report | tee "$WORK/logs/report.md"
}

main "$@"
