#!/usr/bin/env bash
# bench/proxy.sh: what does `cutover proxy` cost in throughput, against PgBouncer?
#
# Runs the same pgbench load, one after the other on this machine, against the same
# PostgreSQL database three ways, and prints the transactions per second of each:
#
#   direct     pgbench connects to PostgreSQL itself
#   cutover    through `cutover proxy` (session mode: each client owns one server connection)
#   pgbouncer  through PgBouncer in session mode (pool_mode = session, default_pool_size
#              = CLIENTS + 8, so every client keeps one server connection, as with cutover)
#
# Two workloads, each for DURATION seconds with CLIENTS clients:
#
#   select     `pgbench -S -M prepared`: one primary-key SELECT per transaction, the case
#              where a proxy's per-message cost shows most
#   tpcb       pgbench's default TPC-B-like script (5 statements and a commit, with
#              `-M $TPCB_MODE`): a write load, where fsync and row locks weigh more
#
# Every client logs in as the role `app` with a SCRAM password, over TCP, to all three (the
# proxies check the password and log in to PostgreSQL with it). pgbench runs with
# `-j THREADS` threads (default 2: this is written for a 2-core machine, where pgbench, the
# proxy and PostgreSQL share the CPUs; more threads than cores only adds switching).
#
# Each (workload, target) pair runs ROUNDS times, the order of the targets rotating from round
# to round, and the median counts. It then prints the TPS, the ratios cutover/direct,
# pgbouncer/direct and cutover/pgbouncer, every round's figures, and, from /proc, how much
# CPU each proxy process used per transaction (user + system time of all its threads over the
# run) and its context switches per transaction, against the whole machine's CPU per
# transaction: on a CPU-bound machine, a proxy's TPS is what its CPU per transaction, and what
# it makes the others spend, leave to PostgreSQL and pgbench.
#
# Before each run the script waits (up to QUIET_WAIT seconds) until the CPUs are at least 90%
# idle and does a CHECKPOINT; it reports the idle share it found then and in the second after
# the run (a low figure after means something else ran alongside: that run is suspect).
#
# Everything runs on one temporary PostgreSQL cluster this script starts on a free 127.0.0.1
# port (a second, empty database on it is the plan's target, which the proxy never uses
# here), with `cutover proxy` and PgBouncer on free ports beside it. Nothing leaves the
# loopback interface. Everything is stopped and every temporary file removed on exit (trap).
# This is a benchmark to run by hand; it is not part of the test suite.
#
# Usage:   bench/proxy.sh            (from anywhere; paths are relative to the repository)
# Knobs (environment):
#   DURATION=20       seconds per pgbench run
#   CLIENTS=32        pgbench clients (-c)
#   THREADS=2         pgbench threads (-j)
#   SCALE=32          pgbench scale factor (32 = 3.2 million accounts, ~480 MB)
#   ROUNDS=2          runs of each (workload, target); the median is reported
#   WORKLOADS="select tpcb"          which workloads
#   TARGETS="direct cutover pgbouncer"   which targets, in which order (first round)
#   TPCB_MODE=simple  pgbench -M for the TPC-B run (simple, extended or prepared)
#   QUIET_WAIT=30     seconds to wait at most for an idle machine before each run
#   PROFILE=0         1: after the rounds, extra select runs for each target, not counted in
#                     the figures: under `perf record -a` and `perf stat -a` (CPU µs per
#                     transaction by program, context switches and system calls per
#                     transaction, the proxy's top functions) and, for a proxy, under
#                     `perf trace -s` (its system calls per transaction). Needs perf.
#   CUTOVER=          a cutover binary to use instead of building one
#                     (default: `cargo build --release --bin cutover`, target/release/cutover)
#   LOG_DIR=          if set, every log (server, proxies, pgbench) is copied there before cleanup
#   CARGO_TARGET_DIR  honoured when looking for the cutover binary
#   TOKIO_WORKER_THREADS  passed on to `cutover proxy` (tokio's default: one worker per CPU)
#
# When run as root, PostgreSQL and PgBouncer run as the `postgres` user (both refuse root).
# PgBouncer is installed with apt-get when missing (root only).

