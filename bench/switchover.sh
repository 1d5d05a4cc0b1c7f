#!/usr/bin/env bash
# bench/switchover.sh: how long do clients wait, and do they see errors, when the database
# moves under load? cutover against PgBouncer's PAUSE/RESUME and against no proxy at all.
#
# Two temporary clusters, a source and a target (both wal_level = logical), and the same
# pgbench TPC-B load each time: CLIENTS clients logged in as the role `app`, `-M extended`,
# DURATION seconds, the switch started SWITCH_AT seconds in. Each method runs REPS times:
#
#   cutover    pgbench → `cutover proxy`; `cutover --json db switchover` (pause, drain, fence,
#              catch up, sequences, reverse replication, switch, resume). Between repetitions
#              `cutover db rollback` brings everything back to the source, with no load and
#              untimed (its figures are kept in the log), so every repetition is the same
#              source → target switch.
#   pgbouncer  pgbench → PgBouncer in transaction mode (pool_mode = transaction, hence
#              `-M extended`: 1.18 keeps no prepared statements across server connections).
#              The usual procedure, each step a round trip on a connection opened beforehand:
#              `PAUSE bench` on the admin console (returns once every transaction has ended
#              and every server connection is closed), then on the source one marker row
#              update (no client can write any more) and a read of every sequence, then on
#              the target a wait until the marker has been applied (the logical replication
#              that `cutover db sync` set up; the marker is exact where LSN feedback lags by
#              up to wal_receiver_status_interval) and the sequences set, then the
#              [databases] entry of the ini file pointed at the target, `RELOAD`, `RESUME
#              bench`. The source is not fenced: every client goes through PgBouncer.
#   direct     pgbench → the source itself, no proxy. The switch is what is left without
#              one: fence the source (app's write privileges revoked, app's sessions ended,
#              as cutover's fence does), wait for the marker on the target, set the
#              sequences, and have the clients reconnect to the target. pgbench cannot
#              change hosts mid-run: its clients error out at the fence and abort (that is
#              the application's view: errors, lost in-flight transactions), and a second
#              pgbench, the "reconnected application", starts on the target right after the
#              catch-up for the rest of the DURATION. That reconnect is instant here; a real
#              application needs a configuration change or a DNS update first, so this
#              method's pause is a lower bound.
#   fleet      FLEET (default 3) `cutover proxy` instances of one plan, coordinated through
#              the control schema in the target, with pgbench through each (CLIENTS split
#              between them, rounded up: 16 clients make 6 per proxy, 18 in all); one `cutover db switchover` moves them all,
#              `cutover db rollback` brings them back between repetitions as for cutover.
#              Figures for the whole fleet, and the pause and failed transactions per proxy.
#   For pgbouncer and direct the target is rebuilt before every repetition (`cutover db
#   cleanup`, a new database, `cutover db sync`, grants), since after the switch the source
#   no longer has every write.
#
# What is measured, from pgbench's own per-transaction log (`-l`) and the switch's start
# and end times (same clock):
#   pause      the client-visible pause: the longer of (a) the highest latency of a
#              transaction that overlaps the switch and (b) the longest time during the switch
#              in which no client finished a transaction. For the proxies it is (a): a held
#              request is a slow transaction; for direct it is (b), from the last commit on
#              the source to the first on the target.
#   tool       the method's own figure: cutover's `longest_client_wait_ms` (and `pause_ms`,
#              from pause to resume); PgBouncer's PAUSE sent → RESUME answered; direct's
#              fence started → the marker seen on the target.
#   failed     pgbench's "number of failed transactions" (all runs of the repetition)
#   aborted    clients that pgbench reports as aborted (an error it does not retry; each
#              loses the transaction it had in flight)
# It prints a table (method, pause p50, pause max, tool p50/max, failed, aborted) and every
# repetition's figures.
#
# Everything runs on 127.0.0.1: temporary clusters this script starts on free ports, the
# proxies beside them. Every process it started is stopped and every temporary file removed
# on exit (trap). This is a benchmark to run by hand; it is not part of the test suite.
#
# Usage:   bench/switchover.sh       (from anywhere; paths are relative to the repository)
# Knobs (environment):
#   REPS=5            repetitions of each method
#   METHODS="cutover pgbouncer direct"   (fleet as well: bench/fleet.sh runs "cutover fleet")
#   FLEET=3           proxies of the fleet method
#   DURATION=20       seconds of load per repetition
#   SWITCH_AT=8       seconds into the load when the switch starts
#   CLIENTS=16        pgbench clients (-c)
#   THREADS=2         pgbench threads (-j; the machine this was written on has 2 cores)
#   SCALE=10          pgbench scale factor
#   QUIET_WAIT=30     seconds to wait at most for an idle machine before each repetition
#   CUTOVER=          a cutover binary to use instead of building one
#                     (default: `cargo build --release --bin cutover`, target/release/cutover)
#   LOG_DIR=          if set, every log is copied there before cleanup
#   CARGO_TARGET_DIR  honoured when looking for the cutover binary
#
# When run as root, PostgreSQL and PgBouncer run as the `postgres` user (both refuse root).
# PgBouncer and jq are installed with apt-get when missing (root only).

