/*
 * fuzz_ndjson — libFuzzer target for the upstream read path: ndjson_feed()
 * splitting a stream cut at fuzzer-chosen points, each line handed to
 * Ollama's decoder (wire/ollama.c) as upstream.c does.
 *
 * Invariants:
 *   - the lines that come out do not depend on where the reads were cut:
 *     they equal an independent split of the whole stream ('\n'-terminated,
 *     one trailing '\r' dropped, empty lines skipped), in order, and so
 *     does feeding the whole stream at once after ndjson_reset();
 *   - a line longer than the maximum (counting a trailing '\r') makes
 *     ndjson_feed() return -2, after exactly the lines before it; a
 *     callback returning -1 makes it return -1 at once;
 *   - with no error, ndjson_pending() is the length of the unterminated
 *     tail;
 *   - the decoder returns 0 only for an object, and then gives an error,
 *     or a content string (len == strlen: "\u0000" does not cut it)
 *     and/or the end (with a finish reason, "" when none).
 *
 * Input: byte 0 picks the line maximum, byte 1 (low 3 bits) a line after
 * which the callback stops (0: never), byte 2 (low 4 bits) the number of
 * cut points, then two bytes per cut point; the rest is the stream.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "buf.h"
#include "ndjson.h"
#include "wire/wire.h"

#define FUZZ_ASSERT(cond)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_ndjson: invariant failed at %s:%d: %s\n", __FILE__,  \
				__LINE__, #cond);                                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static const size_t line_max[] = {8, 64, 4096, 4u << 20};

/* Lines as "<len as size_t><bytes>" records, one after another. */
struct lines {
	struct buf rec;
	size_t count;
	size_t stop_after; /* 0: never stop */
};

static void lines_add(struct lines *l, const char *p, size_t n)
{
	FUZZ_ASSERT(buf_append(&l->rec, &n, sizeof n) == BUF_OK);
	FUZZ_ASSERT(buf_append(&l->rec, p, n) == BUF_OK);
	l->count++;
}

static void check_decoded_line(const char *line, size_t n)
{
	struct wire_line u;
	int rc;

	memset(&u, 0xa5, sizeof u);
	rc = wire_ollama.decode(line, n, &u);
	FUZZ_ASSERT(rc == 0 || rc == -1);
	if (rc == 0) {
		FUZZ_ASSERT(cJSON_IsObject(u.json));
		FUZZ_ASSERT(u.end == 0 || u.end == 1);
		if (u.error) {
			FUZZ_ASSERT(!u.content && !u.end);
		} else {
			FUZZ_ASSERT(u.content || u.end);
			FUZZ_ASSERT(u.content ? strlen(u.content) == u.len : u.len == 0);
			FUZZ_ASSERT(u.end ? u.finish_reason != NULL : u.finish_reason == NULL);
		}
	}
	wire_line_free(&u);
}

static int on_line(void *ctx, const char *line, size_t n)
{
	struct lines *l = ctx;

	FUZZ_ASSERT(n > 0);
	FUZZ_ASSERT(!memchr(line, '\n', n));
	lines_add(l, line, n);
	check_decoded_line(line, n);
	return l->stop_after && l->count == l->stop_after ? -1 : 0;
}

/* The reference split.  Returns 0, -1 (stopped) or -2 (overlong line),
 * as ndjson_feed() should; *tail is the unterminated rest. */
static int reference(const char *p, size_t n, size_t max, struct lines *l, size_t *tail)
{
	size_t start = 0;

	for (;;) {
		const char *nl = memchr(p + start, '\n', n - start);
		size_t len = nl ? (size_t)(nl - p - start) : n - start;

		if (len > max)
			return -2;
		if (!nl) {
			*tail = len;
			return 0;
		}
		if (len > 0 && p[start + len - 1] == '\r')
			len--;
		if (len > 0) {
			lines_add(l, p + start, len);
			if (l->stop_after && l->count == l->stop_after)
				return -1;
		}
		start = (size_t)(nl - p) + 1;
	}
}

static int cmp_size(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;

	return x < y ? -1 : x > y;
}

static void lines_init(struct lines *l, size_t stop_after)
{
	buf_init(&l->rec, 64u << 20);
	l->count = 0;
	l->stop_after = stop_after;
}

static void lines_same(const struct lines *a, const struct lines *b)
{
	FUZZ_ASSERT(a->count == b->count);
	FUZZ_ASSERT(a->rec.len == b->rec.len);
	FUZZ_ASSERT(a->rec.len == 0 || memcmp(a->rec.data, b->rec.data, a->rec.len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t max, stop_after, ncuts, cuts[18], i, n, tail = 0;
	struct lines got, want, whole;
	struct ndjson nd;
	const char *stream;
	char *copy;
	int rc = 0, ref;

	if (size < 3)
		return 0;
	max = line_max[data[0] & 3];
	stop_after = data[1] & 7;
	ncuts = data[2] & 15;
	if (size < 3 + 2 * ncuts)
		return 0;
	n = size - 3 - 2 * ncuts;
	stream = (const char *)data + 3 + 2 * ncuts;
	cuts[0] = 0;
	for (i = 0; i < ncuts; i++)
		cuts[i + 1] = ((size_t)data[3 + 2 * i] | (size_t)data[4 + 2 * i] << 8) % (n + 1);
	cuts[ncuts + 1] = n;
	qsort(cuts, ncuts + 2, sizeof cuts[0], cmp_size);

	lines_init(&got, stop_after);
	lines_init(&want, stop_after);
	lines_init(&whole, stop_after);
	ndjson_init(&nd, max);

	/* Each piece in its own exact-size allocation, like a network read:
	 * a line must not be read past the piece it lies in. */
	for (i = 0; i + 1 < ncuts + 2 && rc == 0; i++) {
		size_t len = cuts[i + 1] - cuts[i];

		copy = malloc(len ? len : 1);
		FUZZ_ASSERT(copy);
		memcpy(copy, stream + cuts[i], len);
		rc = ndjson_feed(&nd, copy, len, on_line, &got);
		free(copy);
	}
	FUZZ_ASSERT(rc == 0 || rc == -1 || rc == -2);
	ref = reference(stream, n, max, &want, &tail);
	FUZZ_ASSERT(rc == ref);
	lines_same(&got, &want);
	if (rc == 0)
		FUZZ_ASSERT(ndjson_pending(&nd) == tail);

	/* The same splitter, reset, fed the whole stream in one read. */
	ndjson_reset(&nd);
	FUZZ_ASSERT(ndjson_pending(&nd) == 0);
	copy = malloc(n ? n : 1);
	FUZZ_ASSERT(copy);
	memcpy(copy, stream, n);
	rc = ndjson_feed(&nd, copy, n, on_line, &whole);
	free(copy);
	FUZZ_ASSERT(rc == ref);
	lines_same(&whole, &want);
	if (rc == 0)
		FUZZ_ASSERT(ndjson_pending(&nd) == tail);

	ndjson_free(&nd);
	buf_free(&got.rec);
	buf_free(&want.rec);
	buf_free(&whole.rec);
	return 0;
}
