/*
 * utf8 — UTF-8 validation and repair (see utf8.h).
 */
#include "utf8.h"

#include <string.h>

static const char replacement[] = "\xef\xbf\xbd"; /* U+FFFD */

/* Length of the valid character at p (1-4), or 0 when p starts an
 * invalid sequence; then *bad is the length of its maximal subpart (the
 * bytes that one U+FFFD replaces).  NUL counts as invalid. */
static size_t char_at(const unsigned char *p, size_t n, size_t *bad)
{
	unsigned char c = p[0], lo = 0x80, hi = 0xbf;
	size_t len, i;

	*bad = 1;
	if (c >= 0x01 && c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4;
	else
		return 0; /* NUL, a continuation byte, C0, C1, F5-FF */
	/* The second byte's range excludes overlong forms, surrogates and
	 * values past U+10FFFF. */
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	for (i = 1; i < len; i++) {
		if (i >= n || p[i] < lo || p[i] > hi) {
			*bad = i;
			return 0;
		}
		lo = 0x80;
		hi = 0xbf;
	}
	return len;
}

int utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + n;
	size_t len, bad;

	while (p < end) {
		if (*p >= 0x01 && *p < 0x80) {
			p++;
			continue;
		}
		if ((len = char_at(p, (size_t)(end - p), &bad)) == 0)
			return 0;
		p += len;
	}
	return 1;
}

size_t utf8_incomplete_tail(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t k, bad;

	/* A lead byte at most 3 bytes from the end whose sequence is only
	 * cut short by the end (char_at's maximal subpart reaches it). */
	for (k = 1; k <= 3 && k <= n; k++) {
		unsigned char c = p[n - k];

		if ((c & 0xc0) == 0x80)
			continue; /* a continuation byte: look further back */
		if (c < 0xc2 || c > 0xf4)
			return 0;
		return char_at(p + n - k, k, &bad) == 0 && bad == k ? k : 0;
	}
	return 0;
}

int utf8_sanitize(struct buf *out, const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + n;
	const unsigned char *run = p;
	size_t len, bad;

	while (p < end) {
		if (*p >= 0x01 && *p < 0x80) {
			p++;
			continue;
		}
		if ((len = char_at(p, (size_t)(end - p), &bad)) > 0) {
			p += len;
			continue;
		}
		/* The valid run before it in one go, then one U+FFFD. */
		if (buf_append(out, run, (size_t)(p - run)) != BUF_OK ||
		    buf_append(out, replacement, 3) != BUF_OK)
			return -1;
		p += bad;
		run = p;
	}
	return buf_append(out, run, (size_t)(end - run)) == BUF_OK ? 0 : -1;
}

/* Length of the white-space character at s, or 0: what Python's
 * str.strip() removes, in UTF-8. */
static size_t space_at(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	unsigned cp;

	if (n >= 1 &&
	    (p[0] == ' ' || (p[0] >= 0x09 && p[0] <= 0x0d) || (p[0] >= 0x1c && p[0] <= 0x1f)))
		return 1;
	if (n >= 2 && p[0] == 0xc2 && (p[1] == 0x85 || p[1] == 0xa0))
		return 2;
	if (n < 3 || (p[0] & 0xf0) != 0xe0)
		return 0;
	cp = (unsigned)(p[0] & 0x0f) << 12 | (unsigned)(p[1] & 0x3f) << 6 | (p[2] & 0x3f);
	return (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
		cp == 0x202f || cp == 0x205f || cp == 0x3000)
		       ? 3
		       : 0;
}

/* Start of the last character of s[0..n), n > 0. */
static size_t last_char(const char *s, size_t n)
{
	size_t i = n - 1;

	while (i > 0 && n - i < 4 && ((unsigned char)s[i] & 0xc0) == 0x80)
		i--;
	return i;
}

size_t utf8_trim(const char **s, size_t n)
{
	const char *text = *s;
	size_t k, start;

	while (n > 0 && (k = space_at(text, n)) > 0)
		text += k, n -= k;
	while (n > 0) {
		start = last_char(text, n);
		if (space_at(text + start, n - start) != n - start)
			break;
		n = start;
	}
	*s = text;
	return n;
}

size_t utf8_prefix(const char *s, size_t n, size_t max_chars)
{
	size_t at = 0;

	/* A character is its lead byte and the continuation bytes after it. */
	while (at < n && max_chars > 0) {
		at++;
		while (at < n && ((unsigned char)s[at] & 0xc0) == 0x80)
			at++;
		max_chars--;
	}
	return at;
}

void utf8_copy(char *dst, size_t cap, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n = strlen(s), at = 0, len, bad;

	while (n > 0) {
		const char *piece = (const char *)p;
		size_t take;

		len = char_at(p, n, &bad);
		take = len ? len : bad;
		if (!len)
			piece = replacement;
		if (at + (len ? len : 3) >= cap)
			break;
		memcpy(dst + at, piece, len ? len : 3);
		at += len ? len : 3;
		p += take;
		n -= take;
	}
	dst[at] = '\0';
}