set -euo pipefail
export LC_ALL=C # a "." in awk's numbers
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-20}
CLIENTS=${CLIENTS:-32}
THREADS=${THREADS:-2}
SCALE=${SCALE:-32}
ROUNDS=${ROUNDS:-2}
WORKLOADS=${WORKLOADS:-"select tpcb"}
TARGETS=${TARGETS:-"direct cutover pgbouncer"}
TPCB_MODE=${TPCB_MODE:-simple}
QUIET_WAIT=${QUIET_WAIT:-30}
PROFILE=${PROFILE:-0}
CUTOVER=${CUTOVER:-}
LOG_DIR=${LOG_DIR:-}

COMMAND_LINE="${TOKIO_WORKER_THREADS:+TOKIO_WORKER_THREADS=$TOKIO_WORKER_THREADS }DURATION=$DURATION CLIENTS=$CLIENTS THREADS=$THREADS SCALE=$SCALE ROUNDS=$ROUNDS TPCB_MODE=$TPCB_MODE TARGETS=\"$TARGETS\" bench/proxy.sh${*:+ $*}"

# The cluster's settings. fsync and synchronous_commit stay at their (durable) defaults.
CLUSTER_SETTINGS="
listen_addresses = '127.0.0.1'
password_encryption = 'scram-sha-256'
max_connections = 200
shared_buffers = '256MB'
max_wal_size = '4GB'
checkpoint_timeout = '30min'
fsync = on
synchronous_commit = on
log_min_messages = warning
"

# --------------------------------------------------------------------------------------
# Programs

# PgBouncer from the distribution, installed when missing.
find_pgbouncer() {
    PGBOUNCER=$(command -v pgbouncer || true)
    [[ -z $PGBOUNCER && -x /usr/sbin/pgbouncer ]] && PGBOUNCER=/usr/sbin/pgbouncer
    if [[ -z $PGBOUNCER ]]; then
        apt_install "pgbouncer is not installed" pgbouncer
        PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
    fi
    [[ -x $PGBOUNCER ]] || die "no pgbouncer program"
}

# --------------------------------------------------------------------------------------
# Temporary cluster, proxies

PROXY_PID=""

setup_workdir() {
    WORK=$(mktemp -d /tmp/cutover-bench.XXXXXX)
    use_postgres_user
    mkdir -p "$WORK/logs" "$WORK/pgbouncer"
    PASSWORD=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
    APP_PASSWORD=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
    CUTOVER_ADMIN_TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    export APP_PASSWORD CUTOVER_ADMIN_TOKEN
    printf '%s\n' "$PASSWORD" > "$WORK/pwfile"
    [[ $(id -u) -eq 0 ]] && chown -R postgres: "$WORK"
    export PGPASSWORD=$PASSWORD   # the script's own psql calls, as postgres, over TCP
}

pgbouncer_pid() { cat "$WORK/pgbouncer/pgbouncer.pid" 2>/dev/null || true; }

# stop_processes: run by lib.sh's cleanup on exit, before it keeps the logs and removes WORK.
stop_processes() {
    local pid
    [[ -n $PROXY_PID ]] && kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null
    pid=$(pgbouncer_pid)
    [[ -n $pid ]] && kill "$pid" 2>/dev/null
    stop_clusters
    if [[ -n $LOG_DIR && -n $WORK ]]; then
        cp "$WORK"/source/server.log "$WORK/logs/server-source.log" 2>/dev/null
    fi
}

# url [DB]: the superuser's URL (password included; only ever local and temporary).
url() { echo "postgres://postgres:$PASSWORD@127.0.0.1:$PORT_source/${1:-bench}?sslmode=disable"; }

# app_url PORT: the application's URL through a port (PostgreSQL's or a proxy's).
app_url() { echo "postgres://app:$APP_PASSWORD@127.0.0.1:$1/bench?sslmode=disable"; }

sql() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$(url)" -c "$1"; }

