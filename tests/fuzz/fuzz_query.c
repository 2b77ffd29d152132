/*
 * fuzz_query — libFuzzer target for the query-string helpers of request.c:
 * form_lookup(), url_decode() and utf8_valid().
 *
 * Each is checked against a small, independent reference written here
 * (Unicode Table 3-7 for UTF-8, RFC 3986 percent-decoding plus '+' for
 * space, '&'-separated key=value pairs whose keys are decoded before they
 * are compared, a parameter given twice refused).  Any
 * disagreement, or a result that is not NUL-free UTF-8, aborts.
 *
 * Input: byte 0 picks the parameter name (low 3 bits) and the output
 * buffer's cap (bits 3-4); the rest is the query string.  Name 6 takes the
 * name from the input up to the first '\n'; name 7 hands the raw bytes,
 * NULs included, to url_decode() instead of form_lookup().
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "request.h"

#define FUZZ_ASSERT(cond)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_query: invariant failed at %s:%d: %s\n", __FILE__,   \
				__LINE__, #cond);                                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static const char *const names[] = {
	"message", "conversation_id", "access_token", "limit", "q", "a b",
};
static const size_t caps[] = {16, 256, 4096, 1u << 20};

/* Well-formed UTF-8 per Unicode Table 3-7, and no NUL. */
static int ref_utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned char c = s[i];
		unsigned char lo = 0x80, hi = 0xbf;
		size_t len, k;

		if (c == 0)
			return 0;
		if (c <= 0x7f) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			len = 2;
		else if (c >= 0xe0 && c <= 0xef)
			len = 3;
		else if (c >= 0xf0 && c <= 0xf4)
			len = 4;
		else
			return 0;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
		else if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
		if (n - i < len)
			return 0;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return 0;
		for (k = 2; k < len; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xbf)
				return 0;
		i += len;
	}
	return 1;
}

static int ref_hex(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decode into out (room for n bytes); -1 when malformed, longer than cap
 * or not NUL-free UTF-8. */
static int ref_url_decode(const unsigned char *s, size_t n, size_t cap, unsigned char *out,
			  size_t *outlen)
{
	size_t i, o = 0;

	for (i = 0; i < n; i++) {
		int c = s[i];

		if (c == '+') {
			c = ' ';
		} else if (c == '%') {
			if (n - i < 3 || ref_hex(s[i + 1]) < 0 || ref_hex(s[i + 2]) < 0)
				return -1;
			c = ref_hex(s[i + 1]) * 16 + ref_hex(s[i + 2]);
			i += 2;
		}
		out[o++] = (unsigned char)c;
	}
	*outlen = o;
	if (o > cap)
		return -1;
	return ref_utf8_valid(out, o) ? 0 : -1;
}

/* 1 found (out set), 0 absent, -1 malformed or given twice.  Keys are
 * percent-decoded before they are compared; a key that does not decode
 * (or is 256 bytes or longer) matches nothing. */
static int ref_form_lookup(const char *qs, const char *name, size_t cap, unsigned char *out,
			   size_t *outlen)
{
	size_t n = strlen(qs), namelen = strlen(name), start = 0;
	size_t vstart = 0, vlen = 0, klen;
	unsigned char *key = malloc(n + 1);
	int found = 0;

	FUZZ_ASSERT(key);
	while (start < n) {
		size_t end = start, eq;

		while (end < n && qs[end] != '&')
			end++;
		for (eq = start; eq < end && qs[eq] != '='; eq++)
			;
		if (eq - start < 256 &&
		    ref_url_decode((const unsigned char *)qs + start, eq - start, 256, key,
				   &klen) == 0 &&
		    klen == namelen && memcmp(key, name, namelen) == 0) {
			if (found++) {
				free(key);
				return -1;
			}
			vstart = eq < end ? eq + 1 : end;
			vlen = end - vstart;
		}
		start = end + 1;
	}
	free(key);
	if (!found)
		return 0;
	return ref_url_decode((const unsigned char *)qs + vstart, vlen, cap, out, outlen) < 0 ? -1
											      : 1;
}

/* What a caller may rely on after a successful decode. */
static void check_decoded(const struct buf *b)
{
	const char *s = buf_str(b);

	FUZZ_ASSERT(strlen(s) == b->len);
	FUZZ_ASSERT(b->len <= b->max);
	FUZZ_ASSERT(utf8_valid(s, b->len));
}

static void check_url_decode(const uint8_t *p, size_t n, size_t cap)
{
	unsigned char *want = malloc(n + 1);
	size_t wantlen = 0;
	struct buf b;
	int rc, ref;

	FUZZ_ASSERT(want);
	buf_init(&b, cap);
	rc = url_decode((const char *)p, n, &b);
	ref = ref_url_decode(p, n, cap, want, &wantlen);
	FUZZ_ASSERT(rc == ref);
	if (rc == 0) {
		check_decoded(&b);
		FUZZ_ASSERT(b.len == wantlen);
		FUZZ_ASSERT(wantlen == 0 || memcmp(b.data, want, wantlen) == 0);
	}
	buf_free(&b);
	free(want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *qs, *name_buf = NULL;
	const char *name;
	unsigned char *want;
	size_t cap, wantlen = 0, n;
	struct buf b;
	int sel, rc, ref;

	if (size < 1)
		return 0;
	sel = data[0] & 7;
	cap = caps[(data[0] >> 3) & 3];
	data++;
	size--;

	/* utf8_valid on every input, NULs and all. */
	FUZZ_ASSERT(utf8_valid((const char *)data, size) == ref_utf8_valid(data, size));

	if (sel == 7) {
		check_url_decode(data, size, cap);
		return 0;
	}
	if (sel == 6) {
		const uint8_t *nl = memchr(data, '\n', size);
		size_t len = nl ? (size_t)(nl - data) : 0;

		name_buf = strndup((const char *)data, len);
		FUZZ_ASSERT(name_buf);
		if (nl) {
			size -= len + 1;
			data = nl + 1;
		}
		/* An empty name would match empty pairs ("a&&b"), which no
		 * caller asks for; the reference does not model it. */
		name = name_buf[0] ? name_buf : names[0];
	} else {
		name = names[sel % (sizeof names / sizeof names[0])];
	}

	/* QUERY_STRING is a C string: anything past a NUL is not there. */
	qs = strndup((const char *)data, size);
	want = malloc(size + 1);
	FUZZ_ASSERT(qs && want);
	n = strlen(qs);

	buf_init(&b, cap);
	rc = form_lookup(qs, name, &b);
	ref = ref_form_lookup(qs, name, cap, want, &wantlen);
	FUZZ_ASSERT(rc == ref);
	if (rc == 1) {
		check_decoded(&b);
		FUZZ_ASSERT(b.len == wantlen);
		FUZZ_ASSERT(wantlen == 0 || memcmp(b.data, want, wantlen) == 0);
	}
	/* The same buffer reused for a second lookup starts afresh. */
	rc = form_lookup(qs, "conversation_id", &b);
	ref = ref_form_lookup(qs, "conversation_id", cap, want, &wantlen);
	FUZZ_ASSERT(rc == ref);
	if (rc == 1) {
		check_decoded(&b);
		FUZZ_ASSERT(b.len == wantlen);
	}
	buf_free(&b);

	/* The whole string as one value, as a form body's value would be. */
	check_url_decode((const uint8_t *)qs, n, cap);

	free(want);
	free(qs);
	free(name_buf);
	return 0;
}
