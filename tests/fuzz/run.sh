#!/bin/sh
# tests/fuzz/run.sh — build the libFuzzer targets (clang, ASan + UBSan) into
# build/fuzz/ and run each for FUZZ_SECONDS (default 60) on a scratch copy
# of its seed corpus, so tests/fuzz/corpus/ is never modified.
#
# Any crash, leak, timeout or sanitizer report fails the target; its
# reproducer is kept in build/fuzz/artifacts/<target>/ and its log in
# build/fuzz/<target>.log.  Rerun one input with
#   build/fuzz/fuzz_<target> <reproducer>
# Environment: FUZZ_SECONDS, FUZZ_TARGETS (default: all of them),
# FUZZ_CFLAGS (extra compiler flags), CLANG (default clang).
# The last line is "N passed, N failed"; the exit status is 0 when none failed.
set -u

cd "$(dirname "$0")/../.." || exit 1

SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-query body jwt ndjson openai openai_fast sse shm fcgi_wire handoff auth throttle reason utf8}
CLANG=${CLANG:-clang}
OUT=build/fuzz
FLAGS="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
-fno-omit-frame-pointer -g -O1 -std=gnu11 -D_GNU_SOURCE -Isrc -Wall -Wextra \
${FUZZ_CFLAGS:-}"
LIBS="-lfcgi -lcurl -lcjson -lsqlite3 -lsodium -lcrypto -lpthread"

# The src/ files each target links, and its input size limit.  config.c
# checks JARVAS_UPSTREAM_API against the protocol table: it comes with wire/.
CONFIG="config wire/wire wire/ollama wire/openai"
sources() {
	case $1 in
	query | body) echo request utf8 $CONFIG log metrics shm response buf ;;
	jwt) echo jwt buf ;;
	ndjson | openai) echo ndjson wire/wire wire/ollama wire/openai buf ;;
	openai_fast) echo wire/wire wire/ollama buf ;; # includes wire/openai.c itself
	sse) echo sse request utf8 response $CONFIG log metrics shm buf ;;
	shm) echo limits metrics shm $CONFIG log buf ;;
	fcgi_wire) echo fcgi_wire buf ;;
	handoff) echo request utf8 fcgi_wire $CONFIG log metrics shm response buf ;;
	auth) echo request utf8 $CONFIG log metrics shm response buf ;;
	throttle) echo throttle users password db $CONFIG log metrics shm buf ;;
	reason) echo upstream ndjson utf8 $CONFIG log metrics shm buf ;;
	utf8) echo utf8 buf ;;
	esac
}
max_len() {
	case $1 in
	query | sse) echo 4096 ;;
	*) echo 8192 ;;
	esac
}

if ! command -v "$CLANG" >/dev/null 2>&1; then
	echo "fuzz: $CLANG not found (make deps-test installs clang)" >&2
	exit 1
fi
mkdir -p "$OUT" || exit 1

passed=0
failed=0
for t in $TARGETS; do
	bin=$OUT/fuzz_$t
	log=$OUT/$t.log
	corpus=$OUT/corpus/$t
	artifacts=$OUT/artifacts/$t
	srcs=
	for s in $(sources "$t"); do
		srcs="$srcs src/$s.c"
	done
	if [ -z "$srcs" ] || [ ! -f "tests/fuzz/fuzz_$t.c" ]; then
		echo "fuzz_$t: FAIL unknown target"
		failed=$((failed + 1))
		continue
	fi

	# The harness is ours: warnings are errors.  src/ is built as the
	# main build checks it (with gcc), so clang-only warnings only show.
	# shellcheck disable=SC2086
	if ! "$CLANG" $FLAGS -Werror -c -o "$bin.o" "tests/fuzz/fuzz_$t.c" ||
	   ! "$CLANG" $FLAGS -o "$bin" "$bin.o" $srcs $LIBS; then
		echo "fuzz_$t: FAIL build"
		failed=$((failed + 1))
		continue
	fi

	rm -rf "$corpus" "$artifacts"
	mkdir -p "$corpus" "$artifacts"
	if [ -d "tests/fuzz/corpus/$t" ]; then
		cp -R "tests/fuzz/corpus/$t/." "$corpus/"
	fi

	LSAN_OPTIONS=suppressions=tests/fuzz/lsan.supp:print_suppressions=0 \
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:allocator_may_return_null=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		"./$bin" -max_total_time="$SECONDS_EACH" -max_len="$(max_len "$t")" \
		-timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
		-artifact_prefix="$artifacts/" "$corpus" >"$log" 2>&1
	rc=$?

	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	cov=$(grep -E '^#[0-9]+' "$log" | grep -o 'cov: [0-9]*' | tail -n 1)
	ft=$(grep -E '^#[0-9]+' "$log" | grep -o 'ft: [0-9]*' | tail -n 1)
	corp=$(grep -E '^#[0-9]+' "$log" | grep -o 'corp: [0-9]*' | tail -n 1)
	stats="execs=${execs:-?} ${cov:-cov: ?} ${ft:-ft: ?} ${corp:-corp: ?} in ${SECONDS_EACH}s"
	reports=$(grep -cE 'ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:|ERROR: libFuzzer|invariant failed' "$log")
	if [ "$rc" -eq 0 ] && [ "$reports" -eq 0 ] && [ -n "$execs" ]; then
		echo "fuzz_$t: ok   $stats"
		passed=$((passed + 1))
	else
		echo "fuzz_$t: FAIL (exit $rc) $stats - log: $log"
		grep -E 'invariant failed|ERROR: |SUMMARY: |runtime error:' "$log" | head -n 5 | sed 's/^/    /'
		for f in $(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log"); do
			echo "    reproducer: $f ($(wc -c <"$f") bytes)"
			echo "    rerun:      $bin $f"
		done
		failed=$((failed + 1))
	fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