make_source() {
    start_cluster source
    psql -X -q -v ON_ERROR_STOP=1 -d "$(url postgres)" >/dev/null <<SQL
CREATE ROLE app LOGIN PASSWORD '$APP_PASSWORD';
CREATE DATABASE bench OWNER app;
CREATE DATABASE bench_target;
SQL
    log "pgbench -i -s $SCALE on the source, as app"
    pgbench -i -q -s "$SCALE" "$(app_url "$PORT_source")" >"$WORK/logs/pgbench-init.log" 2>&1 \
        || { cat "$WORK/logs/pgbench-init.log" >&2; die "pgbench -i failed"; }
    sql "VACUUM ANALYZE"
    sql "CHECKPOINT"
    SOURCE_SIZE=$(sql "SELECT pg_size_pretty(pg_database_size('bench'))")
    log "source ready: $SOURCE_SIZE"
}

start_cutover_proxy() {
    free_port; PORT_cutover=$FREE_PORT
    local admin_port
    free_port; admin_port=$FREE_PORT
    export SRC DST
    SRC=$(url bench)
    DST=$(url bench_target)
    cat >"$WORK/cutover.toml" <<TOML
[source]
url = "\${SRC}"

[target]
# Required by the plan; the proxy never leaves the source in this benchmark.
url = "\${DST}"

[proxy]
listen = "127.0.0.1:$PORT_cutover"
admin_listen = "127.0.0.1:$admin_port"
admin_token = "\${CUTOVER_ADMIN_TOKEN}"

[[proxy.users]]
name = "app"
password = "\${APP_PASSWORD}"
auth = "scram-sha-256"
TOML
    "$CUTOVER" --plan "$WORK/cutover.toml" proxy >"$WORK/logs/cutover-proxy.log" 2>&1 &
    PROXY_PID=$!
    wait_listening "$PORT_cutover" || { cat "$WORK/logs/cutover-proxy.log" >&2; die "cutover proxy did not start"; }
    log "cutover proxy up on 127.0.0.1:$PORT_cutover (pid $PROXY_PID)"
}

start_pgbouncer() {
    free_port; PORT_pgbouncer=$FREE_PORT
    local d="$WORK/pgbouncer"
    # A plain-text password in the auth file lets PgBouncer run SCRAM with the client and
    # with the server alike.
    printf '"app" "%s"\n' "$APP_PASSWORD" >"$d/userlist.txt"
    cat >"$d/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PORT_source dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT_pgbouncer
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $d/userlist.txt
pool_mode = session
default_pool_size = $((CLIENTS + 8))
max_client_conn = $((CLIENTS * 2 + 20))
logfile = $WORK/logs/pgbouncer.log
pidfile = $d/pgbouncer.pid
log_connections = 0
log_disconnections = 0
INI
    [[ $(id -u) -eq 0 ]] && chown -R postgres: "$d" "$WORK/logs"
    "${AS_PG[@]}" "$PGBOUNCER" -d "$d/pgbouncer.ini" >"$WORK/logs/pgbouncer.out" 2>&1 \
        || { cat "$WORK/logs/pgbouncer.out" "$WORK/logs/pgbouncer.log" >&2 || true; die "pgbouncer did not start"; }
    wait_listening "$PORT_pgbouncer" || { cat "$WORK/logs/pgbouncer.log" >&2; die "pgbouncer did not start"; }
    log "pgbouncer $("$PGBOUNCER" --version | awk 'NR == 1 { print $NF }') up on 127.0.0.1:$PORT_pgbouncer (pid $(pgbouncer_pid))"
}

# --------------------------------------------------------------------------------------
# Measuring

# wait_quiet: waits until the CPUs are >= 90% idle, for QUIET_WAIT seconds at most; sets IDLE.
wait_quiet() {
    wait_idle
    ((IDLE >= 90)) || log "warning: the machine is busy (${IDLE}% idle) and stays so; timing anyway"
}