set -euo pipefail
export LC_ALL=C # a "." in $EPOCHREALTIME and in awk's numbers
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPS=${REPS:-5}
METHODS=${METHODS:-"cutover pgbouncer direct"}
FLEET=${FLEET:-3}
DURATION=${DURATION:-20}
SWITCH_AT=${SWITCH_AT:-8}
CLIENTS=${CLIENTS:-16}
THREADS=${THREADS:-2}
SCALE=${SCALE:-10}
QUIET_WAIT=${QUIET_WAIT:-30}
CUTOVER=${CUTOVER:-}
LOG_DIR=${LOG_DIR:-}

COMMAND_LINE="METHODS=\"$METHODS\" FLEET=$FLEET REPS=$REPS DURATION=$DURATION SWITCH_AT=$SWITCH_AT CLIENTS=$CLIENTS THREADS=$THREADS SCALE=$SCALE bench/switchover.sh${*:+ $*}"

# Every cluster setting, identical for the source and the target. fsync and
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
max_wal_size = '4GB'
checkpoint_timeout = '30min'
fsync = on
synchronous_commit = on
log_min_messages = warning
"

# --------------------------------------------------------------------------------------
# Programs

# PgBouncer and jq from the distribution, installed when missing.
find_tools() {
    local need=()
    command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || need+=(pgbouncer)
    command -v jq >/dev/null || need+=(jq)
    if ((${#need[@]})); then apt_install "missing ${need[*]}" "${need[@]}"; fi
    PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
    [[ -x $PGBOUNCER ]] || die "no pgbouncer program"
}

# --------------------------------------------------------------------------------------
# Temporary clusters, proxies, long-lived psql sessions

PROXY_PID=""
declare -a BG_PIDS=()    # pgbench runs and psql sessions still running
declare -A SESSION_IN=() SESSION_OUT=() SESSION_PID=()

setup_workdir() {
    WORK=$(mktemp -d /tmp/cutover-bench.XXXXXX)
    use_postgres_user
    mkdir -p "$WORK/logs" "$WORK/pgbouncer"
    PASSWORD=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
    APP_PASSWORD=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
    ADMIN_PASSWORD=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
    CUTOVER_ADMIN_TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    export APP_PASSWORD CUTOVER_ADMIN_TOKEN
    printf '%s\n' "$PASSWORD" > "$WORK/pwfile"
    [[ $(id -u) -eq 0 ]] && chown -R postgres: "$WORK"
    export PGPASSWORD=$PASSWORD   # the script's own psql calls, as postgres, over TCP
}

pgbouncer_pid() { cat "$WORK/pgbouncer/pgbouncer.pid" 2>/dev/null || true; }

# stop_processes: run by lib.sh's cleanup on exit, before it keeps the logs and removes WORK.
stop_processes() {
    local pid dir
    for pid in "${BG_PIDS[@]}" "${SESSION_PID[@]}"; do kill "$pid" 2>/dev/null; done
    [[ -n $PROXY_PID ]] && kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null
    for pid in "${FLEET_PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    pid=$(pgbouncer_pid)
    [[ -n $pid ]] && kill "$pid" 2>/dev/null
    stop_clusters
    if [[ -n $LOG_DIR && -n $WORK ]]; then
        for dir in "${CLUSTERS[@]}"; do cp "$dir/server.log" "$WORK/logs/server-$(basename "$dir").log"; done
    fi
}

# url NAME [DB]: the superuser's URL of a cluster (password included; only ever local and
# temporary). app_url PORT: the application's URL through a port (PostgreSQL's or a proxy's).
url() { local p="PORT_$1"; echo "postgres://postgres:$PASSWORD@127.0.0.1:${!p}/${2:-bench}?sslmode=disable"; }
app_url() { echo "postgres://app:$APP_PASSWORD@127.0.0.1:$1/bench?sslmode=disable"; }

# sql NAME QUERY: runs a query in the bench database of a cluster, unaligned output.
sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$(url "$1")" -c "$2"; }

# session_open NAME CONNINFO [FIRST]: a psql that stays connected, fed through a FIFO, so that
# a timed step costs one round trip rather than a process start and a login. FIRST (default
# SELECT 1) is run at once, to have it connected.
session_open() {
    local name=$1 conn=$2 fd
    mkfifo "$WORK/$name.in" "$WORK/$name.out"
    psql -X -q -At -v ON_ERROR_STOP=0 -d "$conn" <"$WORK/$name.in" >"$WORK/$name.out" 2>&1 &
    SESSION_PID[$name]=$!
    exec {fd}>"$WORK/$name.in"
    SESSION_IN[$name]=$fd
    exec {fd}<"$WORK/$name.out"
    SESSION_OUT[$name]=$fd
    session "$name" "${3:-SELECT 1}" >/dev/null
}

# session NAME SQL: runs SQL on an open session, prints its output; fails on an error.
session() {
    local name=$1 line out="" err="" q=$2
    q="${q%"${q##*[![:space:]]}"}"        # psql runs a statement once it reads its ";"
    [[ $q == *\; ]] || q+=";"
    printf '%s\n\\echo __done__\n' "$q" >&"${SESSION_IN[$name]}"
    while true; do
        IFS= read -r -t 120 -u "${SESSION_OUT[$name]}" line || die "session $name: no answer to: $2"
        [[ $line == __done__ ]] && break
        [[ $line == ERROR:* || $line == psql:* || $line == FATAL:* ]] && err+="$line "
        out+="$line"$'\n'
    done
    [[ -z $err ]] || die "session $name: $err (for: $2)"
    printf '%s' "$out"
}

session_close() {
    local name=$1 fin=${SESSION_IN[$1]} fout=${SESSION_OUT[$1]}
    # \q, not just EOF: the processes started since hold copies of the FIFO's write end.
    printf '\\q\n' >&"$fin"
    exec {fin}>&- {fout}<&-
    wait "${SESSION_PID[$name]}" 2>/dev/null || true
    rm -f "$WORK/$name.in" "$WORK/$name.out"
    unset "SESSION_PID[$name]" "SESSION_IN[$name]" "SESSION_OUT[$name]"
}

# --------------------------------------------------------------------------------------
# Data and replication

make_clusters() {
    local side
    start_cluster source
    start_cluster target
    export SRC DST # what the plans refer to
    SRC=$(url source)
    DST=$(url target)
    for side in source target; do
        psql -X -q -v ON_ERROR_STOP=1 -d "$(url "$side" postgres)" \
            -c "CREATE ROLE app LOGIN PASSWORD '$APP_PASSWORD'" >/dev/null
    done
    psql -X -q -v ON_ERROR_STOP=1 -d "$(url source postgres)" -c "CREATE DATABASE bench OWNER app" >/dev/null
    log "pgbench -i -s $SCALE on the source, as app"
    pgbench -i -q -s "$SCALE" "$(app_url "$PORT_source")" >"$WORK/logs/pgbench-init.log" 2>&1 \
        || { cat "$WORK/logs/pgbench-init.log" >&2; die "pgbench -i failed"; }
    # cutover (rightly) refuses a table whose UPDATEs and DELETEs could not be replicated.
    sql source "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY"
    sql source "VACUUM ANALYZE"
    SOURCE_SIZE=$(sql source "SELECT pg_size_pretty(pg_database_size('bench'))")
    log "source ready: $SOURCE_SIZE"
}

# write_plan DIR [PROXY]: a plan in DIR; with PROXY, its [proxy] section too.
write_plan() {
    local dir=$1
    mkdir -p "$dir"
    cat >"$dir/cutover.toml" <<TOML
[source]
url = "\${SRC}"

[target]
url = "\${DST}"

[sync]
copy_jobs = 2
TOML
    if [[ -n ${2:-} ]]; then
        cat >>"$dir/cutover.toml" <<TOML

[proxy]
listen = "127.0.0.1:$PORT_cutover"
admin_listen = "127.0.0.1:$PORT_cutover_admin"
admin_token = "\${CUTOVER_ADMIN_TOKEN}"

[[proxy.users]]
name = "app"
password = "\${APP_PASSWORD}"
auth = "scram-sha-256"
TOML
    fi
}

PLAN=""   # the plan whose replication is in place, if any

# fresh_target DIR [PROXY]: removes the replication of $PLAN, gives the target a new, empty
# bench database, and `cutover db sync`s it from the source with a new plan in DIR.
fresh_target() {
    local dir=$1 t0=$EPOCHREALTIME
    if [[ -n $PLAN ]]; then
        "$CUTOVER" --plan "$PLAN" db cleanup >>"$WORK/logs/cleanup.log" 2>&1 || die "cutover db cleanup failed (see its log)"
    fi
    psql -X -q -v ON_ERROR_STOP=1 -d "$(url target postgres)" >/dev/null <<SQL
SET client_min_messages = warning;
DROP DATABASE IF EXISTS bench WITH (FORCE);
CREATE DATABASE bench;
GRANT ALL ON DATABASE bench TO app;
SQL
    write_plan "$dir" "${2:-}"
    PLAN="$dir/cutover.toml"
    "$CUTOVER" --plan "$PLAN" db sync >"$dir/sync.out" 2>"$dir/sync.err" \
        || { tail -n 20 "$dir/sync.err" >&2; die "cutover db sync failed"; }
    # pg_dump's schema copy carries no grants: the platform's roles are set up by hand.
    sql target "GRANT ALL ON ALL TABLES IN SCHEMA public TO app; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app"
    log "target rebuilt and following the source ($(elapsed "$t0" "$EPOCHREALTIME") s)"
}

# --------------------------------------------------------------------------------------
# Load and its analysis

# ready_to_go NAME: waits for a quiet machine before a repetition's load starts.
ready_to_go() {
    wait_quiet
    log "$1: $DURATION s of load, switch at $SWITCH_AT s (CPUs ${IDLE}% idle)"
}

# start_load NAME PORT SECONDS: pgbench in the background, logging every transaction into
# $WORK/logs/NAME/; sets LOAD_PID.
start_load() {
    local name=$1 port=$2 secs=$3
    mkdir -p "$WORK/logs/$name"
    pgbench -n -M extended -c "$CLIENTS" -j "$THREADS" -T "$secs" --failures-detailed \
        -l --log-prefix="$WORK/logs/$name/tx" "$(app_url "$port")" >"$WORK/logs/$name/pgbench.out" 2>&1 &
    LOAD_PID=$!
    BG_PIDS+=("$LOAD_PID")
}

# finish_load PID: waits for pgbench; its exit status does not stop the script (an aborted
# client makes it 2, which the direct method expects). Its pid is forgotten: once reaped it
# may be given to another process, which the cleanup must not kill.
finish_load() {
    local i
    wait "$1" || true
    for i in "${!BG_PIDS[@]}"; do [[ ${BG_PIDS[$i]} == "$1" ]] && unset 'BG_PIDS[i]'; done
    return 0
}

# pgbench_figures NAME...: "failed aborted processed" summed over the runs' summaries.
pgbench_figures() {
    local name failed=0 aborted=0 processed=0 f
    for name in "$@"; do
        f="$WORK/logs/$name/pgbench.out"
        failed=$((failed + $(awk -F': ' '/^number of failed transactions/ { print $2 + 0; exit }' "$f" | grep . || echo 0)))
        processed=$((processed + $(awk -F': ' '/^number of transactions actually processed/ { print $2 + 0; exit }' "$f" | grep . || echo 0)))
        aborted=$((aborted + $(grep -c 'aborted in command' "$f" || true)))
    done
    echo "$failed $aborted $processed"
}

# analyze WS WE NAME...: from the per-transaction logs of the runs NAME..., with the switch
# between epoch seconds WS and WE: "max_latency_ms stall_ms p99_before_ms p99_after_ms".
#   max latency: highest latency of a transaction that was running at some point in [WS, WE]
#   stall: longest gap between two consecutive transaction ends (any client) that overlaps
#          [WS, WE]
#   p99 before / after: 99th percentile latency of the transactions that ended before WS /
#          that started after WE (the new primary's steady state)
analyze() {
    local ws=$1 we=$2 name files=()
    shift 2
    for name in "$@"; do files+=("$WORK"/logs/"$name"/tx.*); done
    # end time and latency (s) of every successful transaction, in order of end
    awk '$3 ~ /^[0-9]+$/ { printf "%.6f %.6f\n", $5 + $6 / 1e6, $3 / 1e6 }' "${files[@]}" | sort -g >"$WORK/ends"
    local max stall before after
    read -r max stall < <(awk -v ws="$ws" -v we="$we" '
        { end = $1; lat = $2
          if (end - lat < we && end > ws && lat > max) max = lat
          if (NR > 1 && prev < we && end > ws && end - prev > stall) stall = end - prev
          prev = end }
        END { printf "%.1f %.1f\n", max * 1000, stall * 1000 }' "$WORK/ends")
    before=$(awk -v ws="$ws" '$1 < ws { print $2 }' "$WORK/ends" | p99_ms)
    after=$(awk -v we="$we" '$1 - $2 > we { print $2 }' "$WORK/ends" | p99_ms)
    echo "$max $stall $before $after"
}

# p99_ms: the 99th percentile of the latencies (s) on stdin, in ms.
p99_ms() { sort -g | awk '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.1f", v[i] * 1000 }'; }

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
max_of() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b ? a : b) }'; }

# wait_quiet: waits until the CPUs are >= 90% idle, for QUIET_WAIT seconds at most; sets IDLE.
wait_quiet() {
    wait_idle
    ((IDLE >= 90)) || log "warning: the machine is busy (${IDLE}% idle); running anyway"
}

# The sequences of the moved tables, as setval statements for the other side: read on the
# source once its writers are stopped, run on the target before clients reach it.
SEQUENCES_SQL="SELECT coalesce(string_agg(format('SELECT setval(%L, %s, %s);',
    quote_ident(schemaname) || '.' || quote_ident(sequencename), coalesce(last_value, 1),
    (last_value IS NOT NULL)::text), ' '), '') FROM pg_sequences WHERE schemaname = 'public'"

