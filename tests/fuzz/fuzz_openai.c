/*
 * fuzz_openai — libFuzzer target for the OpenAI event decoder
 * (wire/openai.c): the input is an upstream's answer, split into lines by
 * ndjson_feed() as upstream.c does (its unterminated tail flushed with a
 * '\n' at the end, as upstream_xfer_finish() does), each line copied into
 * an allocation of its own size and handed to wire_openai.decode().  The
 * whole input also goes to both protocols' models() parsers.
 *
 * Invariants of decode():
 *   - it returns 0 or -1;
 *   - on 0 json is NULL for a comment (":..."), an "event", "id" or
 *     "retry" field, or "data: [DONE]"; every other line it accepts is a
 *     data field holding one JSON object, and json is that object (read
 *     by cJSON) or the strings handed out (the one-pass reader of the
 *     usual chunk: an array, NULL when none; fuzz_openai_fast compares
 *     the two); content and finish_reason point into json;
 *   - a comment or one of those fields sets nothing; "data: [DONE]" sets
 *     end and nothing else; end is set for no other line;
 *   - content != NULL implies len == strlen(content) ("\u0000" does not
 *     cut it); content == NULL implies len == 0;
 *   - an error sets no content, no finish reason and no end;
 *   - the token counts are -1 or not negative;
 *   - a field name other than data, event, id, retry is refused (-1);
 *   - wire_line_free() is safe after either result, also twice.
 * Invariants of models(): 0 or -1; on -1 the callback was never called;
 * each name is a string; no more names than bytes of input.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ndjson.h"
#include "wire/wire.h"

#define FUZZ_ASSERT(cond)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_openai: invariant failed at %s:%d: %s\n", __FILE__,  \
				__LINE__, #cond);                                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#define LINE_MAX_BYTES (4u << 20) /* as upstream.c */

enum kind { COMMENT, FIELD, DONE, DATA, OTHER };

/* What the line is, read independently of the decoder (the SSE rules: the
 * field name up to the first ':', one space after it dropped). */
static enum kind kind_of(const char *line, size_t n)
{
	const char *colon = memchr(line, ':', n), *v;
	size_t name = colon ? (size_t)(colon - line) : n, vlen;

	if (line[0] == ':')
		return COMMENT;
	if ((name == 5 && memcmp(line, "event", 5) == 0) ||
	    (name == 2 && memcmp(line, "id", 2) == 0) ||
	    (name == 5 && memcmp(line, "retry", 5) == 0))
		return FIELD;
	if (!(name == 4 && memcmp(line, "data", 4) == 0))
		return OTHER;
	v = colon ? colon + 1 : line + n;
	vlen = (size_t)(line + n - v);
	if (vlen > 0 && v[0] == ' ')
		v++, vlen--;
	return vlen == 6 && memcmp(v, "[DONE]", 6) == 0 ? DONE : DATA;
}

static int nothing_set(const struct wire_line *l)
{
	return !l->json && !l->content && l->len == 0 && !l->error && !l->finish_reason &&
	       l->prompt_tokens == -1 && l->completion_tokens == -1;
}

static int on_line(void *ctx, const char *line, size_t n)
{
	struct wire_line l;
	enum kind k;
	char *copy;
	int rc;

	(void)ctx;
	FUZZ_ASSERT(n > 0 && !memchr(line, '\n', n));
	/* Its own allocation: the decoder must not read past the line. */
	copy = malloc(n);
	FUZZ_ASSERT(copy);
	memcpy(copy, line, n);
	k = kind_of(copy, n);
	memset(&l, 0xa5, sizeof l);
	rc = wire_openai.decode(copy, n, &l);
	FUZZ_ASSERT(rc == 0 || rc == -1);
	FUZZ_ASSERT(l.prompt_tokens >= -1 && l.completion_tokens >= -1);
	if (k == OTHER)
		FUZZ_ASSERT(rc == -1);
	if (rc == 0) {
		FUZZ_ASSERT(l.end == (k == DONE));
		if (k != DATA)
			FUZZ_ASSERT(l.json == NULL);
		if (l.content || l.finish_reason || l.error)
			FUZZ_ASSERT(l.json != NULL);
		if (k == COMMENT || k == FIELD)
			FUZZ_ASSERT(nothing_set(&l));
		if (k == DONE)
			FUZZ_ASSERT(nothing_set(&l));
		if (k == DATA)
			FUZZ_ASSERT(!l.json || cJSON_IsObject(l.json) || cJSON_IsArray(l.json));
		FUZZ_ASSERT(l.content ? strlen(l.content) == l.len : l.len == 0);
		if (l.error)
			FUZZ_ASSERT(!l.content && !l.finish_reason && !l.end);
	}
	wire_line_free(&l);
	FUZZ_ASSERT(l.json == NULL);
	wire_line_free(&l);
	free(copy);
	return 0;
}

struct names {
	size_t count;
};

static void count_name(void *ctx, const char *name)
{
	struct names *c = ctx;

	FUZZ_ASSERT(name != NULL);
	(void)strlen(name);
	c->count++;
}

static void check_models(const struct wire *w, const char *body, size_t n)
{
	struct names c = {0};
	int rc = w->models(body, n, count_name, &c);

	FUZZ_ASSERT(rc == 0 || rc == -1);
	FUZZ_ASSERT(rc == 0 || c.count == 0);
	FUZZ_ASSERT(c.count <= n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data;
	struct ndjson nd;
	int rc;

	ndjson_init(&nd, LINE_MAX_BYTES);
	rc = ndjson_feed(&nd, p, size, on_line, NULL);
	FUZZ_ASSERT(rc == 0 || rc == -2);
	if (rc == 0 && ndjson_pending(&nd) > 0)
		FUZZ_ASSERT(ndjson_feed(&nd, "\n", 1, on_line, NULL) == 0);
	ndjson_free(&nd);

	check_models(&wire_openai, p, size);
	check_models(&wire_ollama, p, size);
	return 0;
}
