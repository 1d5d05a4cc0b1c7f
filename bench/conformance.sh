#!/usr/bin/env bash
# bench/conformance.sh: does psycopg 3's own test suite pass through `cutover proxy` as it
# does directly against PostgreSQL?
#
# psycopg's suite is a few thousand tests of the wire protocol as a real driver uses it:
# simple and extended queries, pipeline mode, COPY in both directions, prepared statements,
# server-side cursors, notifications, cancel requests, two-phase commit, connection
# parameters, errors in every state. This script runs it twice on the same PostgreSQL 15
# cluster, once straight at the server and once through `cutover proxy`, and compares the
# sets of failing tests:
#
#   direct   PSYCOPG_TEST_DSN="host=127.0.0.1 port=<server> dbname=conformance user=psycopg_test ..."
#   proxy    the same DSN with the proxy's port; the proxy logs in to the server as the same
#            role with the same password (SCRAM on both legs)
#
# Each run gets a freshly created database, the same pytest options and the same test order
# (pytest-randomly is switched off). A test that fails in one run only is run once more, on
# both sides, to tell a steady difference from a flaky test. The script prints, as Markdown:
# the counts of each run, the tests failing only through the proxy, the tests failing only
# directly, and the exact command line.
#
# psycopg is installed from the checkout given (its pure-Python implementation, with its
# `test` extra and psycopg_pool, as psycopg's own CI does) into a fresh virtualenv. The
# checkout is copied first, so building and running the tests write nothing into it.
#
# Everything runs on a temporary cluster this script starts on a free 127.0.0.1 port; the
# proxy listens on a port the kernel picks. Nothing leaves the loopback interface except
# pip's downloads. The cluster and the proxy are stopped and every temporary file removed on
# exit (trap). This is a check to run by hand; it is not part of the test suite.
#
# Usage:   bench/conformance.sh PATH-TO-PSYCOPG-CHECKOUT
# Knobs (environment):
#   MARKERS="not slow and not flakey"   pytest -m expression: psycopg marks "slow" the tests
#                        that wait on purpose (alone 16 minutes per run on 2 cores, mostly mypy
#                        and pool tests) and "flakey" those known to fail at random
#   TESTS=tests          test paths or node ids, relative to the checkout (space separated)
#   POOL=1               also install psycopg_pool and run its tests (tests/pool); 0 skips them
#   LIBPQ=system         the libpq psycopg loads: "system" (the machine's libpq.so.5) or "wheel"
#                        (the newest libpq there is on PyPI, taken from the psycopg-binary wheel:
#                        it unlocks psycopg's tests of libpq >= 17 features)
#   DSN_OPTIONS=         more libpq options for both DSNs, e.g. "max_protocol_version=latest"
#   TEST_TIMEOUT=60      seconds one test may take (pytest-timeout) before it counts as failed
#   RUN_TIMEOUT=1200     seconds one whole pytest run may take before it is killed
#   RERUN=1              run tests failing on one side only again, on both sides (0: don't)
#   PYTEST_ARGS=         more pytest arguments, for both runs
#   FLEET=2              proxies of the plan started, coordinated through the control schema
#                        in the plan's target database; the tests go through the first one,
#                        a member of that fleet like any other (1: a fleet of one)
#   LOG_DIR=             if set, junit files, pytest output, outcomes per test (.tsv), the plan
#                        and the server and proxy logs are copied there (pytest's output shows
#                        the test DSN, with the throw-away password of the deleted cluster)
#   CARGO_TARGET_DIR     honoured when looking for the cutover binary
#
# When run as root, the server programs run as the `postgres` user (PostgreSQL refuses root).
# python3 -m venv is needed; as root, python3-venv is installed with apt-get when missing.

set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MARKERS=${MARKERS-"not slow and not flakey"}
TESTS=${TESTS:-tests}
POOL=${POOL:-1}
LIBPQ=${LIBPQ:-system}
DSN_OPTIONS=${DSN_OPTIONS:-}
TEST_TIMEOUT=${TEST_TIMEOUT:-60}
RUN_TIMEOUT=${RUN_TIMEOUT:-1200}
RERUN=${RERUN:-1}
PYTEST_ARGS=${PYTEST_ARGS:-}
FLEET=${FLEET:-2}
LOG_DIR=${LOG_DIR:-}

[[ $LIBPQ == system || $LIBPQ == wheel ]] || { echo "LIBPQ must be \"system\" or \"wheel\", not \"$LIBPQ\"" >&2; exit 64; }

