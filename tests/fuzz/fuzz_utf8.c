/*
 * fuzz_utf8 — libFuzzer target for the repair of text from the model
 * (src/utf8.c): utf8_sanitize(), utf8_incomplete_tail(), utf8_copy(),
 * utf8_trim() and utf8_prefix().
 *
 * Invariants: sanitizing gives valid UTF-8 without NUL; valid text comes
 * out unchanged; sanitizing twice changes nothing more; cutting the input
 * anywhere and holding back the incomplete tail as upstream.c does gives
 * the same result as the whole (a character split between two pieces is
 * joined again); utf8_copy() fits its room, cuts between characters and
 * is a prefix of the sanitized text.
 *
 * Input: byte 0 picks a cut point and the room for utf8_copy(); the rest
 * is the text.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "utf8.h"

#define FUZZ_ASSERT(cond)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_utf8: invariant failed at %s:%d: %s\n", __FILE__,    \
				__LINE__, #cond);                                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data + 1;
	struct buf whole, again, split, piece;
	size_t n, cut, keep, cap;
	char small[64], *cstr;

	if (size < 1)
		return 0;
	n = size - 1;
	cut = n ? data[0] % (n + 1) : 0;
	cap = 1 + data[0] % sizeof small;
	buf_init(&whole, 4 * n + 16);
	buf_init(&again, 4 * n + 16);
	buf_init(&split, 4 * n + 16);
	buf_init(&piece, n + 16);
	FUZZ_ASSERT(utf8_sanitize(&whole, s, n) == 0);
	FUZZ_ASSERT(utf8_valid(whole.data ? whole.data : "", whole.len));
	if (utf8_valid(s, n))
		FUZZ_ASSERT(whole.len == n && memcmp(whole.data, s, n) == 0);
	FUZZ_ASSERT(utf8_sanitize(&again, buf_str(&whole), whole.len) == 0);
	FUZZ_ASSERT(again.len == whole.len &&
		    memcmp(buf_str(&again), buf_str(&whole), whole.len) == 0);
	/* Two pieces, the first's incomplete end held back for the second. */
	keep = utf8_incomplete_tail(s, cut);
	FUZZ_ASSERT(keep <= 3 && keep <= cut);
	FUZZ_ASSERT(utf8_sanitize(&split, s, cut - keep) == 0);
	FUZZ_ASSERT(buf_append(&piece, s + cut - keep, keep) == BUF_OK &&
		    buf_append(&piece, s + cut, n - cut) == BUF_OK);
	FUZZ_ASSERT(utf8_sanitize(&split, buf_str(&piece), piece.len) == 0);
	FUZZ_ASSERT(split.len == whole.len &&
		    memcmp(buf_str(&split), buf_str(&whole), whole.len) == 0);
	/* A C string cut to fit. */
	cstr = malloc(n + 1);
	FUZZ_ASSERT(cstr);
	memcpy(cstr, s, n);
	cstr[n] = '\0';
	buf_reset(&again);
	FUZZ_ASSERT(utf8_sanitize(&again, cstr, strlen(cstr)) == 0);
	utf8_copy(small, cap, cstr);
	FUZZ_ASSERT(strlen(small) < cap && utf8_valid(small, strlen(small)));
	FUZZ_ASSERT(strncmp(buf_str(&again), small, strlen(small)) == 0);
	FUZZ_ASSERT(again.len - strlen(small) < 4 || strlen(small) + 4 > cap - 1);
	free(cstr);
	/* Trimming and cutting valid text (a title): what is left is a part
	 * of it, valid, and a cut of k characters holds k or all of them. */
	{
		const char *t = buf_str(&whole);
		size_t left = utf8_trim(&t, whole.len), k = data[0] % 8, cut_at;

		FUZZ_ASSERT(t >= buf_str(&whole) && t + left <= buf_str(&whole) + whole.len);
		FUZZ_ASSERT(utf8_valid(t, left));
		cut_at = utf8_prefix(t, left, k);
		FUZZ_ASSERT(cut_at <= left && cut_at <= 4 * k && utf8_valid(t, cut_at));
		FUZZ_ASSERT(cut_at == left || cut_at >= k);
	}
	buf_free(&whole);
	buf_free(&again);
	buf_free(&split);
	buf_free(&piece);
	return 0;
}