# wait_marker_sql MARK: on the target, returns once the marker row update has been applied.
wait_marker_sql() {
    cat <<SQL
DO \$\$
DECLARE deadline timestamptz := clock_timestamp() + interval '60 s';
BEGIN
  LOOP
    EXIT WHEN EXISTS (SELECT 1 FROM pgbench_branches WHERE bid = 1 AND rtrim(filler) = '$1');
    IF clock_timestamp() > deadline THEN RAISE EXCEPTION 'the target did not apply the marker in 60 s'; END IF;
    PERFORM pg_sleep(0.001);
  END LOOP;
END \$\$;
SQL
}

# --------------------------------------------------------------------------------------
# The three methods. Each repetition sets: WS WE (the switch's window), TOOL_MS, TOOL_NOTE,
# RUN_NAMES (the pgbench runs to analyze).

cutover_setup() {
    free_port; PORT_cutover=$FREE_PORT
    free_port; PORT_cutover_admin=$FREE_PORT
    fresh_target "$WORK/plan-cutover" proxy
    "$CUTOVER" --plan "$PLAN" proxy >"$WORK/logs/cutover-proxy.log" 2>&1 &
    PROXY_PID=$!
    wait_listening "$PORT_cutover" || { cat "$WORK/logs/cutover-proxy.log" >&2; die "cutover proxy did not start"; }
    log "cutover proxy up on 127.0.0.1:$PORT_cutover (pid $PROXY_PID)"
}

