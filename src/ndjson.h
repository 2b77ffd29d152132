/*
 * ndjson — splits a byte stream into newline-terminated lines.
 *
 * Network reads cut lines anywhere (a token may arrive in two pieces);
 * this joins them.  A line wholly inside one read is handed over in place,
 * without a copy; only the piece left at the end of a read is buffered.
 * Lines longer than the buffer's maximum are an error, not a truncation.
 */
#ifndef JARVAS_NDJSON_H
#define JARVAS_NDJSON_H

#include <stddef.h>

#include "buf.h"

/* Return 0 to go on, -1 to stop feeding. */
typedef int (*ndjson_line_fn)(void *ctx, const char *line, size_t n);

struct ndjson {
	struct buf partial; /* the unfinished line so far */
};

void ndjson_init(struct ndjson *nd, size_t max_line);
void ndjson_free(struct ndjson *nd);
void ndjson_reset(struct ndjson *nd);
/* 0, -1 when a callback stopped, -2 when a line is over the maximum. */
int ndjson_feed(struct ndjson *nd, const char *p, size_t n, ndjson_line_fn fn, void *ctx);
/* Bytes of an unterminated last line still held. */
size_t ndjson_pending(const struct ndjson *nd);

#endif