export GIT_OPTIONAL_LOCKS=0 # the report's `git status` must not take the index lock
COMMAND_LINE="MARKERS=\"$MARKERS\" TESTS=\"$TESTS\" POOL=$POOL LIBPQ=$LIBPQ FLEET=$FLEET${DSN_OPTIONS:+ DSN_OPTIONS=\"$DSN_OPTIONS\"} bench/conformance.sh${*:+ $*}"

DB=conformance
ROLE=psycopg_test

# The suite tests the protocol, not durability: fsync and friends are off, for speed.
# max_prepared_transactions as psycopg's CI has it, so the two-phase commit tests run.
CLUSTER_SETTINGS="
listen_addresses = '127.0.0.1'
password_encryption = 'scram-sha-256'
max_connections = 200
max_prepared_transactions = 10
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
"

# --------------------------------------------------------------------------------------
# Programs

# This script has no CUTOVER knob: it always builds (unlike lib.sh's build_cutover), and
# reads the version as it builds.
cargo_build_cutover() {
    log "building cutover (cargo build --release --bin cutover)"
    (cd "$ROOT" && timeout 3600 cargo build --release --bin cutover) >&2 \
        || die "cargo build failed (see above)"
    local target_dir=${CARGO_TARGET_DIR:-target}
    [[ $target_dir = /* ]] || target_dir="$ROOT/$target_dir"
    CUTOVER="$target_dir/release/cutover"
    [[ -x $CUTOVER ]] || die "no cutover binary at $CUTOVER"
    # What was built, read now: another commit may land while the tests run.
    CUTOVER_BUILT="$("$CUTOVER" --version | awk '{ print $2 }') built from $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$( [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] && echo ' + uncommitted changes' || true)"
}

# --------------------------------------------------------------------------------------
# Temporary directory, cluster, proxy

PROXY_PID=""
MEMBER_PIDS=()
CLUSTER=""

setup_workdir() {
    WORK=$(mktemp -d /tmp/cutover-conformance.XXXXXX)
    mkdir -p "$WORK/logs" "$WORK/pg" "$WORK/plan"
    SUPER_PASSWORD=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
    ROLE_PASSWORD=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
    printf '%s\n' "$SUPER_PASSWORD" > "$WORK/pg/pwfile"
    use_postgres_user
    if [[ $(id -u) -eq 0 ]]; then
        # The server's user must reach its folder; the rest stays root's.
        chown postgres: "$WORK"
        chown -R postgres: "$WORK/pg"
    fi
}

# stop_processes: run by lib.sh's cleanup on exit, before it keeps the logs and removes WORK.
stop_processes() {
    local pid
    for pid in "${MEMBER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    if [[ -n $PROXY_PID ]] && kill -TERM "$PROXY_PID" 2>/dev/null; then
        for _ in $(seq 1 100); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PROXY_PID" 2>/dev/null
        wait "$PROXY_PID" 2>/dev/null
    fi
    if [[ -n $CLUSTER ]]; then
        cp "$CLUSTER/server.log" "$WORK/logs/server.log" 2>/dev/null
        "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$CLUSTER" -m immediate -w -t 30 stop >/dev/null 2>&1
    fi
}

# start_server: the one cluster, in $WORK/pg, on a free port (another is tried when the port
# was taken in the meantime; a port is picked in a subshell, so free_port keeps none); sets
# PG_PORT. Not lib.sh's start_cluster: its files and messages are named otherwise.
start_server() {
    local dir="$WORK/pg/data" port
    "${AS_PG[@]}" "$PGBIN/initdb" -D "$dir" -U postgres --pwfile="$WORK/pg/pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync \
        >"$WORK/logs/initdb.log" 2>&1 || die "initdb failed (see $WORK/logs/initdb.log)"
    {
        echo "$CLUSTER_SETTINGS"
        echo "unix_socket_directories = '$dir'"
    } >> "$dir/postgresql.conf"
    CLUSTER=$dir
    for _ in 1 2 3 4 5; do
        port=$(free_port; echo "$FREE_PORT")
        if "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$dir" -l "$dir/server.log" -o "-p $port" -w -t 120 start >/dev/null; then
            PG_PORT=$port
            log "PostgreSQL $("$PGBIN/postgres" --version | sed 's/.*(PostgreSQL) //') up on 127.0.0.1:$PG_PORT"
            return
        fi
        grep -q "could not bind" "$dir/server.log" || break
        log "port $port was taken, trying another"
    done
    cat "$dir/server.log" >&2
    die "cannot start the cluster"
}

# sql DB QUERY: runs a query as the superuser, unaligned output.
sql() {
    psql -X -q -At -v ON_ERROR_STOP=1 \
        -d "postgres://postgres:$SUPER_PASSWORD@127.0.0.1:$PG_PORT/$1" \
        -c "SET client_min_messages = warning" -c "$2"
}

# The test role: a superuser (the suite creates extensions, types, prepared transactions),
# logging in with a SCRAM password, as applications do through the proxy.
create_role() {
    sql postgres "CREATE ROLE $ROLE LOGIN SUPERUSER PASSWORD '$ROLE_PASSWORD'"
    sql postgres "CREATE DATABASE ${DB}_target OWNER $ROLE"
}

# A fresh, empty test database for each run, so that one run leaves nothing to the other.
fresh_database() {
    sql postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
    sql postgres "CREATE DATABASE $DB OWNER $ROLE"
}

start_proxy() {
    local plan="$WORK/plan/cutover.toml"
    # Secrets only by reference, "${NAME}" in the file; the proxy reads them from its
    # environment. The plan holds no secret, so it is kept with the logs.
    : >"$WORK/logs/proxy.out"
    cat > "$plan" <<EOF
[source]
url = "\${CONFORMANCE_SOURCE_URL}"

[target]
url = "\${CONFORMANCE_TARGET_URL}"

[proxy]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "\${CUTOVER_ADMIN_TOKEN}"

[[proxy.users]]
name = "$ROLE"
password = "\${CONFORMANCE_ROLE_PASSWORD}"
auth = "scram-sha-256"
EOF
    export CONFORMANCE_SOURCE_URL="postgres://postgres:$SUPER_PASSWORD@127.0.0.1:$PG_PORT/$DB?sslmode=disable"
    export CONFORMANCE_TARGET_URL="postgres://postgres:$SUPER_PASSWORD@127.0.0.1:$PG_PORT/${DB}_target?sslmode=disable"
    export CUTOVER_ADMIN_TOKEN; CUTOVER_ADMIN_TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    export CONFORMANCE_ROLE_PASSWORD=$ROLE_PASSWORD
    CUTOVER_LOG=${CUTOVER_LOG:-warn,cutover_proxy=debug} \
        "$CUTOVER" --plan "$plan" proxy --state "$WORK/plan/proxy-1.json" >"$WORK/logs/proxy.out" 2>"$WORK/logs/proxy.log" &
    PROXY_PID=$!
    local i
    for ((i = 2; i <= FLEET; i++)); do
        "$CUTOVER" --plan "$plan" proxy --state "$WORK/plan/proxy-$i.json" >"$WORK/logs/proxy-$i.out" 2>"$WORK/logs/proxy-$i.log" &
        MEMBER_PIDS+=($!)
    done
    cp "$plan" "$WORK/logs/cutover.toml"
    for _ in $(seq 1 100); do
        PROXY_ADDR=$(sed -n 's/^proxy listening on \([0-9.]*:[0-9]*\) .*/\1/p' "$WORK/logs/proxy.out")
        [[ -n $PROXY_ADDR ]] && break
        kill -0 "$PROXY_PID" 2>/dev/null || { cat "$WORK/logs/proxy.log" >&2; die "cutover proxy exited"; }
        sleep 0.1
    done
    [[ -n $PROXY_ADDR ]] || die "cutover proxy did not say where it listens"
    PROXY_PORT=${PROXY_ADDR##*:}
    log "cutover proxy up on $PROXY_ADDR"
    local live=0
    for _ in $(seq 1 100); do
        live=$("$CUTOVER" --plan "$plan" --json proxy status 2>/dev/null | "$PY" -c 'import json, sys; print(len(json.load(sys.stdin)["proxies"]))' 2>/dev/null || echo 0)
        ((live >= FLEET)) && break
        sleep 0.1
    done
    ((live >= FLEET)) || die "the fleet has $live live proxies, not $FLEET (see the proxy logs)"
    FLEET_STATUS=$("$CUTOVER" --plan "$plan" proxy status 2>&1 | head -n 1)
    log "$FLEET_STATUS"
}

# --------------------------------------------------------------------------------------
# psycopg

setup_python() {
    local src=$1
    [[ -f $src/psycopg/pyproject.toml && -d $src/tests ]] \
        || die "$src does not look like a psycopg checkout (no psycopg/pyproject.toml or tests/)"
    PSYCOPG_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$src/psycopg/pyproject.toml" | head -n1)
    PSYCOPG_COMMIT=$(git -C "$src" rev-parse HEAD 2>/dev/null || echo "unknown (not a git checkout)")
    PSYCOPG_DATE=$(git -C "$src" log -1 --format=%cs 2>/dev/null || echo "?")
    # A copy: pip builds in the source folder and Python writes bytecode beside the tests.
    mkdir -p "$WORK/psycopg"
    tar -C "$src" --exclude=.git -cf - . | tar -C "$WORK/psycopg" -xf -

    if ! python3 -m venv "$WORK/venv" >"$WORK/logs/venv.log" 2>&1; then
        [[ $(id -u) -eq 0 ]] || { cat "$WORK/logs/venv.log" >&2; die "python3 -m venv failed; install python3-venv"; }
        log "installing python3-venv"
        rm -rf "$WORK/venv"
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; } \
            >"$WORK/logs/apt.log" 2>&1 || die "apt-get install python3-venv failed (see its log)"
        python3 -m venv "$WORK/venv" >"$WORK/logs/venv.log" 2>&1 || die "python3 -m venv failed"
    fi
    PY="$WORK/venv/bin/python"
    local deps=("./psycopg[test]" pytest-timeout)
    [[ $POOL == 1 ]] && deps+=(./psycopg_pool)
    log "pip install ${deps[*]} (pure-Python psycopg)"
    (cd "$WORK/psycopg" && "$PY" -m pip install -q --disable-pip-version-check "${deps[@]}") \
        >"$WORK/logs/pip.log" 2>&1 || { tail -n 30 "$WORK/logs/pip.log" >&2; die "pip install failed"; }
    export PSYCOPG_IMPL=python
    [[ $LIBPQ == wheel ]] && wheel_libpq
    py -c 'import psycopg; print(psycopg.pq.version())' >/dev/null 2>"$WORK/logs/libpq.log" \
        || { cat "$WORK/logs/libpq.log" >&2; die "psycopg cannot load libpq (apt-get install libpq5)"; }
    LIBPQ_VERSION=$(py -c 'import psycopg; print(psycopg.pq.version())')
    PYTEST_VERSION=$("$PY" -m pytest --version 2>&1 | awk '{ print $2 }')
}

# The pure-Python psycopg loads libpq by its soname, libpq.so.5, so LD_LIBRARY_PATH chooses
# which one; only the test runs get it (psql keeps the machine's).
LIBPQ_DIR=""
py() { if [[ -n $LIBPQ_DIR ]]; then LD_LIBRARY_PATH=$LIBPQ_DIR "$PY" "$@"; else "$PY" "$@"; fi; }

# wheel_libpq: the libpq bundled in the newest psycopg-binary wheel for this Python (with the
# libraries it needs beside it), for LIBPQ=wheel. Only its libpq is used, not its C module.
wheel_libpq() {
    local dir="$WORK/libpq-wheel" lib
    log "pip download psycopg-binary (for its libpq)"
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        -d "$dir" psycopg-binary >>"$WORK/logs/pip.log" 2>&1 || die "pip download psycopg-binary failed (see its log)"
    "$PY" -m zipfile -e "$dir"/psycopg_binary-*.whl "$dir/x"
    lib=$(find "$dir/x/psycopg_binary.libs" -name 'libpq-*.so*' | head -n1)
    [[ -n $lib ]] || die "no libpq in the psycopg-binary wheel"
    ln -s "$(basename "$lib")" "$(dirname "$lib")/libpq.so.5"
    LIBPQ_DIR=$(dirname "$lib")
}

dsn() { echo "host=127.0.0.1 port=$1 dbname=$DB user=$ROLE password=$ROLE_PASSWORD connect_timeout=10${DSN_OPTIONS:+ $DSN_OPTIONS}"; }

# run_pytest NAME PORT [NODE IDS...]: one pytest run; junit in logs/NAME.xml, outcomes in
# logs/NAME.tsv, pytest's output in logs/NAME.out. Dies when pytest itself fails (not
# when tests fail), unless SECOND_TRY is set: then it returns 1.
SECOND_TRY=""
run_pytest() {
    local name=$1 port=$2 rc=0
    shift 2
    # psycopg's conftest.py needs pytest's cache (it flags a segfaulted run there), so
    # -p no:cacheprovider cannot be used: each run gets its own, thrown-away cache folder.
    local -a args=(-p no:randomly -p conformance_outcomes -o cache_dir="$WORK/cache/$name"
        --junitxml="$WORK/logs/$name.xml" --timeout="$TEST_TIMEOUT" -q -rfE)
    # shellcheck disable=SC2206  # word splitting wanted: space-separated lists
    if (($# > 0)); then args+=("$@"); else args+=(-m "$MARKERS" $TESTS); fi
    # shellcheck disable=SC2206
    args+=($PYTEST_ARGS)
    if (($# > 0)); then log "pytest $name: $# tests"; else log "pytest $name: $TESTS -m \"$MARKERS\""; fi
    (
        cd "$WORK/psycopg"
        unset PGHOST PGHOSTADDR PGPORT PGUSER PGPASSWORD PGDATABASE PGSERVICE PGOPTIONS PGSSLMODE
        if [[ -n $LIBPQ_DIR ]]; then export LD_LIBRARY_PATH=$LIBPQ_DIR; fi
        PSYCOPG_TEST_DSN=$(dsn "$port") PYTHONDONTWRITEBYTECODE=1 \
            PYTHONPATH="$WORK/plugin" CONFORMANCE_OUTCOMES="$WORK/logs/$name.tsv" \
            timeout -k 30 "$RUN_TIMEOUT" "$PY" -bb -m pytest "${args[@]}"
    ) >"$WORK/logs/$name.out" 2>&1 || rc=$?
    # 0: all passed, 1: some failed; anything else means pytest itself went wrong.
    if ((rc > 1)); then
        tail -n 40 "$WORK/logs/$name.out" >&2
        [[ -n $SECOND_TRY ]] && { log "warning: pytest $name ended with status $rc; no second try"; return 1; }
        [[ $rc == 124 || $rc == 137 ]] && die "pytest $name took more than RUN_TIMEOUT=$RUN_TIMEOUT s"
        die "pytest $name ended with status $rc"
    fi
    log "pytest $name: $(grep -E ' in [0-9.]+s( \(.*\))? *=*$' "$WORK/logs/$name.out" | tail -n 1 | tr -d '=')"
}

# A pytest plugin, loaded from outside the checkout, that writes one line per test to the
# file named by $CONFORMANCE_OUTCOMES: "node-id<TAB>outcome<TAB>message", outcome one of
# passed, failed (in any phase: setup, call or teardown), skipped, xfailed; message is the
# first line of the first failure. (Test ids rebuilt from the junit file can be wrong: a test
# inherited from another module is filed under that module.)
write_plugin() {
    mkdir -p "$WORK/plugin"
    cat >"$WORK/plugin/conformance_outcomes.py" <<'EOF'
import os

_outcomes = {}
_rank = {"passed": 0, "skipped": 1, "xfailed": 1, "failed": 2}


def pytest_runtest_logreport(report):
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        text = getattr(crash, "message", None) or str(report.longrepr)
        lines = text.strip().splitlines()
        outcome = ("failed", lines[0][:160].replace("\t", " ") if lines else "")
    elif report.skipped:
        outcome = ("xfailed" if hasattr(report, "wasxfail") else "skipped", "")
    else:
        outcome = ("passed", "")
    old = _outcomes.get(report.nodeid)
    if old is None or _rank[outcome[0]] > _rank[old[0]]:
        _outcomes[report.nodeid] = outcome


def pytest_sessionfinish(session):
    with open(os.environ["CONFORMANCE_OUTCOMES"], "w") as f:
        for node, (outcome, message) in _outcomes.items():
            f.write(f"{node}\t{outcome}\t{message}\n")
EOF
}

# --------------------------------------------------------------------------------------
# Report

count() { awk -F'\t' -v o="$2" '$2 == o { n++ } END { print n + 0 }' "$1"; }
failing() { awk -F'\t' '$2 == "failed" { print $1 }' "$1" | sort -u; }
message() { awk -F'\t' -v t="$2" '$1 == t && $2 == "failed" { print $3; exit }' "$1"; }

report() {
    local only_proxy=$1 only_direct=$2 name t
    echo
    echo "## psycopg test suite, directly and through cutover proxy"
    echo
    echo "- command: \`$COMMAND_LINE\`"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- psycopg $PSYCOPG_VERSION, commit $PSYCOPG_COMMIT ($PSYCOPG_DATE), pure-Python implementation, libpq $LIBPQ_VERSION ($LIBPQ)${DSN_OPTIONS:+, DSN options \`$DSN_OPTIONS\`}, pytest $PYTEST_VERSION, $("$PY" --version)"
    echo "- PostgreSQL $("$PGBIN/postgres" --version | sed 's/.*(PostgreSQL) //'); cutover $CUTOVER_BUILT"
    echo "- the proxy: one member of a fleet of $FLEET (\`cutover proxy status\` before the runs: $FLEET_STATUS)"
    echo "- selection: \`$TESTS\`, \`-m \"$MARKERS\"\`$( [[ $POOL == 1 ]] && echo ', with psycopg_pool'), per-test timeout ${TEST_TIMEOUT}s, test order fixed (-p no:randomly)"
    echo
    echo "| run | passed | failed | skipped | xfailed | seconds |"
    echo "|---|---:|---:|---:|---:|---:|"
    for name in direct proxy; do
        echo "| $name | $(count "$WORK/logs/$name.tsv" passed) | $(count "$WORK/logs/$name.tsv" failed) | $(count "$WORK/logs/$name.tsv" skipped) | $(count "$WORK/logs/$name.tsv" xfailed) | ${SECS[$name]} |"
    done
    echo
    echo "Failing only through the proxy ($(grep -c . "$only_proxy" || true)):"
    echo
    while IFS= read -r t; do
        echo "- \`$t\`: $(message "$WORK/logs/proxy.tsv" "$t")${AGAIN[$t]:+ ($(again_text "${AGAIN[$t]}"))}"
    done <"$only_proxy"
    [[ -s $only_proxy ]] || echo "- none"
    echo
    echo "Failing only directly ($(grep -c . "$only_direct" || true)):"
    echo
    while IFS= read -r t; do
        echo "- \`$t\`: $(message "$WORK/logs/direct.tsv" "$t")${AGAIN[$t]:+ ($(again_text "${AGAIN[$t]}"))}"
    done <"$only_direct"
    [[ -s $only_direct ]] || echo "- none"
    echo
    echo "Failing both ways: $(comm -12 <(failing "$WORK/logs/direct.tsv") <(failing "$WORK/logs/proxy.tsv") | grep -c . || true)"
}

again_text() {
    case $1 in
        proxy) echo "run again: fails through the proxy only" ;;
        direct) echo "run again: fails directly only" ;;
        both) echo "run again: fails both ways" ;;
        none) echo "run again: passes both ways, so flaky or caused by an earlier test" ;;
    esac
}

declare -A SECS=()
declare -A AGAIN=()   # test id -> outcome of the second try: proxy, direct, both, none

timed_run() {
    local name=$1 port=$2 t0
    t0=$SECONDS
    fresh_database
    run_pytest "$name" "$port"
    SECS[$name]=$((SECONDS - t0))
}

main() {
    (($# == 1)) || die "usage: bench/conformance.sh PATH-TO-PSYCOPG-CHECKOUT"
    local src
    src=$(cd "$1" && pwd) || die "no such folder: $1"
    find_pg_bindir
    cargo_build_cutover
    setup_workdir
    setup_python "$src"
    write_plugin
    start_server
    create_role
    fresh_database
    start_proxy

    timed_run direct "$PG_PORT"
    timed_run proxy "$PROXY_PORT"

    comm -13 <(failing "$WORK/logs/direct.tsv") <(failing "$WORK/logs/proxy.tsv") >"$WORK/only-proxy"
    comm -23 <(failing "$WORK/logs/direct.tsv") <(failing "$WORK/logs/proxy.tsv") >"$WORK/only-direct"

    if [[ $RERUN == 1 ]] && [[ -s $WORK/only-proxy || -s $WORK/only-direct ]]; then
        local -a ids
        mapfile -t ids < <(cat "$WORK/only-proxy" "$WORK/only-direct")
        SECOND_TRY=1
        fresh_database
        if run_pytest direct-again "$PG_PORT" "${ids[@]}" && fresh_database &&
            run_pytest proxy-again "$PROXY_PORT" "${ids[@]}"; then
            local t d p
            for t in "${ids[@]}"; do
                d=$(grep -qxF "$t" <(failing "$WORK/logs/direct-again.tsv") && echo 1 || echo 0)
                p=$(grep -qxF "$t" <(failing "$WORK/logs/proxy-again.tsv") && echo 1 || echo 0)
                case $d$p in 01) AGAIN[$t]=proxy ;; 10) AGAIN[$t]=direct ;; 11) AGAIN[$t]=both ;; *) AGAIN[$t]=none ;; esac
            done
        fi
    fi
    report "$WORK/only-proxy" "$WORK/only-direct"
}

main "$@"