cutover_rep() {
    local r=$1 name="cutover-$1" out="$WORK/logs/cutover-switchover-$1"
    ready_to_go "$name"
    start_load "$name" "$PORT_cutover" "$DURATION"
    local pid=$LOAD_PID
    sleep "$SWITCH_AT"
    WS=$EPOCHREALTIME
    "$CUTOVER" --plan "$PLAN" --json db switchover >"$out.json" 2>"$out.err" \
        || { cat "$out.err" >&2; die "cutover db switchover failed"; }
    WE=$EPOCHREALTIME
    finish_load "$pid"
    local wait pause
    wait=$(jq -r '.longest_client_wait_ms | floor' "$out.json")
    pause=$(jq -r '.pause_ms | floor' "$out.json")
    TOOL_MS=$wait
    TOOL_NOTE="longest_client_wait ${wait} ms, pause ${pause} ms, command $(ms "$WS" "$WE") ms; $(jq -r '[.steps[] | "\(.step | sub("^switchover\\."; "")) \(.ms | floor)"] | join(", ")' "$out.json")"
    RUN_NAMES=("$name")
    # Back to the source for the next repetition: no load, untimed.
    "$CUTOVER" --plan "$PLAN" --json db rollback >"$WORK/logs/cutover-rollback-$r.json" 2>"$WORK/logs/cutover-rollback-$r.err" \
        || { cat "$WORK/logs/cutover-rollback-$r.err" >&2; die "cutover db rollback failed"; }
}

