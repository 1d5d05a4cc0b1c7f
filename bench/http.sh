#!/usr/bin/env bash
# bench/http.sh: what does `cutover traffic serve` cost per HTTP request, against nginx?
#
# Runs the same wrk load, one after the other on this machine, three ways, and prints the
# requests per second and the latency percentiles of each:
#
#   direct   wrk asks the old origin itself
#   cutover  through `cutover traffic serve`: a plan whose [traffic.old] and [traffic.new]
#            are the two origins, the weight set to SPLIT% for the new one through the
#            splitter's admin API (PUT /weight), as the canary does
#   nginx    through nginx (Debian's) with the same weighted upstreams, configured as a
#            fair production reverse proxy: `upstream { server old weight=100-SPLIT;
#            server new weight=SPLIT; keepalive C; keepalive_requests 1000000; }`,
#            `proxy_http_version 1.1` with an empty Connection header (so upstream
#            connections are kept alive and reused), Host and X-Forwarded-For/-Proto/-Host
#            passed on as the splitter does, no access log (the splitter keeps none either:
#            it counts requests per origin in memory), worker_processes NGINX_WORKERS
#            (default auto, one per CPU, as tokio's default of one worker thread per CPU)
#
# The origins are one nginx of their own (ORIGIN_WORKERS worker processes, default 1)
# listening on two ports, each answering every request with `return 200` and a fixed
# BODY_BYTES-byte text body (and an X-Origin header naming the side). nginx is chosen for
# the origins because it is neutral (neither of the two proxies under test), written to be
# cheap per request (no file read, no application code), keeps client connections alive
# for as long as they are used (keepalive_requests 1000000, so neither proxy is made to
# reconnect), and gives a count of the connections it accepted (stub_status), from which
# the script reports how many new connections each proxy opened to the origins per 1000
# requests: 0 means upstream keep-alive works. A small test server of our own would have
# been ours to tune, and cheaper than any real app anyway.
#
# Two loads, each for DURATION seconds per run:
#
#   load   `wrk -t THREADS -c CONNECTIONS --latency`: as many requests as the machine can
#          take, the requests per second are the figure; its p99 shows queueing as much
#          as the proxy itself (on 2 cores, wrk, the proxy and the origin share the CPUs)
#   light  `wrk -t 1 -c LAT_CONNECTIONS --latency` (default one connection: one request
#          at a time), the proxy's own added latency, with CPUs to spare
#
# Each (load, target) pair runs ROUNDS times, the order of the targets rotating from round
# to round, after an uncounted WARMUP-second run per target (the proxies' upstream
# connections opened, the binaries paged in); the medians count. Before each timed run the
# script waits (up to QUIET_WAIT seconds) until the CPUs are at least 90% idle, and reports
# the idle share it found then, in the second after the run, and the 1-minute load average
# (a low idle figure after a run means something else ran alongside: that run is suspect).
# For each run it also reports the CPU the proxy's processes used per request (user +
# system time from /proc, every thread or worker process) and wrk's socket errors and
# non-2xx responses (there should be none).
#
# Everything listens on free 127.0.0.1 ports; nothing leaves the loopback interface.
# Everything is stopped and every temporary file removed on exit (trap). This is a
# benchmark to run by hand; it is not part of the test suite. The last lines it prints
# are a Markdown section for bench/RESULTS.md.
#
# Usage:   bench/http.sh            (from anywhere; paths are relative to the repository)
# Knobs (environment):
#   DURATION=10         seconds per wrk run
#   ROUNDS=3            runs of each (load, target); the median is reported
#   CONNECTIONS=64      wrk connections of the load run (-c)
#   THREADS=2           wrk threads of the load run (-t; the machine this was written on
#                       has 2 cores)
#   LAT_CONNECTIONS=1   wrk connections of the light run (one thread); 0 skips it
#   SPLIT=50            percent of requests to the new origin (cutover and nginx)
#   BODY_BYTES=128      size of the origins' response body
#   TARGETS="direct cutover nginx"   which targets, in which order (first round)
#   NGINX_WORKERS=auto  worker_processes of the nginx under test
#   ORIGIN_WORKERS=1    worker_processes of the origins' nginx
#   WARMUP=2            seconds of uncounted load per target before the rounds; 0 skips it
#   QUIET_WAIT=30       seconds to wait at most for an idle machine before each run
#   PROFILE=0           1: after the rounds, an extra load run per proxy, not counted,
#                       under `perf stat` (per request: CPU µs, context switches, system
#                       calls, connect() and accept() calls of the proxy's processes) and
#                       `perf record -g` (the proxy's top functions). Needs perf.
#   CUTOVER=            a cutover binary to use instead of building one
#                       (default: `cargo build --release --bin cutover`, target/release/cutover)
#   LOG_DIR=            if set, every log (wrk, nginx, splitter, perf) is copied there before
#                       cleanup
#   CARGO_TARGET_DIR    honoured when looking for the cutover binary
#   TOKIO_WORKER_THREADS  passed on to `cutover traffic serve` (tokio's default: one per CPU)
#
# wrk and nginx are installed with apt-get when missing (root only). As root, nginx's
# worker processes run as its default unprivileged user.

