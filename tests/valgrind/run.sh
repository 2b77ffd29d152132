#!/usr/bin/env bash
# tests/valgrind/run.sh — `make valgrind`: every responder (and jarvas-admin)
# under valgrind memcheck through a few thousand requests, then their leak
# and error reports.
#
# Owns one work directory (mktemp, or $JARVAS_VALGRIND_DIR): prog/ holds a
# copy of each program (token, chat, chat_stream, jarvas-admin), bin/ a
# wrapper per program that execs that copy under valgrind, and
# logs/vg.<name>.<pid>.log is each process's report. As root, jarvasctl runs
# the programs as an unprivileged user: the work directory can be entered by
# anyone, prog/ and bin/ read, and logs/ written (sticky, like /tmp) — the
# checkout itself may be out of that user's reach.  tests/valgrind/traffic.py starts one harness Stack with
# JARVAS_TEST_BIN=bin/, drives the traffic and stops the stack (SIGTERM: the
# responders exit cleanly, which is when valgrind writes its leak report).
# Then every log is read.  Invariant: a process passes only when its log
# ends in an ERROR SUMMARY of 0 errors — memory errors, and definite or
# indirect leaks (--errors-for-leak-kinds), all count; a log without a
# summary (the process was killed) fails.
#
# Exit status: 0 all passed, 1 a report or the traffic failed, 2 setup failed.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
PROGRAMS=(token chat chat_stream jarvas-admin)
RESPONDERS=(token chat chat_stream)

die() {
    printf 'valgrind: %s\n' "$*" >&2
    exit 2
}

command -v valgrind >/dev/null || die "valgrind is not installed (make deps-test)"
command -v python3 >/dev/null || die "python3 is not installed (make deps-test)"
for name in "${PROGRAMS[@]}"; do
    [[ -x $ROOT/cgi-bin/$name ]] || die "$ROOT/cgi-bin/$name is missing: build it first (make)"
done
[[ -x $ROOT/tests/fake_ollama ]] || die "$ROOT/tests/fake_ollama is missing: build it first (make)"

if [[ -n ${JARVAS_VALGRIND_DIR:-} ]]; then
    WORK=$JARVAS_VALGRIND_DIR
    mkdir -p "$WORK" || die "cannot create $WORK"
    rm -f "$WORK"/vg.*.log "$WORK"/logs/vg.*.log "$WORK/stack"
else
    WORK=$(mktemp -d /tmp/jarvas-valgrind.XXXXXX) || die "mktemp failed"
fi
WORK=$(cd "$WORK" && pwd -P)
mkdir -p "$WORK/bin" "$WORK/prog" "$WORK/logs" || die "cannot create $WORK/{bin,prog,logs}"
{ chmod 0711 "$WORK" && chmod 0755 "$WORK/bin" "$WORK/prog" && chmod 1777 "$WORK/logs"; } ||
    die "cannot open up $WORK"
for name in "${PROGRAMS[@]}"; do
    { cp "$ROOT/cgi-bin/$name" "$WORK/prog/$name" && chmod 0755 "$WORK/prog/$name"; } ||
        die "cannot copy $ROOT/cgi-bin/$name"
done

# The wrapper execs valgrind in place, so spawn-fcgi's pid is valgrind's and
# the supervisor's pid file stays right.  /proc/<pid>/cmdline then reads
# "valgrind.bin <options> <work>/prog/<name> ", which still contains the
# "/<name> " jarvasctl looks for (no option contains it).
for name in "${PROGRAMS[@]}"; do
    {
        echo '#!/bin/sh'
        echo "# $name under valgrind memcheck, for tests/valgrind/run.sh"
        printf 'exec valgrind --tool=memcheck --leak-check=full '
        printf -- '--show-leak-kinds=definite,indirect,possible '
        printf -- '--errors-for-leak-kinds=definite,indirect --error-exitcode=99 '
        printf -- '--track-fds=no --num-callers=30 '
        printf -- '--log-file=%q %q "$@"\n' "$WORK/logs/vg.$name.%p.log" "$WORK/prog/$name"
    } >"$WORK/bin/$name"
    chmod 0755 "$WORK/bin/$name"