cutover_teardown() {
    kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=""
}

pgbouncer_ini() {
    local d="$WORK/pgbouncer"
    cat >"$d/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$1 dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT_pgbouncer
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $d/userlist.txt
admin_users = pgb_admin
pool_mode = transaction
default_pool_size = $((CLIENTS + 4))
max_client_conn = $((CLIENTS * 2 + 20))
logfile = $WORK/logs/pgbouncer.log
pidfile = $d/pgbouncer.pid
INI
}

pgbouncer_setup() {
    local d="$WORK/pgbouncer"
    free_port; PORT_pgbouncer=$FREE_PORT
    # Plain-text passwords in the auth file let PgBouncer run SCRAM with the client and with
    # the server alike.
    printf '"app" "%s"\n"pgb_admin" "%s"\n' "$APP_PASSWORD" "$ADMIN_PASSWORD" >"$d/userlist.txt"
    pgbouncer_ini "$PORT_source"
    [[ $(id -u) -eq 0 ]] && chown -R postgres: "$d" "$WORK/logs"
    "${AS_PG[@]}" "$PGBOUNCER" -d "$d/pgbouncer.ini" >"$WORK/logs/pgbouncer.out" 2>&1 \
        || { cat "$WORK/logs/pgbouncer.out" "$WORK/logs/pgbouncer.log" >&2 || true; die "pgbouncer did not start"; }
    wait_listening "$PORT_pgbouncer" || { cat "$WORK/logs/pgbouncer.log" >&2; die "pgbouncer did not start"; }
    PGBOUNCER_VERSION=$("$PGBOUNCER" --version | awk 'NR == 1 { print $NF }')
    log "pgbouncer $PGBOUNCER_VERSION up on 127.0.0.1:$PORT_pgbouncer (pid $(pgbouncer_pid)), transaction mode"
}