set -euo pipefail
export LC_ALL=C # a "." in awk's numbers
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
LAT_CONNECTIONS=${LAT_CONNECTIONS:-1}
SPLIT=${SPLIT:-50}
BODY_BYTES=${BODY_BYTES:-128}
TARGETS=${TARGETS:-"direct cutover nginx"}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
ORIGIN_WORKERS=${ORIGIN_WORKERS:-1}
WARMUP=${WARMUP:-2}
QUIET_WAIT=${QUIET_WAIT:-30}
PROFILE=${PROFILE:-0}
CUTOVER=${CUTOVER:-}
LOG_DIR=${LOG_DIR:-}

COMMAND_LINE="${TOKIO_WORKER_THREADS:+TOKIO_WORKER_THREADS=$TOKIO_WORKER_THREADS }DURATION=$DURATION ROUNDS=$ROUNDS CONNECTIONS=$CONNECTIONS THREADS=$THREADS LAT_CONNECTIONS=$LAT_CONNECTIONS SPLIT=$SPLIT BODY_BYTES=$BODY_BYTES NGINX_WORKERS=$NGINX_WORKERS ORIGIN_WORKERS=$ORIGIN_WORKERS TARGETS=\"$TARGETS\" bench/http.sh${*:+ $*}"
if [[ $PROFILE == 1 ]]; then COMMAND_LINE="PROFILE=1 $COMMAND_LINE"; fi

# --------------------------------------------------------------------------------------
# Programs

# wrk and nginx from the distribution, installed when missing (root only).
find_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    [[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null || missing+=(nginx)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]})); then apt_install "${missing[*]} not installed" "${missing[@]}"; fi
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    [[ -x $NGINX ]] || die "no nginx program"
    command -v wrk >/dev/null || die "no wrk program"
    if [[ $PROFILE == 1 ]]; then command -v perf >/dev/null || die "PROFILE=1 needs perf"; fi
    NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's|.*nginx/||')
    WRK_VERSION=$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }' || true)
}

# --------------------------------------------------------------------------------------
# Servers

SPLITTER_PID=""
ORIGIN_PID=""
NGINX_PID=""

setup_workdir() {
    WORK=$(mktemp -d /tmp/cutover-bench-http.XXXXXX)
    chmod 711 "$WORK" # nginx's workers run as an unprivileged user
    mkdir -p "$WORK/logs" "$WORK/origin" "$WORK/nginx"
    # Read by the plan as ${CUTOVER_TRAFFIC_TOKEN}; never printed.
    CUTOVER_TRAFFIC_TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    export CUTOVER_TRAFFIC_TOKEN
    # The admin API's header in a file of its own, so the token is not in curl's arguments.
    (umask 077 && printf 'Authorization: Bearer %s\n' "$CUTOVER_TRAFFIC_TOKEN" >"$WORK/admin-header")
}

