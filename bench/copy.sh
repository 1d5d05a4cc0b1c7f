#!/usr/bin/env bash
# bench/copy.sh: how long does the initial copy take, cutover against the usual tools?
#
# Copies the same pgbench database three ways, one after the other, on this machine, and
# times each from start to "every table is on the target and ready":
#
#   cutover    `cutover db sync` with copy_jobs = $JOBS (schema via pg_dump, data copied in
#              parallel from the replication slot's snapshot, each table's keys built as its
#              last part lands, then a subscription on that slot with copy_data = false, the
#              other indexes, ANALYZE; returns once every table is "ready")
#   pg_dump    `pg_dump -Fd -j$JOBS` into a directory, `pg_restore -j$JOBS`, then
#              `vacuumdb --analyze-only -j$JOBS` (the other two end with statistics too)
#   pgcopydb   `pgcopydb clone --table-jobs $JOBS --index-jobs $JOBS` (its last step is a
#              VACUUM ANALYZE of every table)
#
# Each tool runs ROUNDS times (the order rotates from round to round) and the median counts.
# It then prints the seconds, the ratios (their median / cutover's median: above 1 means
# cutover is faster), every round's figures, and the exact command line.
#
# Before each run the script waits (up to QUIET_WAIT seconds) until the CPUs are at least 90%
# idle, and reports the idle share it found: on a small machine a compiler running beside the
# benchmark easily moves a figure by half.
#
# Everything runs on temporary PostgreSQL clusters this script starts on free 127.0.0.1
# ports: one source (wal_level = logical) and, for each tool, a fresh target cluster with the
# very same settings, started just before that tool runs and stopped right after. Nothing
# leaves the loopback interface. Every cluster is stopped and every temporary file removed on
# exit (trap). This is a benchmark to run by hand (see DESIGN.md, "Where speed is measured");
# it is not part of the test suite.
#
# Usage:   bench/copy.sh
# Knobs (environment):
#   DATA=pgbench      the source's data: "pgbench" (pgbench -i -s $SCALE: one large table)
#                     or "shop" (five tables of a web shop, several of them large, with
#                     secondary and unique indexes and foreign keys; SCALE=50 is ~1 GB)
#   SCALE=50          pgbench scale factor (50 = 5 million accounts, ~750 MB), or the size of
#                     the shop (50 = 1 million customers, 2 million orders, 5 million lines)
#   JOBS=2            parallel jobs for pg_dump/pg_restore and pgcopydb
#   TOOLS="cutover pg_dump pgcopydb"   which tools, in which order (first round)
#   ROUNDS=3          runs of each tool; the median is reported
#   QUIET_WAIT=120    seconds to wait at most for an idle machine before each run
#   TOOL_TIMEOUT=3600 seconds one tool may take before it is killed (the run then fails)
#   LOG_DIR=          if set, every log (servers, tools) is copied there before cleanup
#   CARGO_TARGET_DIR  honoured when looking for the cutover binary
#
# When run as root, the server programs run as the `postgres` user (PostgreSQL refuses root).

set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SCALE=${SCALE:-50}
DATA=${DATA:-pgbench}
JOBS=${JOBS:-2}
TOOLS=${TOOLS:-"cutover pg_dump pgcopydb"}
TOOL_TIMEOUT=${TOOL_TIMEOUT:-3600}
ROUNDS=${ROUNDS:-3}
QUIET_WAIT=${QUIET_WAIT:-120}
LOG_DIR=${LOG_DIR:-}

COMMAND_LINE="DATA=$DATA SCALE=$SCALE JOBS=$JOBS ROUNDS=$ROUNDS TOOLS=\"$TOOLS\" bench/copy.sh${*:+ $*}"

# Every cluster setting, identical for the source and every target. fsync and
# synchronous_commit stay at their (durable) defaults.
CLUSTER_SETTINGS="
listen_addresses = '127.0.0.1'
password_encryption = 'scram-sha-256'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_worker_processes = 16
max_logical_replication_workers = 8
max_sync_workers_per_subscription = 4
max_connections = 100
shared_buffers = '256MB'
maintenance_work_mem = '256MB'
max_wal_size = '4GB'
checkpoint_timeout = '30min'
fsync = on
synchronous_commit = on
full_page_writes = on
log_min_messages = warning
"

# --------------------------------------------------------------------------------------
# Programs