pgbouncer_rep() {
    local r=$1 name="pgbouncer-$1" mark="switch-pgbouncer-$1" seqs t1 t2 t3 t4
    fresh_target "$WORK/plan-pgbouncer-$r"
    session_open admin "postgres://pgb_admin:$ADMIN_PASSWORD@127.0.0.1:$PORT_pgbouncer/pgbouncer?sslmode=disable" "SHOW VERSION"
    # Back on the source (the previous repetition left it on the target).
    pgbouncer_ini "$PORT_source"
    session admin "RELOAD" >/dev/null
    session_open src "$(url source)"
    session_open dst "$(url target)"
    ready_to_go "$name"
    start_load "$name" "$PORT_pgbouncer" "$DURATION"
    local pid=$LOAD_PID
    sleep "$SWITCH_AT"
    WS=$EPOCHREALTIME
    session admin "PAUSE bench" >/dev/null
    t1=$EPOCHREALTIME
    seqs=$(session src "UPDATE pgbench_branches SET filler = '$mark' WHERE bid = 1; $SEQUENCES_SQL")
    t2=$EPOCHREALTIME
    session dst "$(wait_marker_sql "$mark") $seqs" >/dev/null
    t3=$EPOCHREALTIME
    pgbouncer_ini "$PORT_target"
    session admin "RELOAD" >/dev/null
    t4=$EPOCHREALTIME
    session admin "RESUME bench" >/dev/null
    WE=$EPOCHREALTIME
    finish_load "$pid"
    TOOL_MS=$(ms "$WS" "$WE")
    TOOL_NOTE="PAUSE→RESUME ${TOOL_MS} ms: pause (drain) $(ms "$WS" "$t1"), marker + sequences read $(ms "$t1" "$t2"), catch-up + setval $(ms "$t2" "$t3"), repoint + RELOAD $(ms "$t3" "$t4"), RESUME $(ms "$t4" "$WE")"
    RUN_NAMES=("$name")
    session_close admin; session_close src; session_close dst
}

pgbouncer_teardown() {
    local pid i
    pid=$(pgbouncer_pid)
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$WORK/pgbouncer/pgbouncer.pid"
}

direct_setup() { :; }
direct_teardown() { :; }