# stop_pid PID: SIGTERM, then wait for it (5 s at most).
stop_pid() {
    local pid=$1 i
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

# stop_processes: run by lib.sh's cleanup on exit, before it keeps the logs and removes WORK.
stop_processes() {
    stop_pid "$SPLITTER_PID"
    stop_pid "$NGINX_PID"
    stop_pid "$ORIGIN_PID"
    wait 2>/dev/null
}

# nginx_common DIR WORKERS: the top of an nginx.conf whose files all live in DIR.
nginx_common() {
    cat <<CONF
worker_processes $2;
pid $1/nginx.pid;
error_log $WORK/logs/$(basename "$1")-error.log warn;
events { worker_connections 4096; }
CONF
}

# nginx_http_common DIR: the settings every http block here shares.
nginx_http_common() {
    cat <<CONF
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
CONF
}

# start_nginx NAME: runs nginx on $WORK/NAME/nginx.conf in the foreground (master + workers);
# sets NGINX_STARTED_PID.
start_nginx() {
    local dir="$WORK/$1"
    "$NGINX" -t -q -p "$dir" -e "$WORK/logs/$1-error.log" -c "$dir/nginx.conf" 2>"$WORK/logs/$1-check.log" \
        || { cat "$WORK/logs/$1-check.log" >&2; die "nginx rejects $dir/nginx.conf"; }
    "$NGINX" -p "$dir" -e "$WORK/logs/$1-error.log" -c "$dir/nginx.conf" -g 'daemon off;' \
        >"$WORK/logs/$1.out" 2>&1 &
    NGINX_STARTED_PID=$!
}

start_origins() {
    free_port; PORT_old=$FREE_PORT
    free_port; PORT_new=$FREE_PORT
    BODY=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')
    local d="$WORK/origin" side
    {
        nginx_common "$d" "$ORIGIN_WORKERS"
        echo "http {"
        nginx_http_common "$d"
        echo "    default_type text/plain;"
        for side in old new; do
            local port_var="PORT_$side"
            cat <<CONF
    server {
        listen 127.0.0.1:${!port_var} backlog=4096;
        location = /nginx_status { stub_status; }
        location / { add_header X-Origin $side; return 200 "$BODY"; }
    }
CONF
        done
        echo "}"
    } >"$d/nginx.conf"
    start_nginx origin
    ORIGIN_PID=$NGINX_STARTED_PID
    wait_listening "$PORT_old" && wait_listening "$PORT_new" \
        || { cat "$WORK/logs/origin-error.log" >&2 || true; die "the origins' nginx did not start"; }
    log "origins: nginx $NGINX_VERSION on 127.0.0.1:$PORT_old (old) and :$PORT_new (new), $ORIGIN_WORKERS worker(s), ${BODY_BYTES}-byte body"
}

start_nginx_proxy() {
    free_port; PORT_nginx=$FREE_PORT
    local d="$WORK/nginx" servers=""
    ((SPLIT < 100)) && servers+="        server 127.0.0.1:$PORT_old weight=$((100 - SPLIT));"$'\n'
    ((SPLIT > 0)) && servers+="        server 127.0.0.1:$PORT_new weight=$SPLIT;"$'\n'
    {
        nginx_common "$d" "$NGINX_WORKERS"
        echo "http {"
        nginx_http_common "$d"
        cat <<CONF
    upstream app {
$servers        keepalive $CONNECTIONS;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$PORT_nginx backlog=4096;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }
}
CONF
    } >"$d/nginx.conf"
    start_nginx nginx
    NGINX_PID=$NGINX_STARTED_PID
    wait_listening "$PORT_nginx" || { cat "$WORK/logs/nginx-error.log" >&2 || true; die "nginx did not start"; }
    log "nginx $NGINX_VERSION up on 127.0.0.1:$PORT_nginx (pid $NGINX_PID), worker_processes $NGINX_WORKERS, upstream weights old $((100 - SPLIT)) / new $SPLIT"
}

