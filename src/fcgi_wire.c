/*
 * fcgi_wire — FastCGI record framing (see fcgi_wire.h).
 */
#include "fcgi_wire.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define FCGI_VERSION_1 1
#define FCGI_END_REQUEST 3
#define FCGI_STDOUT 6
#define FCGI_REQUEST_COMPLETE 0
#define RECORD_MAX 65535

static void put_header(unsigned char *h, int type, int request_id, size_t len)
{
	h[0] = FCGI_VERSION_1;
	h[1] = (unsigned char)type;
	h[2] = (unsigned char)(request_id >> 8);
	h[3] = (unsigned char)request_id;
	h[4] = (unsigned char)(len >> 8);
	h[5] = (unsigned char)len;
	h[6] = 0; /* no padding */
	h[7] = 0;
}

long fcgi_wire_stdout_begin(struct buf *out)
{
	static const char room[FCGI_WIRE_HEADER];
	size_t at = out->len;

	return buf_append(out, room, sizeof room) == BUF_OK ? (long)at : -1;
}

int fcgi_wire_stdout_end(struct buf *out, long at, int request_id)
{
	size_t content = out->len - (size_t)at - FCGI_WIRE_HEADER;
	size_t extra, pos, left;
	char hdr[FCGI_WIRE_HEADER];

	if (content == 0) {
		out->len = (size_t)at; /* an empty FCGI_STDOUT would end the stream */
		out->data[out->len] = '\0';
		return 0;
	}
	if (content <= RECORD_MAX) {
		put_header((unsigned char *)out->data + at, FCGI_STDOUT, request_id, content);
		return 0;
	}
	/* Rare (an event over 64 KiB): a header every RECORD_MAX bytes. */
	extra = (content - 1) / RECORD_MAX * FCGI_WIRE_HEADER;
	for (size_t i = 0; i < extra; i++)
		if (buf_putc(out, 0) != BUF_OK)
			return -1;
	/* Move the content back piece by piece, last piece first. */
	pos = out->len;
	left = content;
	while (left > 0) {
		size_t piece = left % RECORD_MAX ? left % RECORD_MAX : RECORD_MAX;
		size_t src = (size_t)at + FCGI_WIRE_HEADER + left - piece;

		memmove(out->data + pos - piece, out->data + src, piece);
		pos -= piece;
		put_header((unsigned char *)hdr, FCGI_STDOUT, request_id, piece);
		memcpy(out->data + pos - FCGI_WIRE_HEADER, hdr, sizeof hdr);
		pos -= FCGI_WIRE_HEADER;
		left -= piece;
	}
	return 0;
}

int fcgi_wire_end(struct buf *out, int request_id)
{
	unsigned char rec[2 * FCGI_WIRE_HEADER + 8];

	put_header(rec, FCGI_STDOUT, request_id, 0);
	put_header(rec + FCGI_WIRE_HEADER, FCGI_END_REQUEST, request_id, 8);
	memset(rec + 2 * FCGI_WIRE_HEADER, 0, 8); /* appStatus 0, FCGI_REQUEST_COMPLETE */
	rec[2 * FCGI_WIRE_HEADER + 4] = FCGI_REQUEST_COMPLETE;
	return buf_append(out, rec, sizeof rec) == BUF_OK ? 0 : -1;
}

int fcgi_wire_drain(int fd, size_t max)
{
	char sink[16384];
	size_t drained = 0;
	ssize_t n = 0;

	while (drained < max && (n = read(fd, sink, sizeof sink)) > 0)
		drained += (size_t)n;
	return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) ? -1 : 0;
}