direct_rep() {
    local r=$1 mark="switch-direct-$1" seqs t0 t1 t2 rest
    fresh_target "$WORK/plan-direct-$r"
    session_open src "$(url source)"
    session_open dst "$(url target)"
    ready_to_go "direct-$r"
    t0=$EPOCHREALTIME
    start_load "direct-$r-source" "$PORT_source" "$DURATION"
    local pid_a=$LOAD_PID
    sleep "$SWITCH_AT"
    WS=$EPOCHREALTIME
    # The fence: no new write from app, app's sessions (and their open transactions) ended.
    session src "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public FROM app;
                 REVOKE USAGE, UPDATE ON ALL SEQUENCES IN SCHEMA public FROM app;
                 SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE usename = 'app';" >/dev/null
    t1=$EPOCHREALTIME
    seqs=$(session src "UPDATE pgbench_branches SET filler = '$mark' WHERE bid = 1; $SEQUENCES_SQL")
    session dst "$(wait_marker_sql "$mark") $seqs" >/dev/null
    t2=$EPOCHREALTIME
    # The application, reconnected to the target, for the rest of the run.
    rest=$(awk -v d="$DURATION" -v e="$(elapsed "$t0" "$t2")" 'BEGIN { r = int(d - e + 0.5); print (r < 1 ? 1 : r) }')
    start_load "direct-$r-target" "$PORT_target" "$rest"
    local pid_b=$LOAD_PID
    finish_load "$pid_a"
    finish_load "$pid_b"
    # WE: the first commit on the target closes the window.
    WE=$(awk '$3 ~ /^[0-9]+$/ { t = $5 + $6 / 1e6; if (first == "" || t < first) first = t }
              END { if (first != "") printf "%.6f", first }' "$WORK"/logs/direct-"$r"-target/tx.*)
    [[ -n $WE ]] || die "no transaction on the target after the switch"
    TOOL_MS=$(ms "$WS" "$t2")
    TOOL_NOTE="fence → marker applied ${TOOL_MS} ms (fence $(ms "$WS" "$t1"), catch-up + sequences $(ms "$t1" "$t2")); fence → first commit on the target $(ms "$WS" "$WE") ms"
    RUN_NAMES=("direct-$r-source" "direct-$r-target")
    # Unfence the source for the next repetition.
    session src "GRANT ALL ON ALL TABLES IN SCHEMA public TO app; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app" >/dev/null
    session_close src; session_close dst
}

FLEET_PIDS=() FLEET_PORTS=()

fleet_setup() {
    local i port admin
    free_port; PORT_cutover=$FREE_PORT
    free_port; PORT_cutover_admin=$FREE_PORT
    fresh_target "$WORK/plan-fleet" proxy
    for ((i = 1; i <= FLEET; i++)); do
        free_port; port=$FREE_PORT
        free_port; admin=$FREE_PORT
        "$CUTOVER" --plan "$PLAN" proxy --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
            --state "$WORK/plan-fleet/proxy-$i.json" >"$WORK/logs/fleet-proxy-$i.log" 2>&1 &
        FLEET_PIDS+=($!)
        FLEET_PORTS+=("$port")
        wait_listening "$port" || { cat "$WORK/logs/fleet-proxy-$i.log" >&2; die "fleet proxy $i did not start"; }
    done
    "$CUTOVER" --plan "$PLAN" proxy status >"$WORK/logs/fleet-status.txt" 2>&1 \
        || { cat "$WORK/logs/fleet-status.txt" >&2; die "cutover proxy status failed"; }
    log "fleet of $FLEET proxies up on ports ${FLEET_PORTS[*]}: $(head -n 1 "$WORK/logs/fleet-status.txt")"
}

fleet_rep() {
    local r=$1 i pids=() names=() out="$WORK/logs/fleet-switchover-$1" clients=$CLIENTS
    CLIENTS=$(( (clients + FLEET - 1) / FLEET ))
    ready_to_go "fleet-$r"
    for ((i = 1; i <= FLEET; i++)); do
        start_load "fleet-$r-$i" "${FLEET_PORTS[$((i - 1))]}" "$DURATION"
        pids+=("$LOAD_PID")
        names+=("fleet-$r-$i")
    done
    CLIENTS=$clients
    sleep "$SWITCH_AT"
    WS=$EPOCHREALTIME
    "$CUTOVER" --plan "$PLAN" --json db switchover >"$out.json" 2>"$out.err" \
        || { cat "$out.err" >&2; die "cutover db switchover (fleet) failed"; }
    WE=$EPOCHREALTIME
    for i in "${pids[@]}"; do finish_load "$i"; done
    local wait pause per="" max stall before after failed aborted processed
    wait=$(jq -r '.longest_client_wait_ms | floor' "$out.json")
    pause=$(jq -r '.pause_ms | floor' "$out.json")
    for ((i = 1; i <= FLEET; i++)); do
        read -r max stall before after < <(analyze "$WS" "$WE" "fleet-$r-$i")
        read -r failed aborted processed < <(pgbench_figures "fleet-$r-$i")
        per+="; proxy $i: pause $(max_of "$max" "$stall") ms, failed $failed, aborted $aborted, $processed tx"
    done
    TOOL_MS=$wait
    TOOL_NOTE="longest_client_wait ${wait} ms, pause ${pause} ms, command $(ms "$WS" "$WE") ms$per"
    RUN_NAMES=("${names[@]}")
    "$CUTOVER" --plan "$PLAN" --json db rollback >"$WORK/logs/fleet-rollback-$r.json" 2>"$WORK/logs/fleet-rollback-$r.err" \
        || { cat "$WORK/logs/fleet-rollback-$r.err" >&2; die "cutover db rollback (fleet) failed"; }
}

fleet_teardown() {
    local pid
    for pid in "${FLEET_PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    FLEET_PIDS=() FLEET_PORTS=()
}

# --------------------------------------------------------------------------------------
# Report

declare -A PAUSES=() TOOLS=() FAILED=() ABORTED=() TPS=() DETAILS=()

record() {
    local method=$1 r=$2 max stall before after pause failed aborted processed tps idle_after
    idle_after=$(cpu_idle) # anything else running alongside shows here
    read -r max stall before after < <(analyze "$WS" "$WE" "${RUN_NAMES[@]}")
    read -r failed aborted processed < <(pgbench_figures "${RUN_NAMES[@]}")
    pause=$(max_of "$max" "$stall")
    tps=$(awk -v n="$processed" -v d="$DURATION" 'BEGIN { printf "%.0f", n / d }')
    PAUSES[$method]+=" $pause"
    TOOLS[$method]+=" $TOOL_MS"
    FAILED[$method]=$(( ${FAILED[$method]:-0} + failed ))
    ABORTED[$method]=$(( ${ABORTED[$method]:-0} + aborted ))
    TPS[$method]+=" $tps"
    DETAILS[$method]+="$method $r: pause $pause ms (max latency $max, stall $stall; p99 before $before, after $after ms), failed $failed, aborted $aborted, $processed tx ($tps tps), CPUs ${IDLE}% idle before, ${idle_after}% after; $TOOL_NOTE"$'\n'
    log "$method $r: pause $pause ms (max latency $max ms, stall $stall ms), tool $TOOL_MS ms, failed $failed, aborted $aborted"
}

pct() { # pct P VALUES...: the P-th percentile (nearest rank) of the values
    local p=$1; shift
    tr ' ' '\n' <<<"$*" | grep . | sort -g | awk -v p="$p" '{ v[NR] = $1 } END { i = int(NR * p / 100 + 0.999999); if (i < 1) i = 1; printf "%.0f", v[i] }'
}

report() {
    local m
    echo
    echo "## switchover under load: cutover vs PgBouncer PAUSE/RESUME vs no proxy"
    echo
    echo "- command: \`$COMMAND_LINE\`"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB memory, $(uname -sr)"
    echo "- versions: PostgreSQL $("$PGBIN/postgres" --version | sed 's/.*(PostgreSQL) //'); PgBouncer ${PGBOUNCER_VERSION:-$("$PGBOUNCER" --version | awk 'NR == 1 { print $NF }')}; cutover $("$CUTOVER" --version | awk '{ print $2 }') (release binary built $CUTOVER_BUILT; HEAD $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- '*.rs' 2>/dev/null || echo ', Rust sources with uncommitted changes'))"
    echo "- load: \`pgbench -n -M extended -c $CLIENTS -j $THREADS -T $DURATION --failures-detailed -l\` (TPC-B), switch at ${SWITCH_AT} s; pgbench scale $SCALE ($SOURCE_SIZE); $REPS repetitions per method"
    echo
    echo "| method | pause p50 ms | pause max ms | tool's figure p50 / max ms | failed tx | aborted clients | TPS p50 |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for m in $METHODS; do
        echo "| $m | $(pct 50 ${PAUSES[$m]}) | $(pct 100 ${PAUSES[$m]}) | $(pct 50 ${TOOLS[$m]}) / $(pct 100 ${TOOLS[$m]}) | ${FAILED[$m]} | ${ABORTED[$m]} | $(pct 50 ${TPS[$m]}) |"
    done
    echo
    echo "pause: the client-visible pause, from pgbench's per-transaction log (the longer of the"
    echo "highest latency of a transaction overlapping the switch and the longest time in it with"
    echo "no transaction ending). tool's figure: cutover's longest_client_wait_ms; PgBouncer's"
    echo "PAUSE sent → RESUME answered; direct: fence started → marker applied on the target."
    echo
    echo "Every repetition:"
    echo
    echo '```'
    for m in $METHODS; do printf '%s' "${DETAILS[$m]}"; done
    echo '```'
}

main() {
    find_pg_bindir
    find_tools
    setup_workdir
    build_cutover
    cd "$WORK"
    local m r
    for m in $METHODS; do case $m in cutover | pgbouncer | direct | fleet) ;; *) die "unknown method $m" ;; esac; done
    ((SWITCH_AT < DURATION)) || die "SWITCH_AT ($SWITCH_AT) must be less than DURATION ($DURATION)"
    make_clusters
    for m in $METHODS; do
        "${m}_setup"
        for ((r = 1; r <= REPS; r++)); do
            "${m}_rep" "$r"
            record "$m" "$r"
        done
        "${m}_teardown"
    done
    report
}

main "$@"; exit # one line: bash reads no further, so editing this file during a run is harmless
