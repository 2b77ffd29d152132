/*
 * fuzz_handoff — libFuzzer target for the FastCGI input a responder reads,
 * through the path a stream takes: a connection accepted by server.c is
 * given to libfcgi (request_accept()), the request is parsed
 * (request_begin(), the query, a POST body), and the connection is handed
 * to the relay, which from then on only drops what still comes
 * (fcgi_wire_drain() on the non-blocking socket).
 *
 * The peer stays connected throughout, as nginx does: a read that blocks
 * where it should not (the relay's, once a stream's leftover stdin froze
 * every stream of a process) shows as a libFuzzer timeout.  libfcgi's own
 * reads end at the peer timeout request_accept() sets (2 ms here: the
 * whole input is in the socket before the first read).
 *
 * Invariants: request_accept() returns (0 or -1) and, on -1, has closed
 * the connection; a parsed request has a method and a path; every query
 * value it gives is valid UTF-8 without NUL; the drain returns 0 (the
 * peer is still there) or -1, never blocks; nothing leaks.
 *
 * Not fuzzed: name-value pairs whose two lengths add up past INT_MAX.
 * Debian 12's libfcgi (2.4.2-2+deb12u1) still overflows that sum and
 * writes through a failed malloc (the rest of CVE-2025-23016, fixed
 * upstream in fcgi2 7c47639).  nginx never sends such lengths (its
 * records hold 64 KiB), and only nginx and the responders' user may
 * connect to the sockets (spawn/jarvasctl); reported, not worked around.
 *
 * Input: byte 0 picks the shape: bit 0 raw bytes as they are; otherwise
 * a BEGIN_REQUEST, the next two bytes' worth of input as PARAMS content
 * (name-value pairs as the fuzzer makes them, after a few fixed ones), an
 * empty PARAMS, the rest as STDIN (bit 1: ended by an empty STDIN, as
 * nginx does; bit 2: records padded to 8 bytes; bit 3: POST; bit 4: a
 * form body; bit 5: the peer shuts its sending side after the input).
 */
#include <fcgiapp.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"
#include "fcgi_wire.h"
#include "request.h"
#include "utf8.h"

#define FUZZ_ASSERT(cond)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_handoff: invariant failed at %s:%d: %s\n", __FILE__, \
				__LINE__, #cond);                                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static void record(struct buf *b, int type, const uint8_t *p, size_t n, int pad)
{
	size_t padding = pad ? (8 - n % 8) % 8 : 0;
	unsigned char h[8] = {1,
			      (unsigned char)type,
			      0,
			      1,
			      (unsigned char)(n >> 8),
			      (unsigned char)n,
			      (unsigned char)padding,
			      0};
	static const unsigned char zeros[8];

	FUZZ_ASSERT(buf_append(b, h, sizeof h) == BUF_OK && buf_append(b, p, n) == BUF_OK &&
		    buf_append(b, zeros, padding) == BUF_OK);
}

/* A name-value pair with one-byte lengths. */
static void pair(struct buf *b, const char *name, const char *value)
{
	size_t n = strlen(name), v = strlen(value);
	unsigned char len[2] = {(unsigned char)n, (unsigned char)v};

	FUZZ_ASSERT(buf_append(b, len, 2) == BUF_OK && buf_puts(b, name) == BUF_OK &&
		    buf_puts(b, value) == BUF_OK);
}

/* The input as a peer sends it. */
static void build(struct buf *out, const uint8_t *data, size_t size)
{
	static const uint8_t begin[8] = {0, 1, 0, 0, 0, 0, 0, 0}; /* responder, no keep-conn */
	uint8_t flags = size ? data[0] : 0;
	size_t plen, at;
	struct buf params;

	if (size == 0 || (flags & 1)) {
		FUZZ_ASSERT(buf_append(out, data + (size ? 1 : 0), size ? size - 1 : 0) == BUF_OK);
		return;
	}
	plen = size >= 3 ? (size_t)data[1] << 8 | data[2] : 0;
	at = size >= 3 ? 3 : size;
	if (plen > size - at)
		plen = size - at;
	buf_init(&params, 1u << 20);
	pair(&params, "REQUEST_METHOD", flags & 8 ? "POST" : "GET");
	pair(&params, "DOCUMENT_URI", "/api/chat/stream/");
	pair(&params, "CONTENT_TYPE", flags & 16 ? "application/x-www-form-urlencoded" : "");
	FUZZ_ASSERT(buf_append(&params, data + at, plen) == BUF_OK);
	record(out, 1, begin, sizeof begin, 0);
	for (size_t off = 0; off < params.len; off += 65535) {
		size_t n = params.len - off < 65535 ? params.len - off : 65535;

		record(out, 4, (const uint8_t *)params.data + off, n, flags & 4);
	}
	record(out, 4, NULL, 0, 0);
	at += plen;
	if (size > at)
		record(out, 5, data + at, size - at, flags & 4);
	if (flags & 2)
		record(out, 5, NULL, 0, 0);
	buf_free(&params);
}

