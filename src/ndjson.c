/*
 * ndjson — line splitting for streamed NDJSON (see ndjson.h).
 * Empty lines (and a lone "\r" before "\n") are skipped: Ollama never sends
 * them, and a blank line is not worth an error.
 */
#include "ndjson.h"

#include <string.h>

void ndjson_init(struct ndjson *nd, size_t max_line)
{
	buf_init(&nd->partial, max_line);
}

void ndjson_free(struct ndjson *nd)
{
	buf_free(&nd->partial);
}

void ndjson_reset(struct ndjson *nd)
{
	buf_reset(&nd->partial);
}

size_t ndjson_pending(const struct ndjson *nd)
{
	return nd->partial.len;
}

static int emit(const char *line, size_t n, ndjson_line_fn fn, void *ctx)
{
	if (n > 0 && line[n - 1] == '\r')
		n--;
	if (n == 0)
		return 0;
	return fn(ctx, line, n) < 0 ? -1 : 0;
}

int ndjson_feed(struct ndjson *nd, const char *p, size_t n, ndjson_line_fn fn, void *ctx)
{
	const char *end = p + n, *nl;

	while (p < end && (nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
		size_t len = (size_t)(nl - p);
		int rc;

		if (nd->partial.len) {
			if (buf_append(&nd->partial, p, len) != BUF_OK)
				return -2;
			rc = emit(nd->partial.data, nd->partial.len, fn, ctx);
			buf_reset(&nd->partial);
		} else {
			if (len > nd->partial.max)
				return -2;
			rc = emit(p, len, fn, ctx);
		}
		if (rc < 0)
			return -1;
		p = nl + 1;
	}
	if (p < end && buf_append(&nd->partial, p, (size_t)(end - p)) != BUF_OK)
		return -2;
	return 0;
}