start_splitter() {
    free_port; PORT_cutover=$FREE_PORT
    local admin_port
    free_port; admin_port=$FREE_PORT
    ADMIN="http://127.0.0.1:$admin_port"
    # The splitter needs no database; the plan's two URLs are required fields only.
    export BENCH_UNUSED_SOURCE="postgres://bench@127.0.0.1:1/unused_source"
    export BENCH_UNUSED_TARGET="postgres://bench@127.0.0.1:1/unused_target"
    cat >"$WORK/cutover.toml" <<TOML
[source]
url = "\${BENCH_UNUSED_SOURCE}"

[target]
url = "\${BENCH_UNUSED_TARGET}"

[traffic]
listen = "127.0.0.1:$PORT_cutover"
admin_listen = "127.0.0.1:$admin_port"
admin_token = "\${CUTOVER_TRAFFIC_TOKEN}"

[traffic.old]
url = "http://127.0.0.1:$PORT_old"

[traffic.new]
url = "http://127.0.0.1:$PORT_new"
TOML
    "$CUTOVER" --plan "$WORK/cutover.toml" traffic serve >"$WORK/logs/cutover-splitter.log" 2>&1 &
    SPLITTER_PID=$!
    wait_listening "$PORT_cutover" || { cat "$WORK/logs/cutover-splitter.log" >&2; die "cutover traffic serve did not start"; }
    # The weight through the admin API, as the canary and `cutover traffic promote` set it.
    local got
    got=$(curl -fsS -X PUT -H @"$WORK/admin-header" -H 'content-type: application/json' \
        --data "{\"new_percent\": $SPLIT}" "$ADMIN/weight" | jq -r .new_percent) \
        || die "the splitter refused the weight (see $WORK/logs/cutover-splitter.log)"
    [[ $got == "$SPLIT" ]] || die "the splitter reports $got% instead of $SPLIT%"
    log "cutover traffic serve up on 127.0.0.1:$PORT_cutover (pid $SPLITTER_PID), $SPLIT% to the new origin"
}

# check_split PORT NAME: 100 requests, each on a new connection with no cookie, reach both
# origins (checked when SPLIT is between 5 and 95; shown in any case).
check_split() {
    local port=$1 name=$2 old new
    read -r old new < <(for _ in $(seq 1 100); do
        curl -fsS -o /dev/null -D - "http://127.0.0.1:$port/" || echo "X-Origin: failed"
    done | tr -d '\r' | awk -F': ' 'tolower($1) == "x-origin" { n[$2]++ } END { print n["old"] + 0, n["new"] + 0 }')
    log "$name: of 100 requests, $old went to the old origin and $new to the new one"
    ((old + new == 100)) || die "$name failed $((100 - old - new)) of 100 requests"
    if ((SPLIT >= 5 && SPLIT <= 95 && (old == 0 || new == 0))); then die "$name does not split"; fi
}

# --------------------------------------------------------------------------------------
# Measuring

# wait_quiet: waits until the CPUs are >= 90% idle, for QUIET_WAIT seconds at most; sets IDLE
# and LOAD (the 1-minute load average then).
wait_quiet() {
    wait_idle
    LOAD=$(awk '{ print $1 }' /proc/loadavg)
    ((IDLE >= 90)) || log "warning: the machine is busy (${IDLE}% idle, load average $LOAD) and stays so; timing anyway"
}

# pids TARGET: the processes of the proxy in front, comma-separated (nginx: its workers).
pids() {
    case $1 in
        cutover) echo "$SPLITTER_PID" ;;
        nginx) ps -o pid= --ppid "$NGINX_PID" | awk '{ print $1 }' | paste -sd, ;;
        *) echo "" ;;
    esac
}