# busy_ticks: CPU ticks spent not idle, all CPUs. proc_ticks PID: user + system ticks of a process.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
proc_ticks() { [[ -n $1 && -r /proc/$1/stat ]] && awk '{ print $14 + $15 }' "/proc/$1/stat" || echo 0; }
# proc_switches PID: context switches (voluntary + involuntary) of all a process's threads.
proc_switches() {
    [[ -n $1 && -d /proc/$1/task ]] || { echo 0; return; }
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { n += $2 } END { print n + 0 }'
}
HZ=$(getconf CLK_TCK)

# target_pid TARGET: the process id of the proxy in front; none for direct.
target_pid() {
    case $1 in
        cutover) echo "$PROXY_PID" ;;
        pgbouncer) pgbouncer_pid ;;
        *) echo "" ;;
    esac
}

median() { tr ' ' '\n' <<<"$*" | grep . | sort -g | awk '{ v[NR] = $1 } END { printf "%.0f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
median2() { tr ' ' '\n' <<<"$*" | grep . | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
declare -A TPS=()            # workload/target -> "tps1 tps2 ..."
declare -A RUNS=()           # workload/target -> "tps (idle% before/after); ..."
declare -A PROXY_US=()       # workload/target -> "µs of proxy CPU per transaction ..."
declare -A MACHINE_US=()     # workload/target -> "µs of machine CPU per transaction ..."
declare -A PROXY_CORE=()     # workload/target -> "% of one core the proxy used ..."
declare -A SWITCHES=()       # workload/target -> "proxy context switches per transaction ..."
declare -A PERF_REPORT=()    # target -> the proxy's top functions and system calls
declare -A MACHINE_EVENTS=() # target -> "context switches/tx system calls/tx transactions" (whole machine)
declare -A CPU_SPLIT=()      # target -> "program=µs/tx ... tps=N" (whole machine, from perf record -a)
declare -A CPU_TOP=()        # target -> "thread name, program/library, µs/tx" lines, above 0.5% of the samples

pgbench_args() {
    case $1 in
        select) echo "-S -M prepared" ;;
        tpcb) echo "-M $TPCB_MODE" ;;
    esac
}

