/*
 * utf8 — checking and repairing UTF-8.
 *
 * What jarvas stores and sends is valid UTF-8 without NUL characters:
 * client input that is not is refused (request.c), and text from the
 * model that is not is repaired here — each invalid sequence becomes
 * U+FFFD, as a browser's decoder does — because the model's reply cannot
 * be refused, only kept readable.  Text cut to fit is cut between
 * characters, never inside one.
 */
#ifndef JARVAS_UTF8_H
#define JARVAS_UTF8_H

#include <stddef.h>

#include "buf.h"

/* 1 when s[0..n) is valid UTF-8 without NUL (no overlong forms, no
 * surrogates, nothing past U+10FFFF), else 0. */
int utf8_valid(const char *s, size_t n);

/* Append s[0..n) to out with every NUL and every maximal invalid
 * subsequence (Unicode's "substitution of maximal subparts", what
 * Python's errors="replace" and the WHATWG decoder do) replaced by
 * U+FFFD.  0, or -1 when out is full. */
int utf8_sanitize(struct buf *out, const char *s, size_t n);

/* How many bytes at the end of s[0..n) are the start of a character
 * that more bytes could still complete (0-3): text cut inside a
 * character, not invalid text. */
size_t utf8_incomplete_tail(const char *s, size_t n);

/* Trim s[0..n) of white space at both ends, as Python's str.strip()
 * trims (DRF's CharField does): *s moves past the leading white space;
 * returns the length left.  s must be valid UTF-8. */
size_t utf8_trim(const char **s, size_t n);

/* The length in bytes of the first max_chars characters (code points) of
 * valid UTF-8 s[0..n): n when it has no more, else a cut on a character
 * boundary. */
size_t utf8_prefix(const char *s, size_t n, size_t max_chars);

/* Copy s into dst (cap bytes, cap > 0) repaired as utf8_sanitize() does
 * and cut to fit on a character boundary; always NUL-terminated. */
void utf8_copy(char *dst, size_t cap, const char *s);

#endif
