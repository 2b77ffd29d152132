/*
 * fuzz_fcgi_wire — libFuzzer target for fcgi_wire.c, the FastCGI records
 * relay.c writes by hand: event bodies of any size framed into
 * FCGI_STDOUT records after whatever the buffer already held, then the
 * end of the request.
 *
 * The output is parsed back by a record parser written here from the
 * specification (FastCGI 1.0, 3.3 and 5.3-5.5), which checks:
 *   - what was in the buffer before is untouched;
 *   - every record is version 1, of the request's id, without padding;
 *     each FCGI_STDOUT before the end carries 1..65535 bytes (an empty
 *     one would end the stream early);
 *   - the contents, concatenated, are the bodies, concatenated, exactly;
 *   - the end is one empty FCGI_STDOUT and then FCGI_END_REQUEST (app
 *     status 0, FCGI_REQUEST_COMPLETE), the last bytes of the buffer;
 * and, with a buffer cap somewhere below what it all takes, that every
 * call either succeeds or returns -1 without writing past the cap.
 *
 * Input: bytes 0-1 the request id, byte 2 the length of what the buffer
 * holds first, byte 3 scales the smaller cap; then events, each as a
 * little-endian 16-bit length, a repeat count and that many bytes (cut
 * short by the end of the input), its body being those bytes repeated
 * 1 + count times (so bodies reach past a record's 65,535 bytes).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "fcgi_wire.h"

#define FUZZ_ASSERT(cond)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_fcgi_wire: invariant failed at %s:%d: %s\n",         \
				__FILE__, __LINE__, #cond);                                        \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#define BODIES_MAX (8u << 20)

/* Frame every body into out (after `before` bytes); 0, or -1 when a
 * call failed (the cap). */
static int frame(struct buf *out, const unsigned char *before, size_t nbefore,
		 const struct buf *events, int id)
{
	size_t pos = 0;

	if (buf_append(out, before, nbefore) != BUF_OK)
		return -1;
	while (pos < events->len) {
		size_t len;
		long at;

		memcpy(&len, events->data + pos, sizeof len);
		pos += sizeof len;
		at = fcgi_wire_stdout_begin(out);
		if (at < 0)
			return -1;
		FUZZ_ASSERT((size_t)at + FCGI_WIRE_HEADER == out->len);
		if (buf_append(out, events->data + pos, len) != BUF_OK ||
		    fcgi_wire_stdout_end(out, at, id) < 0)
			return -1;
		pos += len;
	}
	return fcgi_wire_end(out, id);
}

/* The parser: check the records from `from` on and return the content. */
static void parse(const struct buf *out, size_t from, int id, struct buf *content)
{
	const unsigned char *p = (const unsigned char *)out->data;
	size_t pos = from;

	for (;;) {
		size_t clen;

		FUZZ_ASSERT(pos + 8 <= out->len);
		FUZZ_ASSERT(p[pos] == 1); /* version */
		FUZZ_ASSERT(p[pos + 2] == (id >> 8 & 0xff) && p[pos + 3] == (id & 0xff)); /* id */
		FUZZ_ASSERT(p[pos + 6] == 0); /* padding */
		clen = (size_t)p[pos + 4] << 8 | p[pos + 5];
		FUZZ_ASSERT(p[pos + 1] == 6); /* FCGI_STDOUT until the end */
		FUZZ_ASSERT(pos + 8 + clen <= out->len);
		if (clen == 0)
			break;
		FUZZ_ASSERT(buf_append(content, p + pos + 8, clen) == BUF_OK);
		pos += 8 + clen;
	}
	pos += 8;
	/* FCGI_END_REQUEST: appStatus 0, protocolStatus FCGI_REQUEST_COMPLETE. */
	FUZZ_ASSERT(pos + 16 == out->len);
	FUZZ_ASSERT(p[pos] == 1 && p[pos + 1] == 3);
	FUZZ_ASSERT(p[pos + 2] == (id >> 8 & 0xff) && p[pos + 3] == (id & 0xff));
	FUZZ_ASSERT(p[pos + 4] == 0 && p[pos + 5] == 8 && p[pos + 6] == 0);
	for (int i = 0; i < 8; i++)
		FUZZ_ASSERT(p[pos + 8 + i] == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct buf events, bodies, out, content, small;
	size_t pos = 4, nbefore, cap;
	int id;

	if (size < 4)
		return 0;
	id = data[0] << 8 | data[1];
	nbefore = data[2];
	buf_init(&events, 64u << 20);
	buf_init(&bodies, BODIES_MAX);
	/* events: each body's length, then the body. */
	while (pos + 3 <= size) {
		size_t len = (size_t)data[pos] | (size_t)data[pos + 1] << 8, rep = data[pos + 2],
		       body;

		pos += 3;
		if (len > size - pos)
			len = size - pos;
		body = len * (1 + rep);
		if (bodies.len + body > BODIES_MAX)
			break;
		FUZZ_ASSERT(buf_append(&events, &body, sizeof body) == BUF_OK);
		for (size_t r = 0; r <= rep; r++) {
			FUZZ_ASSERT(buf_append(&events, data + pos, len) == BUF_OK);
			FUZZ_ASSERT(buf_append(&bodies, data + pos, len) == BUF_OK);
		}
		pos += len;
	}

	{
		unsigned char before[255];

		memset(before, 0xee, sizeof before);
		buf_init(&out, 64u << 20);
		buf_init(&content, BODIES_MAX);
		FUZZ_ASSERT(frame(&out, before, nbefore, &events, id) == 0);
		FUZZ_ASSERT(out.len >= nbefore &&
			    (nbefore == 0 || memcmp(out.data, before, nbefore) == 0));
		parse(&out, nbefore, id, &content);
		FUZZ_ASSERT(content.len == bodies.len);
		FUZZ_ASSERT(bodies.len == 0 || memcmp(content.data, bodies.data, bodies.len) == 0);

		/* A smaller cap: a clean failure, never past it. */
		cap = out.len * data[3] / 256;
		buf_init(&small, cap);
		FUZZ_ASSERT(frame(&small, before, nbefore, &events, id) == -1);
		FUZZ_ASSERT(small.len <= cap);
		buf_free(&small);
		buf_free(&out);
		buf_free(&content);
	}
	buf_free(&events);
	buf_free(&bodies);
	return 0;
}