bench_one() {
    local workload=$1 target=$2 port pid b0 b1 p0 p1 s0 s1 tps out
    case $target in
        direct) port=$PORT_source ;;
        cutover) port=$PORT_cutover ;;
        pgbouncer) port=$PORT_pgbouncer ;;
    esac
    sql "CHECKPOINT"
    wait_quiet
    out="$WORK/logs/pgbench-$workload-$target-r$ROUND.log"
    pid=$(target_pid "$target")
    log "round $ROUND: $workload via $target (CPUs ${IDLE}% idle before)"
    b0=$(busy_ticks); p0=$(proc_ticks "$pid"); s0=$(proc_switches "$pid")
    # shellcheck disable=SC2046 # the workload's options are words
    pgbench -n $(pgbench_args "$workload") -c "$CLIENTS" -j "$THREADS" -T "$DURATION" \
        "$(app_url "$port")" >"$out" 2>&1 || { cat "$out" >&2; die "pgbench $workload via $target failed"; }
    b1=$(busy_ticks); p1=$(proc_ticks "$pid"); s1=$(proc_switches "$pid")
    local idle_after
    idle_after=$(cpu_idle) # anything else still running shows here
    local failed
    failed=$(awk -F': ' '/^number of failed transactions/ { print $2 + 0 }' "$out")
    [[ ${failed:-0} == 0 ]] || die "$failed failed transactions via $target (see $out)"
    if grep -q 'aborted' "$out"; then die "a client aborted via $target: $(grep -m1 aborted "$out")"; fi
    tps=$(awk '/^tps = / { printf "%.0f", $3 }' "$out")
    local txns
    txns=$(awk -F': ' '/^number of transactions actually processed/ { print $2 + 0 }' "$out")
    local proxy_us machine_us core switches
    machine_us=$(awk -v t="$((b1 - b0))" -v n="$txns" -v hz="$HZ" 'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
    if [[ -n $pid ]]; then
        proxy_us=$(awk -v t="$((p1 - p0))" -v n="$txns" -v hz="$HZ" 'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
        core=$(awk -v t="$((p1 - p0))" -v d="$DURATION" -v hz="$HZ" 'BEGIN { printf "%.0f", 100 * t / hz / d }')
        switches=$(awk -v s="$((s1 - s0))" -v n="$txns" 'BEGIN { printf "%.2f", s / n }')
    else
        proxy_us=0; core=0; switches=0
    fi
    log "round $ROUND: $workload via $target: $tps tps (CPUs ${idle_after}% idle after; proxy ${core}% of a core, ${proxy_us} µs/tx, $switches context switches/tx; machine ${machine_us} µs/tx)"
    local k="$workload/$target"
    TPS[$k]+=" $tps"
    PROXY_US[$k]+=" $proxy_us"
    MACHINE_US[$k]+=" $machine_us"
    PROXY_CORE[$k]+=" $core"
    SWITCHES[$k]+=" $switches"
    RUNS[$k]+="${RUNS[$k]:+; }$tps (${IDLE}/${idle_after}%)"
}

# profile TARGET: more select runs, not counted in the figures. The first under a
# system-wide `perf record -a` for its middle DURATION - 4 seconds (whose CPU time each
# transaction costs: pgbench, PostgreSQL, the proxy, idle; and where the proxy's goes) and a
# system-wide `perf stat -a` (context switches and system calls per transaction); for a
# proxy, a second one under `perf trace -s` on the proxy process (its system calls per
# transaction). Keeps the summaries in PERF_REPORT, CPU_SPLIT and MACHINE_EVENTS.
profile() {
    local target=$1 port pid load tracer txns tps stats comms secs=$((DURATION > 6 ? DURATION - 4 : 2))
    case $target in direct) port=$PORT_source ;; cutover) port=$PORT_cutover ;; pgbouncer) port=$PORT_pgbouncer ;; esac
    pid=$(target_pid "$target")
    log "profiling $target (select, not counted): perf record -a, perf stat -a"
    perf stat -a -x, -e sched:sched_switch,raw_syscalls:sys_enter -o "$WORK/logs/perf-stat-$target.txt" >/dev/null 2>&1 &
    stats=$!
    # shellcheck disable=SC2046 # the workload's options are words
    pgbench -n $(pgbench_args select) -c "$CLIENTS" -j "$THREADS" -T "$DURATION" "$(app_url "$port")" \
        >"$WORK/logs/pgbench-profile-$target.log" 2>&1 &
    load=$!
    sleep 2
    perf record -a -F 499 -g -o "$WORK/logs/perf-$target.data" -- sleep "$secs" >"$WORK/logs/perf-$target.log" 2>&1 || true
    wait "$load" || true
    kill -INT "$stats" 2>/dev/null; wait "$stats" 2>/dev/null || true
    txns=$(awk -F': ' '/^number of transactions actually processed/ { print $2 + 0 }' "$WORK/logs/pgbench-profile-$target.log")
    tps=$(awk '/^tps = / { printf "%.0f", $3 }' "$WORK/logs/pgbench-profile-$target.log")
    MACHINE_EVENTS[$target]=$(awk -F, -v n="${txns:-0}" '
        $3 ~ /sched_switch/ { cs = $1 } $3 ~ /sys_enter/ { sc = $1 }
        END { if (n > 0) printf "%.2f %.2f %.0f", cs / n, sc / n, n }' "$WORK/logs/perf-stat-$target.txt")
    # Samples are taken on every CPU at the same rate, idle included (swapper): a program's
    # share of them times the CPUs, over the transactions per second, is its CPU per transaction.
    CPU_SPLIT[$target]=$(perf report -i "$WORK/logs/perf-$target.data" --no-children --sort comm --stdio -g none 2>/dev/null \
        | awk -v tps="${tps:-0}" -v cpus="$(nproc)" '$1 ~ /%$/ && tps > 0 {
            pct = $1; sub(/%/, "", pct); name = $2
            if (name == "swapper") name = "idle"
            else if (name ~ /^tokio-/ || name == "cutover") name = "cutover"
            else if (name != "postgres" && name != "pgbench" && name != "pgbouncer") name = "other"
            us[name] += pct / 100 * cpus * 1e6 / tps }
            END { for (k in us) printf "%s=%.1f ", k, us[k] }')
    CPU_SPLIT[$target]+="tps=$tps"
    CPU_TOP[$target]=$(perf report -i "$WORK/logs/perf-$target.data" --no-children --sort comm,dso --stdio -g none 2>/dev/null \
        | awk -v tps="${tps:-0}" -v cpus="$(nproc)" '$1 ~ /%$/ && tps > 0 { pct = $1; sub(/%/, "", pct)
            if (pct >= 0.5) printf "    %-16s %-24s %6.1f\n", $2, $3, pct / 100 * cpus * 1e6 / tps }')
    [[ -n $pid ]] || return 0
    case $target in cutover) comms=$(ls /proc/"$pid"/task/*/comm | xargs cat | sort -u | paste -sd,) ;; *) comms=pgbouncer ;; esac
    log "profiling $target (select, not counted): perf trace -s"
    perf trace -s -o "$WORK/logs/perf-trace-$target.txt" -p "$pid" >/dev/null 2>&1 &
    tracer=$!
    sleep 1
    # shellcheck disable=SC2046
    pgbench -n $(pgbench_args select) -c "$CLIENTS" -j "$THREADS" -T "$DURATION" "$(app_url "$port")" \
        >"$WORK/logs/pgbench-trace-$target.log" 2>&1 || true
    kill -INT "$tracer" 2>/dev/null; wait "$tracer" 2>/dev/null || true
    txns=$(awk -F': ' '/^number of transactions actually processed/ { print $2 + 0 }' "$WORK/logs/pgbench-trace-$target.log")
    PERF_REPORT[$target]=$(
        echo "the proxy's CPU by function, above 1% (perf record -a, threads $comms):"
        perf report -i "$WORK/logs/perf-$target.data" --comms "$comms" --percentage relative --no-children -F overhead,dso,sym --percent-limit 1 --stdio -g none 2>/dev/null \
            | grep -v '^#' | grep -v '^ *$' | head -n 25 || true
        echo "the proxy's system calls per transaction, all threads (perf trace -s over a run of ${txns:-?} transactions, $(awk '/^tps = / { printf "%.0f", $3 }' "$WORK/logs/pgbench-trace-$target.log") tps under tracing):"
        awk -v n="${txns:-0}" '$2 ~ /^[0-9]+$/ && $1 ~ /^[a-z_0-9]+$/ && n > 0 { c[$1] += $2; t += $2 }
            END { for (k in c) if (c[k] / n >= 0.01) printf "    %-16s %6.2f\n", k, c[k] / n; printf "    %-16s %6.2f\n", "total", t / n }' \
            "$WORK/logs/perf-trace-$target.txt" | sort -k2 -g -r)
}

# --------------------------------------------------------------------------------------
# Report

# part TARGET KEY: one figure of CPU_SPLIT[TARGET] ("key=value ..."), 0 when absent.
part() {
    local split=" ${CPU_SPLIT[$1]:-} " v
    [[ $split == *" $2="* ]] || { echo 0; return; }
    v=${split##* $2=}
    echo "${v%% *}"
}

report() {
    local w t med d c p cs sc n
    echo
    echo "## cutover proxy throughput benchmark"
    echo
    echo "- command: \`$COMMAND_LINE\`"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB memory, $(uname -sr)"
    echo "- versions: PostgreSQL $("$PGBIN/postgres" --version | sed 's/.*(PostgreSQL) //'); PgBouncer $("$PGBOUNCER" --version | awk 'NR == 1 { print $NF }'); cutover $("$CUTOVER" --version | awk '{ print $2 }') (release binary built $CUTOVER_BUILT; HEAD $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- '*.rs' 2>/dev/null || echo ', Rust sources with uncommitted changes'))"
    echo "- data: pgbench scale $SCALE ($SOURCE_SIZE); $CLIENTS clients, pgbench -j $THREADS, ${DURATION} s per run, $ROUNDS rounds; medians"
    for w in $WORKLOADS; do
        echo
        echo "### $w: \`pgbench -n $(pgbench_args "$w") -c $CLIENTS -j $THREADS -T $DURATION\`"
        echo
        echo "| target | median TPS | ÷ direct | proxy CPU, % of a core | proxy CPU µs/tx | proxy context switches/tx | machine CPU µs/tx | every round: TPS (CPUs idle before/after) |"
        echo "|---|---:|---:|---:|---:|---:|---:|---|"
        d=$(median ${TPS[$w/direct]:-0})
        for t in $TARGETS; do
            med=$(median ${TPS[$w/$t]})
            echo "| $t | $med | $(ratio "$med" "$d") | $(median ${PROXY_CORE[$w/$t]}) | $(median ${PROXY_US[$w/$t]}) | $(median2 ${SWITCHES[$w/$t]}) | $(median ${MACHINE_US[$w/$t]}) | ${RUNS[$w/$t]} |"
        done
        c=$(median ${TPS[$w/cutover]:-0}); p=$(median ${TPS[$w/pgbouncer]:-0})
        echo
        echo "$w ratios: cutover/direct $(ratio "$c" "$d"), pgbouncer/direct $(ratio "$p" "$d"), **cutover/pgbouncer $(ratio "$c" "$p")**"
    done
    if ((${#MACHINE_EVENTS[@]})); then
        echo
        echo "The whole machine during an extra select run per target (not counted above): CPU µs per"
        echo "transaction by program (\`perf record -a -F 499\`: a program's share of the samples × $(nproc) CPUs ÷ TPS),"
        echo "and context switches and system calls per transaction (\`perf stat -a -e sched:sched_switch,raw_syscalls:sys_enter\`):"
        echo
        echo "| target | TPS | pgbench µs/tx | postgres µs/tx | proxy µs/tx | other µs/tx | idle µs/tx | context switches/tx | system calls/tx |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        for t in $TARGETS; do
            [[ -n ${MACHINE_EVENTS[$t]:-} ]] || continue
            read -r cs sc n <<<"${MACHINE_EVENTS[$t]}"
            echo "| $t | $(part "$t" tps) | $(part "$t" pgbench) | $(part "$t" postgres) | $( [[ $t == direct ]] && echo - || part "$t" "$t") | $(part "$t" other) | $(part "$t" idle) | $cs | $sc |"
        done
        echo
        echo "The same, by thread name and program or library, in µs per transaction (above 0.5% of the"
        echo "samples; anything else running on the machine shows here too):"
        echo
        echo '```'
        for t in $TARGETS; do
            [[ -n ${CPU_TOP[$t]:-} ]] || continue
            echo "$t:"
            echo "${CPU_TOP[$t]}"
        done
        echo '```'
    fi
    for t in $TARGETS; do
        [[ -n ${PERF_REPORT[$t]:-} ]] || continue
        echo
        echo "Where the $t process's time goes (the same extra select run, \`perf record -a -F 499 -g\` filtered to its threads, self time; then another run under \`perf trace -s -p <pid>\`):"
        echo
        echo '```'
        echo "${PERF_REPORT[$t]}"
        echo '```'
    done
}

main() {
    find_pg_bindir
    find_pgbouncer
    setup_workdir
    build_cutover
    cd "$WORK"
    local t w order
    for t in $TARGETS; do case $t in direct | cutover | pgbouncer) ;; *) die "unknown target $t" ;; esac; done
    for w in $WORKLOADS; do case $w in select | tpcb) ;; *) die "unknown workload $w" ;; esac; done
    if [[ $PROFILE == 1 ]]; then command -v perf >/dev/null || die "PROFILE=1 needs perf"; fi
    make_source
    start_cutover_proxy
    start_pgbouncer
    read -r -a order <<<"$TARGETS"
    for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
        for w in $WORKLOADS; do
            for t in "${order[@]}"; do bench_one "$w" "$t"; done
        done
        order=("${order[@]:1}" "${order[0]}") # rotate, so no target always goes first
    done
    if [[ $PROFILE == 1 ]]; then
        for t in $TARGETS; do profile "$t"; done
    fi
    report
}

main "$@"; exit # one line: bash reads no further, so editing this file during a run is harmless
