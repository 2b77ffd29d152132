/*
 * fuzz_sse — libFuzzer target for buf_json_escape(), the escaping that
 * keeps a model's text from breaking SSE framing.
 *
 * Invariants, for any bytes:
 *   - what is appended contains no byte below 0x20 (so no '\n' or '\r'
 *     can end an SSE line or event early) and no unescaped '"' or '\\';
 *   - it appends after what the buffer held, and unescaping it (JSON
 *     string rules) gives back the input byte for byte;
 *   - with a smaller buffer cap it fails cleanly (-1) exactly when the
 *     result would not fit, and otherwise produces the same bytes;
 * and when the input is valid UTF-8 without NUL (utf8_valid), cJSON parses
 * '"' + output + '"' back to a string equal to the input.
 *
 * Input: the text itself; its first byte also scales the smaller cap.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "buf.h"
#include "request.h"
#include "sse.h"

#define FUZZ_ASSERT(cond)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_sse: invariant failed at %s:%d: %s\n", __FILE__,     \
				__LINE__, #cond);                                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#define PREFIX "data: {\"type\": \"chunk\", \"content\": \""

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Undo JSON string escaping byte-wise (\u00XX only: the escaper never needs
 * more).  Returns the decoded length; aborts on anything not JSON. */
static size_t unescape(const unsigned char *s, size_t n, unsigned char *out)
{
	size_t i, o = 0;

	for (i = 0; i < n; i++) {
		unsigned char c = s[i];

		FUZZ_ASSERT(c >= 0x20 && c != '"');
		if (c != '\\') {
			out[o++] = c;
			continue;
		}
		FUZZ_ASSERT(i + 1 < n);
		switch (s[++i]) {
		case '"': out[o++] = '"'; break;
		case '\\': out[o++] = '\\'; break;
		case '/': out[o++] = '/'; break;
		case 'n': out[o++] = '\n'; break;
		case 'r': out[o++] = '\r'; break;
		case 't': out[o++] = '\t'; break;
		case 'b': out[o++] = '\b'; break;
		case 'f': out[o++] = '\f'; break;
		case 'u':
			FUZZ_ASSERT(i + 4 < n);
			FUZZ_ASSERT(s[i + 1] == '0' && s[i + 2] == '0');
			FUZZ_ASSERT(hexval(s[i + 3]) >= 0 && hexval(s[i + 4]) >= 0);
			out[o++] = (unsigned char)(hexval(s[i + 3]) * 16 + hexval(s[i + 4]));
			i += 4;
			break;
		default: FUZZ_ASSERT(!"invalid escape");
		}
	}
	return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const size_t plen = sizeof PREFIX - 1;
	const char *text = (const char *)data;
	struct buf out, small;
	unsigned char *back;
	size_t esclen, cap;
	int rc;

	/* The buffer sse_chunk() uses, already holding an event's start. */
	buf_init(&out, 16u << 20);
	FUZZ_ASSERT(buf_puts(&out, PREFIX) == BUF_OK);
	FUZZ_ASSERT(buf_json_escape(&out, text, size) == 0);
	FUZZ_ASSERT(out.len >= plen && memcmp(out.data, PREFIX, plen) == 0);
	esclen = out.len - plen;
	FUZZ_ASSERT(esclen >= size && esclen <= 6 * size);

	back = malloc(size + 1);
	FUZZ_ASSERT(back);
	FUZZ_ASSERT(unescape((const unsigned char *)out.data + plen, esclen, back) == size);
	FUZZ_ASSERT(size == 0 || memcmp(back, data, size) == 0);
	free(back);

	if (utf8_valid(text, size)) {
		struct buf quoted;
		cJSON *s;

		buf_init(&quoted, 16u << 20);
		FUZZ_ASSERT(buf_putc(&quoted, '"') == BUF_OK &&
			    buf_append(&quoted, out.data + plen, esclen) == BUF_OK &&
			    buf_putc(&quoted, '"') == BUF_OK);
		s = cJSON_ParseWithLength(quoted.data, quoted.len);
		FUZZ_ASSERT(cJSON_IsString(s));
		FUZZ_ASSERT(strlen(s->valuestring) == size);
		FUZZ_ASSERT(memcmp(s->valuestring, text, size) == 0);
		cJSON_Delete(s);
		buf_free(&quoted);
	}

	/* A cap somewhere up to the full size: fail exactly when it does not
	 * fit, never write past it. */
	cap = size ? esclen * data[0] / 255 : 0;
	buf_init(&small, cap);
	rc = buf_json_escape(&small, text, size);
	FUZZ_ASSERT(rc == (esclen <= cap ? 0 : -1));
	FUZZ_ASSERT(small.len <= cap);
	if (rc == 0)
		FUZZ_ASSERT(small.len == esclen &&
			    (esclen == 0 || memcmp(small.data, out.data + plen, esclen) == 0));
	buf_free(&small);
	buf_free(&out);
	return 0;
}
