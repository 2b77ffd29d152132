#!/usr/bin/env bash
# test_streaming.sh — the operator's check that streaming works end to end:
# health, login, then a GET and a POST stream whose Server-Sent Events are
# printed as they arrive.  It fails when the chunks did not arrive one by
# one (a buffering proxy delivers them all at the end).
#
# Environment (defaults fit `make run`):
#   BASE_URL          http://$JARVAS_LISTEN (127.0.0.1:8080)
#   JARVAS_USER       demo
#   JARVAS_PASSWORD   the contents of $JARVAS_STATE_DIR/demo.password
#   TEST_MESSAGE      what to ask
#   MIN_SPREAD        seconds that must separate the first chunk from the
#                     last (0.2)
# Exit status: 0 when all four steps pass, 1 otherwise.
set -uo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
state=${JARVAS_STATE_DIR:-$here/var}
BASE_URL=${BASE_URL:-http://${JARVAS_LISTEN:-127.0.0.1:8080}}
JARVAS_USER=${JARVAS_USER:-demo}
if [ -z "${JARVAS_PASSWORD:-}" ] && [ -r "$state/demo.password" ]; then
	JARVAS_PASSWORD=$(cat "$state/demo.password")
fi
JARVAS_PASSWORD=${JARVAS_PASSWORD:-}
TEST_MESSAGE=${TEST_MESSAGE:-Tell me a short story about a robot, in three sentences.}
MIN_SPREAD=${MIN_SPREAD:-0.2}

ok() { printf '  \342\234\223 %s\n' "$*"; }
fail() { printf '  \342\234\227 %s\n' "$*"; exit 1; }

# Print each SSE line with the seconds since the request started; then
# check that chunks arrived spread over time.  $@: extra curl arguments.
stream() {
	local start now t first="" last="" chunks=0 done_seen=0 in_error=0 error_data=""
	local line spread min_us
	# $EPOCHREALTIME, not date(1): a process per line would be slower than
	# the chunks, and the gaps measured would be our own.
	start=${EPOCHREALTIME/./}
	while IFS= read -r line; do
		now=${EPOCHREALTIME/./}
		t=$(((now - start) / 1000)) # milliseconds
		[ -n "$line" ] && printf '    [%d.%03ds] %s\n' $((t / 1000)) $((t % 1000)) "$line"
		case "$line" in
		"event: done") done_seen=1 ;;
		"event: error") in_error=1 ;;
		data:*)
			if [ "$in_error" = 1 ]; then
				error_data=$line
			elif [[ "$line" == *'"chunk"'* ]]; then
				chunks=$((chunks + 1))
				[ -z "$first" ] && first=$now
				last=$now
			fi ;;
		esac
	done < <(curl -sS -N --max-time 300 -H "Authorization: Bearer $access" "$@" 2>&1)
	[ "$in_error" = 1 ] && fail "the stream ended with an error: $error_data"
	[ "$chunks" -ge 2 ] || fail "expected several chunks, got $chunks"
	[ "$done_seen" = 1 ] || fail "the stream ended without 'event: done'"
	spread=$(((last - first) / 1000))
	min_us=$(awk -v m="$MIN_SPREAD" 'BEGIN { printf "%d", m * 1000000 }')
	if ((last - first < min_us)); then
		fail "all $chunks chunks arrived within $((spread / 1000)).$(printf '%03d' $((spread % 1000)))s: something buffers the stream"
	fi
	ok "$chunks chunks over $((spread / 1000)).$(printf '%03d' $((spread % 1000)))s: they arrived one by one"
}

echo "[1/4] Checking if backend is running..."
health=$(curl -sS --max-time 10 "$BASE_URL/api/health/" 2>&1) ||
	fail "no answer from $BASE_URL: $health"
case "$health" in
*'"status":"ok"'* | *'"status": "ok"'*) ok "backend is up: $health" ;;
*) fail "backend answered but is not healthy: $health" ;;
esac
# The development stand-in answers instantly unless asked to pace itself
# like a model does; a real model needs no such hint.
case "$health" in
*upstream_note*) TEST_MESSAGE="$TEST_MESSAGE [[fake tokens=12 delay_ms=120 first_ms=300]]" ;;
esac

echo "[2/4] Getting authentication token..."
[ -n "$JARVAS_PASSWORD" ] || fail "no password: set JARVAS_PASSWORD (or run make run, which writes $state/demo.password)"
body=$(printf '{"username": "%s", "password": "%s"}' "$JARVAS_USER" "$JARVAS_PASSWORD")
token_json=$(curl -sS --max-time 30 -H 'Content-Type: application/json' -d "$body" "$BASE_URL/api/token/" 2>&1)
access=$(printf '%s' "$token_json" | sed -n 's/.*"access": *"\([^"]*\)".*/\1/p')
[ -n "$access" ] || fail "login as $JARVAS_USER failed: $token_json"
ok "got an access token for $JARVAS_USER"

echo "[3/4] Testing GET endpoint..."
stream -G --data-urlencode "message=$TEST_MESSAGE" --data-urlencode "conversation_id=test-streaming" \
	"$BASE_URL/api/chat/stream/"

echo "[4/4] Testing POST endpoint..."
json_message=$(printf '%s' "$TEST_MESSAGE" | sed 's/\\/\\\\/g; s/"/\\"/g')
stream -H 'Content-Type: application/json' \
	-d "{\"message\": \"$json_message\", \"conversation_id\": \"test-streaming\"}" \
	"$BASE_URL/api/chat/stream/"

echo "All 4 checks passed."