/* Do the PARAMS records of this wire hold a pair libfcgi cannot size
 * (see the top)?  A rough walk: enough to keep its known overflow out. */
static int libfcgi_overflows(const struct buf *wire)
{
	struct buf params;
	const unsigned char *w = (const unsigned char *)wire->data, *p;
	size_t at = 0, i = 0;
	int bad = 0;

	buf_init(&params, 8u << 20);
	while (at + 8 <= wire->len) {
		size_t n = (size_t)w[at + 4] << 8 | w[at + 5], pad = w[at + 6];

		if (w[at + 1] == 4 && at + 8 + n <= wire->len &&
		    buf_append(&params, w + at + 8, n) != BUF_OK)
			break;
		at += 8 + n + pad;
	}
	p = (const unsigned char *)params.data;
	while (!bad && p && i < params.len) {
		unsigned long long len[2];

		for (int k = 0; k < 2; k++) {
			if (i >= params.len) {
				len[k] = 0;
			} else if (p[i] & 0x80) {
				len[k] = i + 3 < params.len
						 ? ((unsigned long long)(p[i] & 0x7f) << 24 |
						    (unsigned long long)p[i + 1] << 16 |
						    (unsigned long long)p[i + 2] << 8 | p[i + 3])
						 : 0;
				i += 4;
			} else {
				len[k] = p[i++];
			}
		}
		bad = len[0] + len[1] + 2 > 0x7fffffffull;
		i += (size_t)(len[0] + len[1] < params.len ? len[0] + len[1] : params.len);
	}
	buf_free(&params);
	return bad;
}

static void check_query(struct request *r, const char *name)
{
	struct buf v;
	int rc;

	buf_init(&v, 1u << 20);
	rc = request_query(r, name, &v);
	FUZZ_ASSERT(rc >= -1 && rc <= 1);
	if (rc == 1)
		FUZZ_ASSERT(utf8_valid(v.data ? v.data : "", v.len));
	buf_free(&v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	FCGX_Request fcgx;
	struct request r;
	struct buf wire;
	int sv[2], flags;
	ssize_t w;

	if (!ready) {
		/* libfcgi lingers up to 2 s for the peer to close after each
		 * request; the peer here closes only after. */
		setenv("LIBFCGI_OS_CLOSE_POLL_TIMEOUT", "0", 1);
		FUZZ_ASSERT(FCGX_Init() == 0);
		config.body_max = 1u << 20;
		config.message_max = 16384;
		ready = 1;
	}
	buf_init(&wire, 4u << 20);
	build(&wire, data, size);
	if (libfcgi_overflows(&wire)) {
		buf_free(&wire);
		return 0;
	}
	FUZZ_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	/* All of it at once: 8 KiB inputs and their framing fit the buffer. */
	w = wire.len ? write(sv[1], wire.data, wire.len) : 0;
	FUZZ_ASSERT(w == (ssize_t)wire.len);
	buf_free(&wire);
	/* Bit 5: the peer stops sending (libfcgi's reads end at once; the
	 * drain sees the end); otherwise it stays, as nginx does, and the
	 * reads past the input wait out the peer timeout. */
	if (size && (data[0] & 32))
		FUZZ_ASSERT(shutdown(sv[1], SHUT_WR) == 0);

	FUZZ_ASSERT(FCGX_InitRequest(&fcgx, -1, 0) == 0);
	if (request_accept(&fcgx, sv[0], 2) < 0) {
		FUZZ_ASSERT(fcgx.ipcFd < 0); /* libfcgi closed it */
		FCGX_Free(&fcgx, 0);
		close(sv[1]);
		return 0;
	}
	request_begin(&r, &fcgx, NULL);
	FUZZ_ASSERT(r.method && r.path && r.query);
	check_query(&r, "message");
	check_query(&r, "conversation_id");
	check_query(&r, "access_token");
	check_query(&r, "ticket");
	if (strcmp(r.method, "POST") == 0)
		(void)request_parse_body(&r); /* may answer an error: to the peer */
	/* The hand-off: the relay takes the connection. */
	flags = fcntl(fcgx.ipcFd, F_GETFL);
	FUZZ_ASSERT(flags >= 0 && fcntl(fcgx.ipcFd, F_SETFL, flags | O_NONBLOCK) == 0);
	{
		int rc = fcgi_wire_drain(fcgx.ipcFd, 1u << 20);

		FUZZ_ASSERT(rc == 0 || rc == -1);
	}
	close(fcgx.ipcFd);
	fcgx.ipcFd = -1;
	r.handed_off = 1;
	request_end(&r);
	FCGX_Finish_r(&fcgx);
	FCGX_Free(&fcgx, 0);
	close(sv[1]);
	return 0;
}
