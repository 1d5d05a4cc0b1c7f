#!/usr/bin/env bash
# bench/e2e.sh: the whole move under heavier HTTP load. Does any request fail, is any
# acknowledged write lost, and how long does the longest request stall while the database
# switches?
#
# Each run is `cutover demo --json` (release build): two local platforms (a cluster and an
# instance of the shop on each, both apps through one cutover proxy, the splitter in front of
# the old app), users placing orders and reading them back through the shop's name for the
# whole move, and `cutover apply` through every phase: check, sync, verify, the new app's
# checks and shadow diff, the proxy gate, the database switch, the canary (10, 50, 100%), the
# users' DNS moving to the new app, done, a short rollback window, finish. With KIND heroku the
# source is Heroku-like (trigger mode) and the move is rolled back mid-canary and made again.
#
# What is recorded, per run, from the demo's summary (the load's own per-request log):
#   req/s      requests per second the users sent over the run
#   failed     requests that got an error or an unexpected status (a read of an acknowledged
#              order that is not found counts)
#   lost       acknowledged orders missing on the final primary
#   switch     the longest request in flight while the database switched (target: < 200 ms)
#   rollback   the same while it switched back (heroku only)
#   worst      the longest request of the whole run
#
# There is no other tool that makes the whole move to run beside it: the figures are held
# against their targets (0 failed, 0 lost, a stall under 200 ms). The database switch alone is
# compared with PgBouncer's PAUSE/RESUME in bench/switchover.sh, the splitter with nginx in
# bench/http.sh.
#
# Usage:   bench/e2e.sh
# Knobs (environment):
#   RATES="100 200 400"   HTTP requests per second of the users, one set of runs per rate
#   KINDS="native heroku" sources
#   REPS=2                runs per rate and kind
#   CUTOVER=path          a cutover binary to use instead of building one
#   QUIET_WAIT=60         seconds to wait for an idle machine before each run
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RATES=${RATES:-"100 200 400"}
KINDS=${KINDS:-"native heroku"}
REPS=${REPS:-2}
CUTOVER=${CUTOVER:-}
QUIET_WAIT=${QUIET_WAIT:-60}

WORK=$(mktemp -d /tmp/cutover-e2e.XXXXXX)
mkdir -p "$WORK/logs"
build_cutover

wait_quiet() {
    wait_idle
    ((IDLE >= 90)) || log "warning: the machine stays busy (${IDLE}% idle); figures may be off"
}

field() { python3 -c "import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print('-' if v is None else (f'{v:.0f}' if isinstance(v,float) else v))" "$1" "$2"; }

printf '%-7s %5s %3s  %7s %7s %6s %6s %5s %9s %9s %8s %7s\n' \
    kind rate rep sent 'req/s' failed acked lost 'switch ms' 'rollbk ms' 'worst ms' total | tee "$WORK/table"
for kind in $KINDS; do
    for rate in $RATES; do
        for rep in $(seq 1 "$REPS"); do
            wait_quiet
            out="$WORK/logs/$kind-$rate-$rep.json"
            log "demo: $kind source, $rate requests/s, run $rep"
            if ! "$CUTOVER" demo --json --source-kind "$kind" --rate "$rate" \
                >"$out" 2>"$WORK/logs/$kind-$rate-$rep.log"; then
                log "the demo failed (exit $?): see $WORK/logs/$kind-$rate-$rep.log"
            fi
            [[ -s $out ]] || die "no summary from the demo ($kind, $rate, run $rep)"
            rps=$(python3 -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['requests_per_second']:.0f}\")" "$out")
            printf '%-7s %5s %3s  %7s %7s %6s %6s %5s %9s %9s %8s %6ss\n' \
                "$kind" "$rate" "$rep" "$(field "$out" requests_sent)" "$rps" \
                "$(field "$out" requests_failed)" "$(field "$out" writes_acknowledged)" \
                "$(field "$out" writes_lost)" "$(field "$out" longest_request_at_switch_ms)" \
                "$(field "$out" longest_request_at_rollback_ms)" "$(field "$out" longest_request_ms)" \
                "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['total_ms']//1000)" "$out")" \
                | tee -a "$WORK/table"
        done
    done
done
echo
echo "cutover $("$CUTOVER" --version | awk '{ print $2 }') built $CUTOVER_BUILT; $(nproc) CPUs"