done

echo "valgrind: work directory $WORK"
started=$SECONDS
JARVAS_TEST_BIN=$WORK/bin python3 "$ROOT/tests/valgrind/traffic.py" --stack-file "$WORK/stack"
traffic=$?

# traffic.py stops its stack; when it could not (killed, crashed), stop what
# it left behind: jarvasctl by the state dir it recorded, the fake by pid.
if [[ -s $WORK/stack ]]; then
    state=$(sed -n 's/^state=//p' "$WORK/stack")
    fake=$(sed -n 's/^fake_pid=//p' "$WORK/stack")
    if [[ -n $state && -d $state/run ]]; then
        echo "valgrind: stopping the stack traffic.py left in $state"
        JARVAS_ENV_FILE=/dev/null JARVAS_STATE_DIR=$state JARVAS_BIN_DIR=$WORK/bin \
            "$ROOT/spawn/jarvasctl" stop
    fi
    if [[ $fake =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$fake/cmdline" 2>/dev/null |
        grep -q '/tests/fake_ollama '; then
        kill -TERM "$fake" 2>/dev/null || true
    fi
fi

# --- the reports --------------------------------------------------------------

# bytes LOG KIND: the bytes of one leak kind ("definitely lost" ...) in LOG;
# 0 when valgrind printed no leak summary (all heap blocks were freed).
bytes() {
    local n
    n=$(sed -n "s/^==[0-9]*== *$2: \([0-9,]*\) bytes in.*/\1/p" "$1" | tail -n 1)
    printf '%s\n' "${n:-0}"
}

passed=0 failed=0
printf '\n%-34s %15s %15s %15s  %s\n' "process (log)" "definitely" "indirectly" "possibly" "ERROR SUMMARY"
for name in "${PROGRAMS[@]}"; do
    logs=("$WORK"/logs/vg."$name".*.log)
    if [[ ! -e ${logs[0]} ]]; then
        if [[ " ${RESPONDERS[*]} " == *" $name "* ]]; then
            printf '%-34s no valgrind log: it never ran under valgrind\n' "$name"
            failed=$((failed + 1))
        fi
        continue
    fi
    for log in "${logs[@]}"; do
        summary=$(sed -n 's/^==[0-9]*== ERROR SUMMARY: \([0-9,]*\) errors.*/\1/p' "$log" | tail -n 1)
        ok=1
        [[ $summary == 0 ]] || ok=0
        for kind in "definitely lost" "indirectly lost"; do
            [[ $(bytes "$log" "$kind") == 0 ]] || ok=0
        done
        printf '%-34s %15s %15s %15s  %s\n' "${log##*/}" \
            "$(bytes "$log" "definitely lost")" "$(bytes "$log" "indirectly lost")" \
            "$(bytes "$log" "possibly lost")" \
            "${summary:-none: killed before exit?}${summary:+ errors}"
        if ((ok)); then
            passed=$((passed + 1))
        else
            failed=$((failed + 1))
            # The first lines of each error, so the report says what and where.
            grep -E '^==[0-9]+== (Invalid|Conditional|Use of uninit|Syscall param|Mismatched|Source and destination|Argument|Process terminating|[0-9,]+ .*bytes in [0-9,]+ blocks are (definitely|indirectly))' \
                "$log" | sed 's/^==[0-9]*== //' | sort | uniq -c | sort -rn | head -n 20 |
                sed 's/^/    /'
            echo "    (stack traces in $log)"
        fi
    done
done

elapsed=$((SECONDS - started))
echo
echo "valgrind: logs in $WORK; traffic and shutdown took ${elapsed}s"
if ((traffic != 0)); then
    echo "valgrind: traffic.py failed (exit $traffic): see its output above"
fi
echo "$passed passed, $failed failed"
((failed == 0 && traffic == 0)) || exit 1
exit 0
