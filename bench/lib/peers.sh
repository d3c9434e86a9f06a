# Shared by bench/tls.sh and bench/h2.sh (sourced, not run): logging, the processes a run
# starts (stopped by PID on exit), and CPU accounting from /proc. The sourcing script sets
# TARGETS, TESTS, PIN, RUNDIR, OUTDIR, IDLE_MAX, IDLE_WAIT and MAINPID first.
# shellcheck shell=bash

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
has() { [[ " $TARGETS " == *" $1 "* ]]; }
want() { [[ " $TESTS " == *" $1 "* ]]; }
pin() { if [ -n "$1" ]; then echo "taskset -c $1"; fi; }
median() { sort -g | awk '{a[NR]=$1} END{ if (NR==0) {print "-"; exit} if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

# Called by the script once its knobs are checked: the run and output folders, the CPU pins.
prepare_dirs() {
    mkdir -p "$RUNDIR" "$OUTDIR" || exit 1
    RUNDIR=$(cd "$RUNDIR" && pwd); OUTDIR=$(cd "$OUTDIR" && pwd)
    cd "$OUTDIR" || exit 1
    IFS=: read -r CPU_LG CPU_PROXY CPU_BACKEND _ <<<"${PIN}:::"
    ulimit -n "$(ulimit -Hn)" 2>/dev/null
}

# ---------------------------------------------------------------- processes (stopped by PID)
declare -a STARTED=()
declare -A PID_OF=()
LGPIDS=""
kids() { local p; for p in "$@"; do cat "/proc/$p/task/$p/children" 2>/dev/null; done; }
stop() {    # PID... : TERM, wait <= 5 s, KILL
    local p i alive all
    all="$* $(kids "$@")"
    for p in "$@"; do kill -TERM "$p" 2>/dev/null; done
    for i in $(seq 1 50); do
        alive=0; for p in $all; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive -eq 0 ] && break; sleep 0.1
    done
    for p in $all; do kill -0 "$p" 2>/dev/null && { log "SIGKILL $p"; kill -KILL "$p" 2>/dev/null; }; done
    for p in "$@"; do wait "$p" 2>/dev/null; done
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # shellcheck disable=SC2086
    [ -n "$LGPIDS" ] && stop $LGPIDS
    [ ${#STARTED[@]} -gt 0 ] && { log "stopping PIDs: ${STARTED[*]}"; stop "${STARTED[@]}"; }
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start() {   # NAME CPUSET cmd...
    local name=$1 cpus=$2; shift 2
    $(pin "$cpus") "$@" >"$RUNDIR/$name.stdout" 2>&1 &
    STARTED+=("$!"); PID_OF[$name]=$!
    log "started $name pid=$! cpus=${cpus:-any}"
}
stop_one() {    # NAME
    local p=${PID_OF[$1]} i
    stop "$p"
    for i in "${!STARTED[@]}"; do [ "${STARTED[$i]}" = "$p" ] && unset "STARTED[$i]"; done
    STARTED=("${STARTED[@]}")
}
wait_url() {    # NAME URL : 200 within 10 s
    local i
    for i in $(seq 1 100); do
        kill -0 "${PID_OF[$1]}" 2>/dev/null || die "$1 died; see $RUNDIR/$1.stdout"
        [ "$(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "$2")" = 200 ] && return 0
        sleep 0.1
    done
    die "$1 not answering 200 on $2 after 10 s (see $RUNDIR/$1.stdout)"
}
port_free() { [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

# ---------------------------------------------------------------- CPU accounting
proc_ticks() {  # utime+stime of PIDs and their children (ticks)
    local p t=0 v
    for p in "$@" $(kids "$@"); do
        v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}'); t=$((t + ${v:-0}))
    done
    echo $t
}
sys_ticks() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat; }
child_ticks() { sed 's/.*) //' "/proc/$MAINPID/stat" | awk '{print $14+$15}'; }
busy_pct() { echo "$1 $2" | awk '{dt=$3-$1; di=$4-$2; b=0; if (dt>0) b=100*(dt-di)/dt; printf "%.0f", b}'; }
wait_idle() {   # bounded (IDLE_WAIT s); echoes the last machine busy %
    local a b bz i
    for i in $(seq 1 $((IDLE_WAIT * 2 + 1))); do
        a=$(sys_ticks); sleep 0.5; b=$(sys_ticks); bz=$(busy_pct "$a" "$b")
        [ "$bz" -le "$IDLE_MAX" ] && break
        [ "$i" -eq 1 ] && log "machine ${bz}% busy before run; waiting up to ${IDLE_WAIT}s"
    done
    echo "$bz"
}