# proc_ticks PIDS: user + system ticks of the processes (all their threads).
proc_ticks() {
    local pid total=0
    for pid in ${1//,/ }; do
        [[ -r /proc/$pid/stat ]] || continue
        total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)

# origin_accepts: connections the origins' nginx has accepted so far (both ports).
origin_accepts() { curl -fsS "http://127.0.0.1:$PORT_old/nginx_status" | awk 'NR == 3 { print $1 }'; }

port_of() {
    case $1 in
        direct) echo "$PORT_old" ;;
        cutover) echo "$PORT_cutover" ;;
        nginx) echo "$PORT_nginx" ;;
    esac
}

# wrk_args LOAD: the wrk options of a load.
wrk_args() {
    case $1 in
        load) echo "-t $THREADS -c $CONNECTIONS" ;;
        light) echo "-t 1 -c $LAT_CONNECTIONS" ;;
    esac
}

# to_ms VALUE: a wrk duration (850.00us, 1.23ms, 2.00s, 1.00m) in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : -1
        if (f < 0) { print "?"; exit }
        printf "%.3f", n * f }'
}

# median VALUES... / median3 / median2: the median, with 0, 3 or 2 decimals; "-" when none.
median_fmt() { local f=$1; shift; tr ' ' '\n' <<<"$*" | awk 'NF' | sort -g | awk -v f="$f" '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit } printf f, (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
median() { median_fmt '%.0f' "$@"; }
median3() { median_fmt '%.3f' "$@"; }
median2() { median_fmt '%.2f' "$@"; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%+.3f", a - b }'; }

declare -A RPS=()       # load/target -> "rps1 rps2 ..."
declare -A P50=() P99=() # load/target -> "ms ..."
declare -A CPU_US=()    # load/target -> "µs of proxy CPU per request ..."
declare -A CONNS=()     # load/target -> "new origin connections per 1000 requests ..."
declare -A ERRORS=()    # load/target -> total socket errors + non-2xx responses
declare -A RUNS=()      # load/target -> "rps, p99 (idle before/after, load) ; ..."

# wrk_run LOAD TARGET SECONDS OUT: one wrk run; its output in OUT.
wrk_run() {
    local port
    port=$(port_of "$2")
    # shellcheck disable=SC2046 # the load's options are words
    wrk $(wrk_args "$1") -d "${3}s" --latency "http://127.0.0.1:$port/" >"$4" 2>&1 \
        || { cat "$4" >&2; die "wrk $1 via $2 failed"; }
}

bench_one() {
    local load=$1 target=$2 out pid t0 t1 a0 a1 rps p50 p99 requests errors us conns idle_after
    out="$WORK/logs/wrk-$load-$target-r$ROUND.txt"
    wait_quiet
    pid=$(pids "$target")
    log "round $ROUND: $load via $target (CPUs ${IDLE}% idle before, load average $LOAD)"
    a0=$(origin_accepts); t0=$(proc_ticks "$pid")
    wrk_run "$load" "$target" "$DURATION" "$out"
    t1=$(proc_ticks "$pid"); a1=$(origin_accepts)
    idle_after=$(cpu_idle) # anything else still running shows here
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    requests=$(awk '/ requests in / { print $1 }' "$out")
    errors=$(awk '/^ *Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } /^ *Non-2xx or 3xx responses:/ { n += $NF } END { print n + 0 }' "$out")
    [[ -n $rps && -n $requests && $requests -gt 0 ]] || { cat "$out" >&2; die "no figures from wrk ($load via $target)"; }
    ((errors == 0)) || log "warning: $errors socket errors or non-2xx responses via $target (see $out)"
    us=$(awk -v t="$((t1 - t0))" -v n="$requests" -v hz="$HZ" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
    # Connections the origins accepted during the run, less the one that read the count:
    # wrk's own for direct; for a proxy, the ones it opened, plus the splitter's health
    # checks (one connection per origin every 2 s, whichever target runs).
    conns=$(awk -v a="$((a1 - a0 - 1))" -v n="$requests" 'BEGIN { printf "%.2f", (a < 0 ? 0 : a) * 1000 / n }')
    log "round $ROUND: $load via $target: $rps req/s, p50 $p50 ms, p99 $p99 ms, proxy CPU $us µs/request, $conns new origin connections per 1000 requests, errors $errors (CPUs ${idle_after}% idle after)"
    local k="$load/$target"
    RPS[$k]+=" $rps"
    P50[$k]+=" $p50"
    P99[$k]+=" $p99"
    CPU_US[$k]+=" $us"
    CONNS[$k]+=" $conns"
    ERRORS[$k]=$((${ERRORS[$k]:-0} + errors))
    RUNS[$k]+="${RUNS[$k]:+; }$rps, $p99 ms (${IDLE}/${idle_after}%, ${LOAD})"
}

declare -A PERF_REPORT=() # target -> per-request counters and top functions

# profile TARGET: an extra load run, not counted, under `perf stat` and `perf record -g` on
# the proxy's processes.
profile() {
    local target=$1 pid out requests secs=$DURATION stats
    pid=$(pids "$target")
    [[ -n $pid ]] || return 0
    wait_quiet
    log "profiling $target (load, not counted): perf stat and perf record -g on pids $pid"
    out="$WORK/logs/wrk-profile-$target.txt"
    perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_connect,syscalls:sys_enter_accept4 \
        -p "$pid" -o "$WORK/logs/perf-stat-$target.txt" >/dev/null 2>&1 &
    stats=$!
    perf record -F 999 -g -p "$pid" -o "$WORK/logs/perf-$target.data" -- sleep "$secs" >"$WORK/logs/perf-record-$target.log" 2>&1 &
    local recorder=$!
    wrk_run load "$target" "$secs" "$out"
    wait "$recorder" || true
    kill -INT "$stats" 2>/dev/null; wait "$stats" 2>/dev/null || true
    requests=$(awk '/ requests in / { print $1 }' "$out")
    PERF_REPORT[$target]=$(
        echo "$target: $(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out") req/s under profiling; per request (perf stat -p, the proxy's processes):"
        awk -F, -v n="${requests:-0}" 'n > 0 && $1 ~ /^[0-9.]+$/ {
            name = $3; v = $1
            if (name == "task-clock") printf "    %-32s %8.1f µs\n", "CPU", v * 1000 / n
            else printf "    %-32s %8.3f\n", name, v / n }' "$WORK/logs/perf-stat-$target.txt"
        echo "  top functions (perf record -g -F 999 -p, self time, above 1%):"
        perf report -i "$WORK/logs/perf-$target.data" --no-children --percent-limit 1 --stdio -g none -F overhead,comm,dso,sym 2>/dev/null \
            | grep -v '^#' | grep -v '^ *$' | head -n 30 | sed 's/^/  /' || true
    )
}

# --------------------------------------------------------------------------------------
# Report

# head_commit: the checked-out commit, abbreviated, read from .git's files (no git program
# needed); "?" when there is none.
head_commit() {
    local git="$ROOT/.git" head ref
    head=$(cat "$git/HEAD" 2>/dev/null) || { echo '?'; return; }
    if [[ $head == "ref: "* ]]; then
        ref=${head#ref: }
        head=$(cat "$git/$ref" 2>/dev/null || awk -v r="$ref" '$2 == r { print $1 }' "$git/packed-refs" 2>/dev/null)
    fi
    [[ -n $head ]] && echo "${head:0:7}" || echo '?'
}

report() {
    local l t d c n med p99 d99
    echo
    echo "## HTTP splitter: \`cutover traffic serve\` vs nginx vs direct (bench/http.sh)"
    echo
    echo "- command: \`$COMMAND_LINE\`"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB memory, $(uname -sr)"
    echo "- versions: nginx $NGINX_VERSION; wrk ${WRK_VERSION:-?}; cutover $("$CUTOVER" --version | awk '{ print $2 }') (release binary built $CUTOVER_BUILT; HEAD $(head_commit); whether the tree had uncommitted changes is not checked)"
    echo "- origins: one nginx, $ORIGIN_WORKERS worker(s), two ports answering \`return 200\` with a $BODY_BYTES-byte body; cutover and nginx send $SPLIT% of requests to the new one, direct asks the old one"
    echo "- $ROUNDS rounds of ${DURATION} s per (load, target), order rotating, medians; CPUs idle before / after each run and the 1-minute load average before it are in the last column"
    for l in $LOADS; do
        echo
        echo "### $l: \`wrk $(wrk_args "$l") -d ${DURATION}s --latency\`"
        echo
        echo "| target | median req/s | ÷ nginx | p50 ms | p99 ms | p99 added over direct, ms | proxy CPU µs/request | new origin connections per 1000 requests | errors | every round: req/s, p99 (CPUs idle before/after, load average) |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        n=$(median ${RPS[$l/nginx]:-})
        d99=$(median3 ${P99[$l/direct]:-})
        for t in $TARGETS; do
            med=$(median ${RPS[$l/$t]})
            p99=$(median3 ${P99[$l/$t]})
            echo "| $t | $med | $(ratio "$med" "$n") | $(median3 ${P50[$l/$t]}) | $p99 | $( [[ $t == direct ]] && echo - || minus "$p99" "$d99") | $( [[ $t == direct ]] && echo - || median2 ${CPU_US[$l/$t]}) | $( [[ $t == direct ]] && echo - || median2 ${CONNS[$l/$t]}) | ${ERRORS[$l/$t]} | ${RUNS[$l/$t]} |"
        done
        c=$(median ${RPS[$l/cutover]:-})
        echo
        echo "$l: **cutover/nginx req/s $(ratio "$c" "$n")**; p99 added over direct: cutover $(minus "$(median3 ${P99[$l/cutover]:-})" "$d99") ms, nginx $(minus "$(median3 ${P99[$l/nginx]:-})" "$d99") ms"
    done
    if ((${#PERF_REPORT[@]})); then
        echo
        echo "An extra load run per proxy under \`perf stat\` and \`perf record\` (not counted above):"
        echo
        echo '```'
        for t in $TARGETS; do
            if [[ -n ${PERF_REPORT[$t]:-} ]]; then echo "${PERF_REPORT[$t]}"; fi
        done
        echo '```'
    fi
}

main() {
    local t
    for t in $TARGETS; do case $t in direct | cutover | nginx) ;; *) die "unknown target $t" ;; esac; done
    ((SPLIT >= 0 && SPLIT <= 100)) || die "SPLIT is a percentage (0 to 100)"
    LOADS="load"
    ((LAT_CONNECTIONS > 0)) && LOADS+=" light"
    find_tools
    setup_workdir
    [[ " $TARGETS " == *" cutover "* ]] && build_cutover
    [[ " $TARGETS " == *" cutover "* ]] || { CUTOVER=true; CUTOVER_BUILT=-; }
    cd "$WORK"
    start_origins
    [[ " $TARGETS " == *" nginx "* ]] && start_nginx_proxy
    [[ " $TARGETS " == *" cutover "* ]] && start_splitter
    for t in $TARGETS; do
        [[ $t == direct ]] || check_split "$(port_of "$t")" "$t"
    done
    if ((WARMUP > 0)); then
        for t in $TARGETS; do
            log "warming up $t (${WARMUP} s, not counted)"
            wrk_run load "$t" "$WARMUP" "$WORK/logs/wrk-warmup-$t.txt"
        done
    fi
    local order=($TARGETS) i l
    for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
        for ((i = 0; i < ${#order[@]}; i++)); do
            t=${order[$(((i + ROUND - 1) % ${#order[@]}))]}
            for l in $LOADS; do bench_one "$l" "$t"; done
        done
    done
    if [[ $PROFILE == 1 ]]; then
        for t in $TARGETS; do [[ $t == direct ]] || profile "$t"; done
    fi
    if [[ " $TARGETS " == *" cutover "* ]]; then
        log "the splitter's own count per origin: $(curl -fsS "$ADMIN/status" | jq -c '[.origins[] | {side, requests: .metrics.requests, up}]')"
    fi
    report
}

main "$@"; exit # one line: bash reads no further, so editing this file during a run is harmless