# lib.sh's find_pg_bindir puts the server programs' folder first in PATH: client programs
# (ours, pgcopydb's pg_dump/pg_restore/psql) all come from the same folder.
find_pg_programs() {
    find_pg_bindir
    export PG_CONFIG="$PGBIN/pg_config"
}

# This script has no CUTOVER knob: it always builds (unlike lib.sh's build_cutover).
cargo_build_cutover() {
    log "building cutover (cargo build --release -p cutover-cli)"
    (cd "$ROOT" && timeout 3600 cargo build --release -p cutover-cli) >&2
    local target_dir=${CARGO_TARGET_DIR:-target}
    [[ $target_dir = /* ]] || target_dir="$ROOT/$target_dir"
    CUTOVER="$target_dir/release/cutover"
    [[ -x $CUTOVER ]] || die "no cutover binary at $CUTOVER"
}

# --------------------------------------------------------------------------------------
# Temporary clusters

SAMPLER_PID=""

setup_workdir() {
    WORK=$(mktemp -d /tmp/cutover-bench.XXXXXX)
    use_postgres_user
    if [[ $(id -u) -eq 0 ]]; then chown postgres: "$WORK"; fi
    mkdir -p "$WORK/logs"
    PASSWORD=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
    printf '%s\n' "$PASSWORD" > "$WORK/pwfile"
    [[ $(id -u) -eq 0 ]] && chown -R postgres: "$WORK"
    export PGPASSWORD=$PASSWORD   # clients only ever connect over TCP with this password
}

# stop_processes: run by lib.sh's cleanup on exit, before it keeps the logs and removes WORK.
stop_processes() {
    [[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null
    stop_clusters
}

stop_cluster() {
    local name=$1 dir="$WORK/$1" i
    cp "$dir/server.log" "$WORK/logs/server-$name.log" 2>/dev/null || true
    "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$dir" -m fast -w -t 120 stop >/dev/null
    for i in "${!CLUSTERS[@]}"; do [[ ${CLUSTERS[$i]} == "$dir" ]] && unset 'CLUSTERS[i]'; done
    rm -rf "$dir"
}

# url NAME [DB]: the client URL of a cluster (password included; only ever local and temporary).
url() {
    local port_var="PORT_$1"
    echo "postgres://postgres:$PASSWORD@127.0.0.1:${!port_var}/${2:-bench}"
}

# sql NAME QUERY: runs a query in the bench database of a cluster, unaligned output.
sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$(url "$1")" -c "$2"; }

create_db() { psql -X -q -v ON_ERROR_STOP=1 -d "$(url "$1" postgres)" -c "CREATE DATABASE bench"; }

# --------------------------------------------------------------------------------------
# Source data

# The shop: customers, products, orders, their lines and an event log; keys, unique and
# secondary indexes, foreign keys, as an application's schema has them. SCALE 50 = 1 million
# customers, 100,000 products, 2 million orders, 5 million lines, 2 million events.
shop_source() {
    local n=$((SCALE * 20000))
    log "the shop (scale $SCALE) on the source"
    timeout "$TOOL_TIMEOUT" psql -X -q -v ON_ERROR_STOP=1 -d "$(url source)" >"$WORK/logs/shop-init.log" 2>&1 <<SQL || { cat "$WORK/logs/shop-init.log" >&2; die "the shop's data failed"; }
CREATE TABLE customers (id bigserial PRIMARY KEY, email text NOT NULL, name text NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE products (id bigserial PRIMARY KEY, sku text NOT NULL UNIQUE, title text NOT NULL, price numeric(10,2) NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers (id), status text NOT NULL,
                     placed_at timestamptz NOT NULL, total numeric(12,2) NOT NULL);
CREATE TABLE order_lines (order_id bigint NOT NULL REFERENCES orders (id), n int NOT NULL, product_id bigint NOT NULL REFERENCES products (id),
                          qty int NOT NULL, price numeric(10,2) NOT NULL, PRIMARY KEY (order_id, n));
CREATE TABLE events (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers (id), kind text NOT NULL,
                     at timestamptz NOT NULL, payload jsonb);
INSERT INTO customers (email, name, created_at)
    SELECT 'user' || g || '@example.com', 'Customer ' || md5(g::text), timestamptz '2020-01-01' + g * interval '1 minute'
      FROM generate_series(1::bigint, $n) g;
INSERT INTO products (sku, title, price)
    SELECT 'SKU-' || g, 'Product ' || md5(g::text), (g % 500) + 0.99 FROM generate_series(1::bigint, $((n / 10))) g;
INSERT INTO orders (customer_id, status, placed_at, total)
    SELECT 1 + (g * 7919) % $n, (ARRAY['new', 'paid', 'shipped', 'returned'])[1 + g % 4],
           timestamptz '2021-01-01' + g * interval '30 seconds', (g % 1000) + 0.5
      FROM generate_series(1::bigint, $((n * 2))) g;
INSERT INTO order_lines (order_id, n, product_id, qty, price)
    SELECT 1 + g / 5, g % 5, 1 + (g * 104729) % $((n / 10)), 1 + g % 3, (g % 200) + 0.25
      FROM generate_series(0::bigint, $((n * 10 - 1))) g;
INSERT INTO events (customer_id, kind, at, payload)
    SELECT 1 + g % $n, (ARRAY['view', 'cart', 'search'])[1 + g % 3], timestamptz '2022-01-01' + g * interval '10 seconds',
           jsonb_build_object('page', '/p/' || (g % 5000), 'ms', g % 900)
      FROM generate_series(1::bigint, $((n * 2))) g;
CREATE UNIQUE INDEX customers_email ON customers (email);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE INDEX orders_placed ON orders (placed_at);
CREATE INDEX order_lines_product ON order_lines (product_id);
CREATE INDEX events_customer_at ON events (customer_id, at);
SQL
}

make_source() {
    start_cluster source --forget-port
    create_db source
    if [[ $DATA == shop ]]; then
        shop_source
        sql source "VACUUM ANALYZE"
        sql source "CHECKPOINT"
        SOURCE_ROWS=$(row_counts source)
        SOURCE_SIZE=$(sql source "SELECT pg_size_pretty(pg_database_size('bench'))")
        log "source ready: $SOURCE_SIZE; rows: $SOURCE_ROWS"
        return
    fi
    log "pgbench -i -s $SCALE on the source"
    timeout "$TOOL_TIMEOUT" pgbench -i -q -s "$SCALE" "$(url source)" >"$WORK/logs/pgbench-init.log" 2>&1 \
        || { cat "$WORK/logs/pgbench-init.log" >&2; die "pgbench -i failed"; }
    # pgbench_history gets no key from pgbench -i; cutover (rightly) refuses a table whose
    # UPDATEs and DELETEs could not be replicated. Give it one, and a few rows.
    sql source "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY"
    timeout 300 pgbench -n -c 2 -t 2000 "$(url source)" >"$WORK/logs/pgbench-run.log" 2>&1 \
        || die "pgbench run failed"
    sql source "VACUUM ANALYZE"
    sql source "CHECKPOINT"
    SOURCE_ROWS=$(row_counts source)
    SOURCE_SIZE=$(sql source "SELECT pg_size_pretty(pg_database_size('bench'))")
    log "source ready: $SOURCE_SIZE; rows: $SOURCE_ROWS"
}

# row_counts NAME: "table=count ..." for every table of the public schema, to check each copy
# is whole.
row_counts() {
    sql "$1" "SELECT string_agg(replace(t, 'pgbench_', '') || '=' ||
                  (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM public.%I', t), false, true, '')))[1]::text,
                  ' ' ORDER BY t)
                FROM (SELECT relname::text t FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace) s"
}

pkey_count() { sql "$1" "SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND connamespace = 'public'::regnamespace"; }
table_count() { sql "$1" "SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"; }

# --------------------------------------------------------------------------------------
# The three tools. Each runs against a fresh, empty target database "bench" on cluster $1.
# They run in an `||` context where `set -e` does not apply, hence the explicit returns.

run_cutover() {
    local target=$1 dir="$WORK/cutover-plan-r$ROUND"
    mkdir -p "$dir"
    export SOURCE_DATABASE_URL TARGET_DATABASE_URL
    SOURCE_DATABASE_URL=$(url source)
    TARGET_DATABASE_URL=$(url "$target")
    "$CUTOVER" --plan "$dir/cutover.toml" init \
        --source-url "$SOURCE_DATABASE_URL" --target-url "$TARGET_DATABASE_URL" >/dev/null || return 1
    # Same parallelism as the other tools get.
    sed -i "s/^copy_jobs = .*/copy_jobs = $JOBS/" "$dir/cutover.toml"
    start_sampler "$target"
    timeout "$TOOL_TIMEOUT" "$CUTOVER" --plan "$dir/cutover.toml" db sync \
        >"$WORK/logs/cutover-r$ROUND.out" 2>"$WORK/logs/cutover-r$ROUND.err"
}

# Removes the subscription, slot and publication cutover left (its sync keeps following the
# source), so the next tool runs against an idle source. Not timed.
after_cutover() {
    stop_sampler
    "$CUTOVER" --plan "$WORK/cutover-plan-r$ROUND/cutover.toml" db cleanup >"$WORK/logs/cutover-cleanup-r$ROUND.log" 2>&1 \
        || log "warning: cutover db cleanup failed (see its log)"
}

run_pg_dump() {
    local target=$1 t0 t1
    rm -rf "$WORK/dump"
    t0=$(now)
    timeout "$TOOL_TIMEOUT" pg_dump -Fd -j "$JOBS" -f "$WORK/dump" -d "$(url source)" \
        >"$WORK/logs/pg_dump-r$ROUND.log" 2>&1 || return 1
    t1=$(now)
    timeout "$TOOL_TIMEOUT" pg_restore -j "$JOBS" --no-owner --no-privileges --exit-on-error \
        -d "$(url "$target")" "$WORK/dump" >"$WORK/logs/pg_restore-r$ROUND.log" 2>&1 || return 1
    local t2
    t2=$(now)
    # A target ready for traffic has planner statistics: cutover's sync and pgcopydb's clone
    # both end with them, so pg_restore gets its ANALYZE too.
    timeout "$TOOL_TIMEOUT" vacuumdb --analyze-only -j "$JOBS" -d "$(url "$target")" \
        >"$WORK/logs/vacuumdb-r$ROUND.log" 2>&1 || return 1
    DETAIL="dump $(elapsed "$t0" "$t1") + restore $(elapsed "$t1" "$t2") + analyze $(elapsed "$t2" "$(now)")"
    rm -rf "$WORK/dump"
}

run_pgcopydb() {
    local target=$1
    rm -rf "$WORK/pgcopydb"
    timeout "$TOOL_TIMEOUT" pgcopydb clone --source "$(url source)" --target "$(url "$target")" \
        --dir "$WORK/pgcopydb" --table-jobs "$JOBS" --index-jobs "$JOBS" --no-owner --no-acl \
        >"$WORK/logs/pgcopydb-r$ROUND.log" 2>&1 || return 1
    rm -rf "$WORK/pgcopydb"
}

# --------------------------------------------------------------------------------------
# Where cutover's copy spends its time: every change of a table's subscription state
# (pg_subscription_rel), sampled every 0.2 s on the target, with the time since the start.

start_sampler() {
    local target=$1 start
    start=$(now)
    (
        local last="" cur
        while true; do
            cur=$(sql "$target" "SELECT string_agg(replace(c.relname, 'pgbench_', '') || ':' || sr.srsubstate::text, ' ' ORDER BY c.relname)
                                   FROM pg_subscription_rel sr JOIN pg_class c ON c.oid = sr.srrelid" 2>>"$WORK/logs/sampler.err" || true)
            if [[ -n $cur && $cur != "$last" ]]; then
                printf '%7.1f s  %s\n' "$(elapsed "$start" "$(now)")" "$cur"
                last=$cur
            fi
            sleep 0.2
        done
    ) >"$WORK/logs/cutover-states-r$ROUND.log" &
    SAMPLER_PID=$!
}

stop_sampler() {
    [[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null && wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
}

# --------------------------------------------------------------------------------------
# Timing and report

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
median() { tr ' ' '\n' <<<"$*" | grep . | sort -g | awk '{ v[NR] = $1 } END { printf "%.1f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

# wait_quiet: waits until the CPUs are >= 90% idle, for QUIET_WAIT seconds at most; sets IDLE.
wait_quiet() {
    wait_idle
    ((IDLE >= 90)) || log "warning: the machine is busy (${IDLE}% idle) and stays so; timing anyway"
}

ROUND=0
DETAIL=""
declare -A TIMES=()    # tool -> "s1 s2 ..."
declare -A ROUNDS_OF=() # tool -> "s1 (idle%, detail); ..."

# bench_tool TOOL: fresh target cluster, run, check the copy is whole, stop the target.
bench_tool() {
    local tool=$1 target="t_$1_r$ROUND" t0 t1 secs rows keys
    start_cluster "$target" --forget-port
    create_db "$target"
    sql source "CHECKPOINT" # every tool starts from the same, quiet source
    wait_quiet
    log "round $ROUND: running $tool (CPUs ${IDLE}% idle before)"
    DETAIL=""
    t0=$(now)
    "run_$tool" "$target" || { tail -n 20 "$WORK"/logs/"$tool"*"-r$ROUND"* >&2 || true; die "$tool failed"; }
    t1=$(now)
    secs=$(elapsed "$t0" "$t1")
    log "round $ROUND: $tool took $secs s"
    rows=$(row_counts "$target")
    keys=$(pkey_count "$target")
    [[ $rows == "$SOURCE_ROWS" ]] || die "$tool copied $rows, the source has $SOURCE_ROWS"
    [[ $keys == "$SOURCE_TABLES" ]] || die "$tool left $keys primary keys on the target, not $SOURCE_TABLES"
    [[ $tool == cutover ]] && after_cutover
    stop_cluster "$target"
    TIMES[$tool]+=" $secs"
    ROUNDS_OF[$tool]+="${ROUNDS_OF[$tool]:+; }$secs (${IDLE}% idle${DETAIL:+, $DETAIL})"
}

report() {
    local base="" tool r med
    [[ -n ${TIMES[cutover]:-} ]] && base=$(median ${TIMES[cutover]})
    echo
    echo "## cutover copy benchmark"
    echo
    echo "- command: \`$COMMAND_LINE\`"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB memory, $(uname -sr)"
    echo "- versions: PostgreSQL $("$PGBIN/postgres" --version | sed 's/.*(PostgreSQL) //'); $(pgcopydb --version 2>/dev/null | grep -m1 '^pgcopydb'); cutover $("$CUTOVER" --version | awk '{ print $2 }') built from $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$( [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] && echo ' + uncommitted changes')"
    echo "- data: $DATA scale $SCALE, source database $SOURCE_SIZE; rows: $SOURCE_ROWS"
    echo
    echo "| tool | median s | ÷ cutover | command | every round: s (CPU idle before) |"
    echo "|---|---:|---:|---|---|"
    for tool in $TOOLS; do
        med=$(median ${TIMES[$tool]})
        local cmd
        case $tool in
            cutover) cmd="\`cutover db sync\`" ;;
            pg_dump) cmd="\`pg_dump -Fd -j$JOBS\` then \`pg_restore -j$JOBS\`" ;;
            pgcopydb) cmd="\`pgcopydb clone --table-jobs $JOBS --index-jobs $JOBS\`" ;;
        esac
        echo "| $tool | $med | $( [[ -n $base ]] && ratio "$med" "$base" || echo -) | $cmd | ${ROUNDS_OF[$tool]} |"
    done
    if [[ -n ${TIMES[cutover]:-} ]]; then
        echo
        echo "cutover db sync, its steps in each round (stderr, progress lines left out), and the"
        echo "subscription state of each table over time, sampled on the target every 0.2 s"
        echo "(i init, d copying, f copied, s synced, r ready; seconds since the command started):"
        for ((r = 1; r <= ROUNDS; r++)); do
            echo
            echo '```'
            echo "round $r"
            grep -E '^[✓·✗]' "$WORK/logs/cutover-r$r.err" || true
            cat "$WORK/logs/cutover-states-r$r.log"
            echo '```'
        done
    fi
    if [[ -n ${TIMES[pgcopydb]:-} ]]; then
        echo
        echo "pgcopydb's own summary, round $ROUNDS:"
        echo
        echo '```'
        sed -n '/ Step  /,$p' "$WORK/logs/pgcopydb-r$ROUNDS.log" | grep -v '^ *$' || true
        echo '```'
    fi
}

main() {
    find_pg_programs
    cargo_build_cutover
    setup_workdir
    cd "$WORK" # whatever a tool writes to its working folder is removed with it
    local tool order
    for tool in $TOOLS; do
        case $tool in cutover | pg_dump | pgcopydb) ;; *) die "unknown tool $tool" ;; esac
    done
    [[ $DATA == pgbench || $DATA == shop ]] || die "DATA=$DATA: use pgbench or shop"
    make_source
    SOURCE_TABLES=$(table_count source)
    read -r -a order <<<"$TOOLS"
    for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
        for tool in "${order[@]}"; do bench_tool "$tool"; done
        order=("${order[@]:1}" "${order[0]}") # rotate, so no tool always goes first
    done
    report
}

main "$@"
