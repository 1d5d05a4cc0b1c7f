#!/usr/bin/env bash
# bench/fleet.sh: a switchover of a fleet of `cutover proxy` instances under load, beside the
# same switchover through one proxy.
#
# FLEET (default 3) proxies of one plan find each other in the control schema of the target;
# pgbench runs through each of them (CLIENTS split between them), and one `cutover db
# switchover` in the middle moves every session of every proxy, or none. Each repetition
# reports, for the fleet as a whole and for each proxy, the longest client-visible pause and
# the failed transactions; the single proxy's figures, from the same run, are the anchor.
#
# This is bench/switchover.sh with METHODS="cutover fleet": see its header for what is
# measured, how, and every knob (REPS, DURATION, SWITCH_AT, CLIENTS, FLEET, CUTOVER, LOG_DIR).
#
# Usage:   bench/fleet.sh            (from anywhere)

set -euo pipefail
METHODS=${METHODS:-"cutover fleet"} exec "$(dirname "${BASH_SOURCE[0]}")/switchover.sh" "$@"
