/* Unit tests: query strings, percent-decoding, UTF-8, NDJSON splitting
 * and SSE JSON escaping — the byte-level parsers. */
#include <stdlib.h>

#include "check.h"
#include "fcgi_wire.h"
#include "history.h"
#include "ndjson.h"
#include "request.h"
#include "sse.h"
#include "upstream.h"

static void test_url_decode(void)
{
	static const struct {
		const char *in;
		int rc;
		const char *out;
	} cases[] = {
		{"hello", 0, "hello"},
		{"a+b", 0, "a b"},
		{"a%20b", 0, "a b"},
		{"Ol%C3%A1", 0, "Olá"},
		{"%e2%82%ac", 0, "€"},
		{"%", -1, NULL},
		{"%2", -1, NULL},
		{"%zz", -1, NULL},
		{"%00", -1, NULL},	    /* NUL */
		{"%C3", -1, NULL},	    /* truncated UTF-8 */
		{"%C0%AF", -1, NULL},	    /* overlong */
		{"%ED%A0%80", -1, NULL},    /* surrogate */
		{"%F4%90%80%80", -1, NULL}, /* past U+10FFFF */
		{"", 0, ""},
	};
	struct buf b;
	size_t i;

	buf_init(&b, 1024);
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int rc = url_decode(cases[i].in, strlen(cases[i].in), &b);
		CHECK(rc == cases[i].rc);
		if (rc == 0)
			CHECK_STR(buf_str(&b), cases[i].out);
	}
	buf_free(&b);
}

static void test_form_lookup(void)
{
	struct buf b;

	buf_init(&b, 64);
	CHECK(form_lookup("message=hi&conversation_id=c1", "conversation_id", &b) == 1);
	CHECK_STR(buf_str(&b), "c1");
	CHECK(form_lookup("message=hi", "conversation_id", &b) == 0);
	CHECK(form_lookup("xmessage=no&message=yes", "message", &b) == 1);
	CHECK_STR(buf_str(&b), "yes");
	CHECK(form_lookup("message=a&message=b", "message", &b) == -1); /* twice */
	CHECK(form_lookup("conversation%5Fid=c2", "conversation_id", &b) == 1);
	CHECK_STR(buf_str(&b), "c2");
	CHECK(form_lookup("message", "message", &b) == 1);
	CHECK_STR(buf_str(&b), "");
	CHECK(form_lookup("message=%G1", "message", &b) == -1);
	CHECK(form_lookup("&&&message=a&&", "message", &b) == 1);
	CHECK_STR(buf_str(&b), "a");
	CHECK(form_lookup("", "message", &b) == 0);
	/* Over the buffer's cap: an error, never a truncation. */
	{
		char big[200];
		memset(big, 'x', sizeof big - 1);
		big[sizeof big - 1] = '\0';
		memcpy(big, "message=", 8);
		CHECK(form_lookup(big, "message", &b) == -1);
	}
	buf_free(&b);
}

struct lines {
	char got[16][64];
	int n;
	int stop_after;
};

static int collect(void *ctx, const char *line, size_t n)
{
	struct lines *l = ctx;

	if (l->n < 16 && n < 64) {
		memcpy(l->got[l->n], line, n);
		l->got[l->n][n] = '\0';
	}
	l->n++;
	return l->stop_after && l->n >= l->stop_after ? -1 : 0;
}

