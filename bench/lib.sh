# shellcheck shell=bash
# bench/lib.sh: the shell helpers that the benchmark scripts in bench/ share.
#
# Sourced, not run: each script sources it with `source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"`
# right after `set -euo pipefail`. Sourcing defines functions and a few variables and installs
# the exit trap (cleanup); it starts nothing. The script provides what the helpers it uses read:
#   stop_processes    a function: what to stop on exit, before the logs are kept and WORK is
#                     removed (cleanup skips it while the script has not defined it yet)
#   WORK, LOG_DIR     the work folder (its setup_workdir) and the knob naming where logs go
#   CLUSTER_SETTINGS  the postgresql.conf lines for start_cluster
#   PGBIN, CUTOVER, QUIET_WAIT   from find_pg_bindir and the knobs
# A helper whose versions differ between scripts stays in each script, under a name not used
# here, so that no definition in this file is silently replaced.

# The repository: this file is in its bench/ folder.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --------------------------------------------------------------------------------------
# Programs

find_pg_bindir() {
    local dir
    dir=$(pg_config --bindir 2>/dev/null || true)
    if [[ -z $dir || ! -x $dir/initdb ]]; then dir=/usr/lib/postgresql/15/bin; fi
    [[ -x $dir/initdb && -x $dir/pg_ctl ]] || die "PostgreSQL server programs (initdb, pg_ctl) not found"
    PGBIN=$dir
    export PATH="$PGBIN:$PATH"
}

# apt_install [--no-install-recommends] PROBLEM PACKAGE...: installs packages from the
# distribution with apt-get (as .ci/run does for PostgreSQL). Only root can: anyone else gets
# PROBLEM and the command to run.
apt_install() {
    local opts=() problem cmd
    if [[ $1 == --no-install-recommends ]]; then opts=("$1"); shift; fi
    problem=$1
    shift
    cmd="apt-get install -y${opts[*]:+ ${opts[*]}} $*"
    [[ $(id -u) -eq 0 ]] || die "$problem; run: $cmd"
    log "installing $* ($cmd)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${opts[@]}" "$@" >&2
}

# The binary is copied into the work folder, so a rebuild during the run cannot change it.
build_cutover() {
    if [[ -z $CUTOVER ]]; then
        log "building cutover (cargo build --release --bin cutover)"
        (cd "$ROOT" && timeout 3600 cargo build --release --bin cutover) >&2
        local target_dir=${CARGO_TARGET_DIR:-target}
        [[ $target_dir = /* ]] || target_dir="$ROOT/$target_dir"
        CUTOVER="$target_dir/release/cutover"
    fi
    [[ -x $CUTOVER ]] || die "no cutover binary at $CUTOVER"
    # shellcheck disable=SC2034 # read by the scripts' reports
    CUTOVER_BUILT=$(date -u -r "$CUTOVER" '+%Y-%m-%d %H:%M UTC')
    cp "$CUTOVER" "$WORK/cutover"
    CUTOVER="$WORK/cutover"
}

# --------------------------------------------------------------------------------------
# Work folder, clean-up

WORK=""
declare -a CLUSTERS=()   # data directories of running clusters
AS_PG=()                 # prefix that runs a server program as the right user

# use_postgres_user: as root, sets AS_PG so that server programs run as the postgres user
# (PostgreSQL and PgBouncer refuse to run as root).
use_postgres_user() {
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no postgres user"
        AS_PG=(runuser -u postgres --)
    fi
}

# stop_clusters: stops every cluster in CLUSTERS at once, for the exit (no checkpoint: the
# data is thrown away).
stop_clusters() {
    local dir
    for dir in "${CLUSTERS[@]}"; do
        "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$dir" -m immediate -w -t 30 stop >/dev/null 2>&1
    done
}

# On exit, whatever the cause: the script's stop_processes, then $WORK/logs copied to LOG_DIR
# when that is set, then WORK removed; the script's exit status is kept.
cleanup() {
    local rc=$?
    set +e
    if declare -F stop_processes >/dev/null; then stop_processes; fi
    if [[ -n ${LOG_DIR:-} && -n $WORK ]]; then
        mkdir -p "$LOG_DIR" && cp -r "$WORK/logs/." "$LOG_DIR/" && log "logs kept in $LOG_DIR"
    fi
    [[ -n $WORK ]] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------------------------------
# Ports, clusters

# free_port: sets FREE_PORT to a port nobody uses, below the kernel's range of ephemeral
# (client) ports, so that no outgoing connection can be holding it either. Not printed: a
# $(...) subshell would forget the ports already handed out (TAKEN_PORTS).
TAKEN_PORTS=""
free_port() {
    local low p
    low=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    for _ in $(seq 1 200); do
        p=$((10000 + RANDOM % (low - 10000)))
        [[ " $TAKEN_PORTS " == *" $p "* ]] && continue
        if command -v ss >/dev/null; then
            [[ -n $(ss -Htan "( sport = :$p )") ]] && continue
        elif (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            continue
        fi
        TAKEN_PORTS+=" $p"
        # shellcheck disable=SC2034 # read by the scripts
        FREE_PORT=$p
        return
    done
    die "no free port found"
}

# start_cluster NAME [--forget-port]: initdb + start on a free port (another is tried when the
# port was taken in the meantime); sets PORT_<NAME>. With --forget-port the port is picked in
# a subshell, so it is not kept in TAKEN_PORTS and may be handed out again once the cluster
# is gone: copy.sh's way, whose target clusters come and go.
start_cluster() {
    local name=$1 dir="$WORK/$1" port attempt
    "${AS_PG[@]}" "$PGBIN/initdb" -D "$dir" -U postgres --pwfile="$WORK/pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync \
        >"$WORK/logs/initdb-$name.log" 2>&1 || die "initdb $name failed (see $WORK/logs)"
    {
        echo "$CLUSTER_SETTINGS"
        echo "unix_socket_directories = '$dir'"
    } >> "$dir/postgresql.conf"
    CLUSTERS+=("$dir")
    for attempt in 1 2 3 4 5; do
        if [[ ${2:-} == --forget-port ]]; then port=$(free_port; echo "$FREE_PORT"); else free_port; port=$FREE_PORT; fi
        if "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$dir" -l "$dir/server.log" -o "-p $port" -w -t 120 start >/dev/null; then
            printf -v "PORT_$name" '%s' "$port"
            log "cluster $name up on 127.0.0.1:$port"
            return
        fi
        grep -q "could not bind" "$dir/server.log" || break
        log "port $port was taken, trying another"
    done
    cat "$dir/server.log" >&2
    die "cannot start cluster $name"
}

# wait_listening PORT: until something accepts connections on 127.0.0.1:PORT (10 s at most).
wait_listening() {
    local i
    for i in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# --------------------------------------------------------------------------------------
# Measuring

# cpu_idle: share of CPU time idle over the next second, in percent (all CPUs).
cpu_idle() {
    local stat='/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' before after
    before=$(awk "$stat" /proc/stat); sleep 1; after=$(awk "$stat" /proc/stat)
    awk -v a="$before" -v b="$after" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        printf "%d", (y[2] > x[2] ? 100 * (y[1] - x[1]) / (y[2] - x[2]) : 100) }'
}

# wait_idle: waits until the CPUs are >= 90% idle, for QUIET_WAIT seconds at most; sets IDLE.
# Each script's wait_quiet calls it and words its own warning when they stay busy.
wait_idle() {
    local deadline=$((SECONDS + QUIET_WAIT))
    IDLE=$(cpu_idle)
    while ((IDLE < 90 && SECONDS < deadline)); do IDLE=$(cpu_idle); done
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