static void test_ndjson(void)
{
	struct ndjson nd;
	struct lines l = {.n = 0};
	const char *stream = "{\"a\":1}\n{\"b\":\"Ol\xc3\xa1\"}\r\n\n{\"c\":3}\n";
	size_t i, len = strlen(stream);

	/* Every split point gives the same lines. */
	for (i = 0; i <= len; i++) {
		memset(&l, 0, sizeof l);
		ndjson_init(&nd, 64);
		CHECK(ndjson_feed(&nd, stream, i, collect, &l) == 0);
		CHECK(ndjson_feed(&nd, stream + i, len - i, collect, &l) == 0);
		CHECK(l.n == 3);
		CHECK_STR(l.got[1], "{\"b\":\"Ol\xc3\xa1\"}");
		CHECK(ndjson_pending(&nd) == 0);
		ndjson_free(&nd);
	}
	/* Byte by byte. */
	memset(&l, 0, sizeof l);
	ndjson_init(&nd, 64);
	for (i = 0; i < len; i++)
		CHECK(ndjson_feed(&nd, stream + i, 1, collect, &l) == 0);
	CHECK(l.n == 3);
	CHECK_STR(l.got[2], "{\"c\":3}");
	ndjson_free(&nd);
	/* A line over the maximum is an error, in one read or across reads. */
	ndjson_init(&nd, 4);
	CHECK(ndjson_feed(&nd, "123456\n", 7, collect, &l) == -2);
	ndjson_reset(&nd);
	CHECK(ndjson_feed(&nd, "123", 3, collect, &l) == 0);
	CHECK(ndjson_feed(&nd, "456", 3, collect, &l) == -2);
	ndjson_free(&nd);
	/* The callback can stop the feed. */
	memset(&l, 0, sizeof l);
	l.stop_after = 1;
	ndjson_init(&nd, 64);
	CHECK(ndjson_feed(&nd, "a\nb\nc\n", 6, collect, &l) == -1);
	CHECK(l.n == 1);
	ndjson_free(&nd);
	/* An unterminated last line stays pending. */
	ndjson_init(&nd, 64);
	memset(&l, 0, sizeof l);
	CHECK(ndjson_feed(&nd, "a\nbc", 4, collect, &l) == 0);
	CHECK(l.n == 1 && ndjson_pending(&nd) == 2);
	ndjson_free(&nd);
}

static void test_json_escape(void)
{
	static const struct {
		const char *in;
		const char *out;
	} cases[] = {
		{"plain", "plain"},
		{"Ol\xc3\xa1 \xf0\x9f\x8e\x89", "Ol\xc3\xa1 \xf0\x9f\x8e\x89"},
		{"a\"b", "a\\\"b"},
		{"back\\slash", "back\\\\slash"},
		{"new\nline\r\ttab", "new\\nline\\r\\ttab"},
		{"\x01\x1f", "\\u0001\\u001f"},
		{"\n\n", "\\n\\n"}, /* can never end an SSE event */
	};
	struct buf b;
	size_t i;

	buf_init(&b, 1024);
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		buf_reset(&b);
		CHECK(buf_json_escape(&b, cases[i].in, strlen(cases[i].in)) == 0);
		CHECK_STR(buf_str(&b), cases[i].out);
		CHECK(strchr(buf_str(&b), '\n') == NULL);
	}
	buf_free(&b);
}

/* Walk FastCGI records: every one a version-1 FCGI_STDOUT of request 7
 * with no padding; their contents joined must be the original text. */
static int unframe(const struct buf *b, struct buf *content)
{
	size_t at = 0;

	while (at + FCGI_WIRE_HEADER <= b->len) {
		const unsigned char *h = (const unsigned char *)b->data + at;
		size_t n = (size_t)h[4] << 8 | h[5];

		if (h[0] != 1 || h[1] != 6 || h[2] != 0 || h[3] != 7 || h[6] != 0 ||
		    at + FCGI_WIRE_HEADER + n > b->len || n == 0)
			return -1;
		if (buf_append(content, b->data + at + FCGI_WIRE_HEADER, n) != BUF_OK)
			return -1;
		at += FCGI_WIRE_HEADER + n;
	}
	return at == b->len ? 0 : -1;
}

static void test_fcgi_wire(void)
{
	static const size_t sizes[] = {1, 5, 65535, 65536, 65537, 200000, 3 * 65535};
	struct buf b, content;
	size_t i, j;

	for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		long at;

		buf_init(&b, 1u << 20);
		buf_init(&content, 1u << 20);
		CHECK(buf_puts(&b, "") == BUF_OK); /* records may follow other bytes: none here */
		at = fcgi_wire_stdout_begin(&b);
		CHECK(at == 0);
		for (j = 0; j < sizes[i] && buf_putc(&b, (char)('a' + j % 26)) == BUF_OK; j++)
			;
		CHECK(j == sizes[i]);
		CHECK(fcgi_wire_stdout_end(&b, at, 7) == 0);
		CHECK(b.len == sizes[i] + FCGI_WIRE_HEADER * ((sizes[i] + 65534) / 65535));
		CHECK(unframe(&b, &content) == 0);
		CHECK(content.len == sizes[i]);
		for (j = 0; j < content.len && content.data[j] == (char)('a' + j % 26); j++)
			;
		CHECK(j == sizes[i]);
		buf_free(&b);
		buf_free(&content);
	}
	/* The end: empty FCGI_STDOUT, then FCGI_END_REQUEST (status 0, complete). */
	buf_init(&b, 64);
	CHECK(fcgi_wire_end(&b, 0x1234) == 0);
	CHECK(b.len == 24);
	CHECK(memcmp(b.data, "\x01\x06\x12\x34\x00\x00\x00\x00", 8) == 0);
	CHECK(memcmp(b.data + 8, "\x01\x03\x12\x34\x00\x08\x00\x00", 8) == 0);
	CHECK(memcmp(b.data + 16, "\0\0\0\0\0\0\0\0", 8) == 0);
	/* A full buffer fails cleanly. */
	buf_free(&b);
	buf_init(&b, 4);
	CHECK(fcgi_wire_stdout_begin(&b) == -1);
	buf_free(&b);
}

static void test_sse_events(void)
{
	struct upstream_result res;
	struct buf b;

	buf_init(&b, 4096);
	CHECK(sse_chunk(&b, 42, 7, "Ol\xc3\xa1\n\"x\"", 8) == 0);
	CHECK_STR(buf_str(&b), "id: 42:7\ndata: {\"type\": \"chunk\", \"content\": "
			       "\"Ol\xc3\xa1\\n\\\"x\\\"\"}\n\n");
	buf_reset(&b);
	CHECK(sse_chunk(&b, 0, 1000000, "", 0) == 0);
	CHECK_STR(buf_str(&b), "id: 0:1000000\ndata: {\"type\": \"chunk\", \"content\": \"\"}\n\n");
	buf_reset(&b);
	memset(&res, 0, sizeof res);
	res.completion_tokens = 5;
	res.prompt_tokens = -1;
	CHECK(sse_done(&b, 42, 8, "default", NULL, &res, 0) == 0);
	CHECK_STR(buf_str(&b), "id: 42:8\nevent: done\ndata: {\"finished\": true, "
			       "\"conversation_id\": \"default\", \"message_id\": 42, "
			       "\"status\": \"done\", \"usage\": {\"completion_tokens\": 5}}\n\n");
	buf_reset(&b);
	res.prompt_tokens = 3;
	snprintf(res.finish_reason, sizeof res.finish_reason, "length");
	CHECK(sse_done(&b, 42, 8, "c", "qwen\"2", &res, 1) == 0);
	CHECK_STR(buf_str(&b),
		  "id: 42:8\nevent: done\ndata: {\"finished\": true, "
		  "\"conversation_id\": \"c\", \"message_id\": 42, "
		  "\"status\": \"stopped\", \"stopped\": true, \"model\": \"qwen\\\"2\", "
		  "\"usage\": {\"prompt_tokens\": 3, \"completion_tokens\": 5}, "
		  "\"finish_reason\": \"length\"}\n\n");
	res.prompt_tokens = -1;
	buf_reset(&b);
	CHECK(sse_error(&b, 42, 1, "model \"x\" not found\n") == 0);
	CHECK_STR(buf_str(&b), "id: 42:1\nevent: error\ndata: {\"type\": \"error\", "
			       "\"message\": \"model \\\"x\\\" not found\\n\"}\n\n");
	/* Past the cap: -1, never a truncated event passed on as whole. */
	buf_free(&b);
	buf_init(&b, 16);
	CHECK(sse_chunk(&b, 42, 7, "0123456789", 10) == -1);
	buf_free(&b);
}

static void test_utf8(void)
{
	/* input, what utf8_sanitize() makes of it (Python's
	 * bytes.decode("utf-8", "replace"), NUL as U+FFFD too) */
	static const struct {
		const char *in;
		size_t n;
		const char *out;
	} fix[] = {
		{"abc", 3, "abc"},
		{"\xe2\x82\xac", 3, "\xe2\x82\xac"},
		{"\xff", 1, "\xef\xbf\xbd"},
		{"a\0b", 3,
		 "a\xef\xbf\xbd"
		 "b"},
		{"\xe2\x82"
		 "A",
		 3,
		 "\xef\xbf\xbd"
		 "A"},					     /* one U+FFFD per maximal subpart */
		{"\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd"}, /* overlong */
		{"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate */
		{"\xf0\x9f\x8e", 3, "\xef\xbf\xbd"},			     /* cut at the end */
		{"\xf4\x90\x80\x80", 4,
		 "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* past U+10FFFF */
	};
	struct buf b;
	char small[8];
	size_t i;

	CHECK(utf8_valid("", 0));
	CHECK(utf8_valid("abc", 3));
	CHECK(utf8_valid("\xe2\x82\xac", 3));
	CHECK(!utf8_valid("\xff", 1));
	CHECK(!utf8_valid("a\0b", 3));
	CHECK(!utf8_valid("\xe2\x82", 2));
	buf_init(&b, 64);
	for (i = 0; i < sizeof fix / sizeof fix[0]; i++) {
		buf_reset(&b);
		CHECK(utf8_sanitize(&b, fix[i].in, fix[i].n) == 0);
		CHECK_STR(buf_str(&b), fix[i].out);
		CHECK(utf8_valid(b.data, b.len));
	}
	buf_free(&b);
	CHECK(utf8_incomplete_tail("ab\xf0\x9f\x8e", 5) == 3);
	CHECK(utf8_incomplete_tail("ab\xe2", 3) == 1);
	CHECK(utf8_incomplete_tail("ab\xe2\x82\xac", 5) == 0); /* whole */
	CHECK(utf8_incomplete_tail("ab\xed\xa0", 4) == 0);     /* invalid, not cut */
	CHECK(utf8_incomplete_tail("ab\x80", 3) == 0);
	/* Cut to fit between characters, never inside one. */
	utf8_copy(small, sizeof small, "abc\xe2\x82\xac\xe2\x82\xac");
	CHECK_STR(small, "abc\xe2\x82\xac");
	utf8_copy(small, sizeof small, "a\xffz");
	CHECK_STR(small, "a\xef\xbf\xbdz");
}

static void test_utf8_trim_and_prefix(void)
{
	/* input, what Python's str.strip() leaves of it */
	static const struct {
		const char *in, *out;
	} trim[] = {
		{"", ""},
		{"abc", "abc"},
		{" \t\n\r\v\fabc \x1c\x1f", "abc"},
		{"\xc2\xa0\xc2\x85 a b \xe3\x80\x80", "a b"},	/* NBSP, NEL, ideographic */
		{"\xe2\x80\xa8\xe2\x80\x83x\xe2\x80\xaf", "x"}, /* U+2028, U+2003, U+202F */
		{"\xe2\x80\x8bx\xe2\x80\x8b", "\xe2\x80\x8bx\xe2\x80\x8b"}, /* U+200B is not */
		{" \xc3\xa9 ", "\xc3\xa9"},
		{"   ", ""},
	};
	const char *s, *mixed = "a\xe2\x82\xac\xf0\x9f\x8e\x89\xc3\xa9"; /* 1, 3, 4, 2 bytes */
	size_t i, n;

	for (i = 0; i < sizeof trim / sizeof trim[0]; i++) {
		s = trim[i].in;
		n = utf8_trim(&s, strlen(s));
		CHECK(n == strlen(trim[i].out) && memcmp(s, trim[i].out, n) == 0);
	}
	/* Characters, not bytes; never inside one. */
	CHECK(utf8_prefix(mixed, 10, 0) == 0);
	CHECK(utf8_prefix(mixed, 10, 1) == 1);
	CHECK(utf8_prefix(mixed, 10, 2) == 4);
	CHECK(utf8_prefix(mixed, 10, 3) == 8);
	CHECK(utf8_prefix(mixed, 10, 4) == 10);
	CHECK(utf8_prefix(mixed, 10, 80) == 10);
	CHECK(utf8_prefix("", 0, 80) == 0);
}

static void test_buf(void)
{
	struct buf b;

	buf_init(&b, 8);
	CHECK(buf_puts(&b, "12345678") == BUF_OK);
	CHECK(buf_putc(&b, '9') == BUF_TOOBIG);
	CHECK(b.len == 8);
	CHECK(buf_printf(&b, "%d", 1) == BUF_TOOBIG);
	buf_consume(&b, 3);
	CHECK_STR(buf_str(&b), "45678");
	/* Sticky: after a failure nothing more is appended, even what fits,
	 * so no text is used with a piece missing from its middle. */
	CHECK(buf_puts(&b, "x") == BUF_TOOBIG);
	CHECK(buf_json_escape(&b, "y", 1) < 0);
	CHECK(buf_error(&b) == BUF_TOOBIG);
	CHECK_STR(buf_str(&b), "45678");
	buf_reset(&b);
	CHECK(buf_error(&b) == BUF_OK);
	CHECK(buf_puts(&b, "x") == BUF_OK);
	buf_free(&b);
	CHECK_STR(buf_str(&b), "");
}

static void test_decode_body(void)
{
	static const struct {
		const char *type, *body;
		int status;
	} cases[] = {
		{"application/json", "{\"message\": \"hi\"}", 0},
		{"application/json; charset=utf-8", "{}\n", 0},
		{NULL, "", 0},
		{"application/json", "{\"a\": 1} x", 400}, /* trailing data */
		{"application/json", "{\"a\": 1}{\"a\": 2}", 400},
		{"application/json", "{\"a\": 1, \"a\": 2}", 400}, /* duplicate */
		{"application/json", "[1]", 400},
		{"application/json", "{\"m\": \"a\x01b\"}", 400}, /* raw control */
		{"application/json", "{\"m\": \"a\\u0000b\"}", 400},
		{"application/jsonlines", "{}", 415},
		{"text/plain", "{}", 415},
		{"application/x-www-form-urlencoded", "a=1&b=%C3%A9", 0},
		{"application/x-www-form-urlencoded", "a=1&a=2", 400},
		{"application/x-www-form-urlencoded", "a=%zz", 400},
	};
	char reason[256];
	struct buf big;
	cJSON *data;
	size_t i;

	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int status = request_decode_body(cases[i].body, strlen(cases[i].body),
						 cases[i].type, &data, reason, sizeof reason);
		CHECK(status == cases[i].status);
		CHECK((status == 0) == (data != NULL));
		cJSON_Delete(data);
	}
	/* 1 MiB of distinct form keys is refused at once, not hashed through
	 * for a minute (more than 64 fields). */
	buf_init(&big, 2u << 20);
	for (i = 0; big.len < (1u << 20) && buf_printf(&big, "%s%zx=", i ? "&" : "", i) == BUF_OK;
	     i++)
		;
	CHECK(buf_error(&big) == BUF_OK);
	CHECK(request_decode_body(big.data, big.len, "application/x-www-form-urlencoded", &data,
				  reason, sizeof reason) == 400);
	buf_free(&big);
}

/* The chunks column: lengths as LEB128, read back in order. */
static void test_chunk_lengths(void)
{
	static const size_t lens[] = {0, 1, 127, 128, 300, 16383, 16384, 4u << 20, 64u << 20};
	const unsigned char *p, *end;
	struct buf b;
	size_t i, len;

	buf_init(&b, 1024);
	for (i = 0; i < sizeof lens / sizeof lens[0]; i++)
		CHECK(history_chunk_put(&b, lens[i]) == 0);
	CHECK(b.len == 1 + 1 + 1 + 2 + 2 + 2 + 3 + 4 + 4);
	p = (const unsigned char *)b.data;
	end = p + b.len;
	for (i = 0; i < sizeof lens / sizeof lens[0]; i++) {
		CHECK(history_chunk_next(&p, end, &len) == 1);
		CHECK(len == lens[i]);
	}
	CHECK(history_chunk_next(&p, end, &len) == 0);
	/* Cut inside a number, or a number that never ends: malformed. */
	p = (const unsigned char *)"\x80";
	CHECK(history_chunk_next(&p, p + 1, &len) == -1);
	p = (const unsigned char *)"\xff\xff\xff\xff\xff\xff";
	CHECK(history_chunk_next(&p, p + 6, &len) == -1);
	buf_free(&b);
}

int main(void)
{
	test_chunk_lengths();
	test_url_decode();
	test_form_lookup();
	test_ndjson();
	test_json_escape();
	test_fcgi_wire();
	test_sse_events();
	test_utf8();
	test_utf8_trim_and_prefix();
	test_buf();
	test_decode_body();
	return check_report("test_parsing");
}
