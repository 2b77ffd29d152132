/*
 * tests/fake_ollama.c - a fake Ollama server for jarvas' tests and benchmarks.
 *
 * Owns: one single-threaded epoll loop speaking enough HTTP/1.1 and enough of
 * Ollama's API - and of OpenAI's chat completions API (/v1/..., as llama.cpp,
 * vLLM and the hosted APIs serve it) - that a real client of either cannot
 * tell the difference, plus a
 * few /_fake/... endpoints through which tests steer it and read back what it
 * saw.  Invariant: nothing ever blocks or sleeps - every delay is a deadline
 * in one timer min-heap and epoll_wait's timeout is the nearest deadline - so
 * one process holds 10,000+ concurrent slow streams (it doubles as the
 * benchmark upstream).  All globals belong to that one thread; no locks.
 *
 * Build:  cc -O2 -g -Wall -Wextra -Werror -o tests/fake_ollama \
 *             tests/fake_ollama.c -lcjson
 *
 * CLI:    tests/fake_ollama [-l ADDR] -p PORT [-P pidfile] [-r requests.log] [-d MS]
 *                           [-k KEY] [-q]
 *   -l ADDR   listen address (default 127.0.0.1; IPv6 literals work too)
 *   -d MS     the built-in default of delay_ms (default 0): the pace of a
 *             reply whose request and /_fake/config set no delay
 *             (spawn/jarvasctl starts the development stand-in with 40)
 *   -p PORT   port (default 11434); 0 picks a free port
 *   -P FILE   write the pid to FILE (removed again on a clean exit)
 *   -r FILE   append one JSON line per finished chat request (/api/chat or
 *             /v1/chat/completions) to FILE
 *   -k KEY    /v1/ wants "Authorization: Bearer KEY": without the header 401
 *             {"error":{"message":"You didn't provide an API key...",..}},
 *             with another key 401 {"error":{"message":"Incorrect API key
 *             provided...","code":"invalid_api_key",..}} (the /api/ endpoints
 *             never check, as Ollama)
 *   -q        quiet: no per-request line on stderr
 * When ready it prints "fake_ollama listening on ADDR:PORT" on stdout (with
 * the real port when -p 0) and flushes.  SIGTERM/SIGINT exit cleanly (0).
 *
 * Endpoints (HTTP/1.1 keep-alive and pipelining, HTTP/1.0, Content-Length or
 * chunked request bodies, Expect: 100-continue; HEAD works on the GETs):
 *   GET  /                 200 "Ollama is running"
 *   GET  /api/tags         200 {"models":[{"name":"llama3.2:latest",...},
 *                          {"name":"qwen2.5:0.5b",...}]}
 *   GET  /api/version      200 {"version":"0.5.7"}
 *   POST /api/chat         Ollama's chat API, stream defaults to true:
 *        stream: 200 application/x-ndjson, chunked, one line per token
 *          {"model":M,"created_at":RFC3339,"message":{"role":"assistant",
 *           "content":TOKEN},"done":false}
 *        then {"model":M,"created_at":..,"message":{"role":"assistant",
 *          "content":""},"done":true,"done_reason":"stop","total_duration":N,
 *          "load_duration":N,"prompt_eval_count":N,"prompt_eval_duration":N,
 *          "eval_count":TOKENS,"eval_duration":N}
 *        non-stream: the same final object with the whole content.
 *        Strings are escaped as Go does (\u003c \u003e \u0026 included).
 *        Bad JSON / no model / non-bool stream: 400 {"error":"..."}; no
 *        messages: a single done line with done_reason "load" (as Ollama).
 *   GET  /v1/models        200 {"object":"list","data":[{"id":"llama3.2:latest",
 *                          "object":"model","created":N,"owned_by":"library"}]}
 *                          (the models of /api/tags)
 *   POST /v1/chat/completions  OpenAI's chat API: {"model","messages","stream",
 *        "stream_options":{"include_usage":B}}; stream defaults to false.
 *        stream: 200 text/event-stream, chunked, one event per token
 *          data: {"id":"chatcmpl-SEQ","object":"chat.completion.chunk",
 *           "created":UNIX,"model":M,"choices":[{"index":0,"delta":{
 *           "content":TOKEN},"finish_reason":null}]}<LF><LF>
 *          (the first one's delta is {"role":"assistant","content":TOKEN}),
 *          then the same with "delta":{} and "finish_reason":"stop" (or
 *          "length", see finish; with no token at all its delta is
 *          {"role":"assistant","content":""}); with include_usage every
 *          chunk so far also carries "usage":null and a last one follows:
 *          {"id":..,"object":..,"created":..,"model":M,"choices":[],
 *           "usage":{"prompt_tokens":P,"completion_tokens":N,
 *           "total_tokens":P+N}}; then data: [DONE].  P is /api/chat's
 *          prompt_eval_count, N the tokens sent (eval_count).
 *        non-stream: {"id","object":"chat.completion","created","model",
 *          "choices":[{"index":0,"message":{"role":"assistant","content":ALL},
 *          "finish_reason":"stop"}],"usage":{..}}.
 *        Content bytes and their JSON escaping are exactly /api/chat's for the
 *        same controls, so a reply reads the same through both protocols.
 *        Errors are OpenAI's object {"error":{"message":S,"type":T,"param":
 *        P|null,"code":C|null}} (T "invalid_request_error" below 500, else
 *        "server_error"), or with error_style=vllm vLLM's {"object":"error",
 *        "message":S,"type":"BadRequestError"|"NotFoundError"|
 *        "InternalServerError","param":null,"code":HTTP}.  Bad JSON / no
 *        model / non-bool stream / missing, non-array or empty messages /
 *        stream_options without "stream":true or a non-bool include_usage:
 *        400 with OpenAI's wording.  The control keys below apply the same
 *        way; their OpenAI forms are given there.
 *   POST /_fake/config     JSON object of control keys (below) merged into the
 *                          defaults; a key set to null returns to built-in.
 *                          String values are taken literally (no %-decoding).
 *                          Replies {"config":{...}}.  GET shows the config.
 *   POST /_fake/reset      built-in defaults, empty request log, zero counters
 *   GET  /_fake/requests   {"requests":[REC,...]} oldest first, the last
 *                          10,000 at most; ?since=SEQ lists only seq > SEQ
 *   GET  /_fake/stats      {"active":N,"total":N,"client_closed":N,
 *                           "connections":N}
 *   anything else          404 "404 page not found"
 * Malformed HTTP gets 400 (413 when too large, 501 for a Transfer-Encoding
 * other than chunked) and the connection is closed after the reply.  No idle
 * timeout on keep-alive connections (as Go's default).  An HTTP/1.0 client
 * gets the stream unchunked, ended by the close.  A client that shuts down
 * its sending side counts as gone (Go cancels the request then too).
 *
 * REC (also the -r line): {"seq":N,"arrived_at":MS,"api":"ollama"|"openai",
 * "body":<the request JSON
 * as an object, or the raw text as a string when it does not parse>,
 * "model":S,"message_count":N,"last_content":S,"stream":B,"status":HTTP,
 * "tokens_sent":N,"client_closed":B,"closed_at":MS|null,"finished":B,
 * "finished_at":MS|null}.  MS = milliseconds since the epoch.  client_closed
 * is true when the client went away before the fake finished sending
 * (closed_at = when the fake noticed).
 *
 * Control keys.  Per chat request (/api/chat and /v1/chat/completions
 * alike): a directive "[[fake k=v k=v ...]]"
 * anywhere in the content of the LAST message overrides /_fake/config, which
 * overrides the built-in defaults.  Bad keys or values are ignored.
 *   tokens=N          content tokens (default 8)
 *   delay_ms=N        between tokens (also before the done line; default 0)
 *   first_ms=N        after the headers, before the first token (default 0)
 *   headers_ms=N      before the response headers (default 0)
 *   text=S            reply exactly S, %-decoded (%0A newline, %22 quote,
 *                     %20 space, %XX any byte; '+' stays '+').  Tokens are
 *                     whitespace-led words (" word"), or chunk=N bytes each,
 *                     never splitting a UTF-8 sequence unless split_utf8=1.
 *                     Without text, tokens cycle through: "Olá" "!" " Tudo"
 *                     " bem" "?" " \"quoted\"" " new<LF>line" " emoji 🎉"
 *                     " tab<TAB>here" " back\slash" (one backslash).
 *   chunk=N, split_utf8=1   see text
 *   status=N          (300..599) answer HTTP N with {"error":MESSAGE}
 *                     (OpenAI: the error object, see above)
 *   message=S         %-decoded error text (defaults: "fake upstream failure",
 *                     "fake error mid-stream")
 *   error_after=K     after K tokens a line {"error":MESSAGE}, then the
 *                     chunked body ends properly (non-stream: HTTP 500).
 *                     OpenAI: the event data: {"error":{"message":MESSAGE,
 *                     "type":"server_error",..}} and the body ends (no
 *                     finish, no [DONE]); error_style=vllm: data: {"object":
 *                     "error","message":MESSAGE,"type":"BadRequestError",
 *                     "param":null,"code":400} and then data: [DONE], as
 *                     vLLM does
 *   error_style=S     openai (default) or vllm: the shape of OpenAI errors
 *   malformed_after=K after K tokens the line {"message": {"content": "broken
 *                     then the body ends.  OpenAI: an event whose data is
 *                     not JSON: data: {"id":"chatcmpl-0",..."content":"broken
 *   cut_after=K       after K tokens close the TCP connection (FIN) without
 *                     the last chunk and without done (OpenAI: no finish
 *                     chunk, no [DONE])
 *   nodone=1          end the body properly but never send done:true (OpenAI:
 *                     no finish chunk, no usage chunk, no [DONE];
 *                     non-stream "finish_reason":null)
 *   finish=R          stop (default) or length: Ollama's done_reason, OpenAI's
 *                     finish_reason
 *   no_end=1          OpenAI: the finish chunk (and the usage chunk) but no
 *                     data: [DONE] after them, as some servers end; with
 *                     linger=1 the body then stays open
 *   comments=1        OpenAI: a ": keep-alive" comment (and blank line) as its
 *                     own chunk before every event, as proxies send
 *   hang=1, hang_after=K   send headers and K tokens (default 0), then
 *                     nothing, until the client closes
 *   linger=1          after the done line (OpenAI: after data: [DONE]), keep
 *                     the body open (no last chunk) until the client closes
 *   model_missing=1   404 {"error":"model \"M\" not found, try pulling it first"}
 *                     (OpenAI: 404 "The model `M` does not exist or you do not
 *                     have access to it.", code "model_not_found")
 *   garbage=1         200 with `tokens` lines of non-JSON binary bytes (OpenAI
 *                     too, raw: neither SSE nor JSON)
 *   long_line=N       the reply is one content token of N bytes (a-z cycle)
 * The K-controls fire at the moment token K+1 would be due.  -1 disables
 * (useful to override a /_fake/config default).  Flags take 1/0/true/false;
 * finish and error_style take their names (shown by name in /_fake/config).
 * With "stream":false the same controls apply to the single reply: delays
 * add up before it, error_after gives HTTP 500 {"error":..}, malformed_after
 * and garbage give a 200 with that body, nodone gives "done":false, cut_after
 * closes without a reply, hang never replies (OpenAI the same, each in its
 * own shape; comments and error_style=vllm's [DONE] are stream-only).
 *
 * Under overload tokens that are already due go out together (a stream
 * catches up rather than drifting), so a saturated machine stretches the
 * gaps between writes but never loses or reorders a token.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#define HEAD_MAX (64 * 1024)		 /* request line + headers */
#define BODY_MAX (32 * 1024 * 1024)	 /* decoded request body */
#define IN_MAX (HEAD_MAX + 2 * BODY_MAX) /* bytes on the wire */
#define IN_BUSY_MAX (64 * 1024)		 /* read-ahead while responding */
#define OUT_HIGH (256 * 1024)		 /* stop producing above this */
#define BUF_KEEP (64 * 1024)		 /* free idle buffers above this */
#define BUF_MAX ((size_t)512 * 1024 * 1024)
#define LOG_CAP 10000
#define LONG_LINE_MAX (64L * 1024 * 1024)
#define LINGER_US (2 * 1000000ULL)
#define MAX_EVENTS 1024

/* ------------------------------------------------------------------ */
/* growable, bounded byte buffers                                      */

struct buf {
	char *p;
	size_t len, cap;
};

static int buf_reserve(struct buf *b, size_t extra)
{
	size_t need, ncap;
	char *np;

	if (extra > BUF_MAX - b->len)
		return -1;
	need = b->len + extra;
	if (need <= b->cap)
		return 0;
	ncap = b->cap ? b->cap : 512;
	while (ncap < need)
		ncap = ncap > BUF_MAX / 2 ? BUF_MAX : ncap * 2;
	np = realloc(b->p, ncap);
	if (!np)
		return -1;
	b->p = np;
	b->cap = ncap;
	return 0;
}

static int buf_add(struct buf *b, const void *p, size_t n)
{
	if (n == 0)
		return 0;
	if (buf_reserve(b, n) < 0)
		return -1;
	memcpy(b->p + b->len, p, n);
	b->len += n;
	return 0;
}

static int buf_adds(struct buf *b, const char *s)
{
	return buf_add(b, s, strlen(s));
}

static int buf_addf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int buf_addf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || buf_reserve(b, (size_t)n + 1) < 0)
		return -1;
	va_start(ap, fmt);
	n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= b->cap - b->len)
		return -1;
	b->len += (size_t)n;
	return 0;
}

static void buf_free(struct buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

/* 1 for bytes copied verbatim into a JSON string (Go's encoder escapes
 * control characters, quote, backslash, <, > and &; 0xE2 may start U+2028
 * or U+2029, which Go escapes as well). */
static unsigned char json_plain[256];

static void json_plain_init(void)
{
	int i;

	for (i = 0; i < 256; i++)
		json_plain[i] = i >= 0x20;
	json_plain['"'] = json_plain['\\'] = 0;
	json_plain['<'] = json_plain['>'] = json_plain['&'] = 0;
	json_plain[0xE2] = 0;
}

/* Appends s[0..n) as a quoted JSON string, escaped as Go would. */
static int buf_add_jstr(struct buf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, run;
	char esc[8];

	if (buf_reserve(b, n + 2) < 0 || buf_add(b, "\"", 1) < 0)
		return -1;
	while (i < n) {
		run = i;
		while (run < n && json_plain[u[run]])
			run++;
		if (run > i) {
			if (buf_add(b, s + i, run - i) < 0)
				return -1;
			i = run;
			continue;
		}
		switch (u[i]) {
		case '"': memcpy(esc, "\\\"", 2); break;
		case '\\': memcpy(esc, "\\\\", 2); break;
		case '\n': memcpy(esc, "\\n", 2); break;
		case '\r': memcpy(esc, "\\r", 2); break;
		case '\t': memcpy(esc, "\\t", 2); break;
		case 0xE2:
			if (i + 2 < n && u[i + 1] == 0x80 &&
			    (u[i + 2] == 0xA8 || u[i + 2] == 0xA9)) {
				if (buf_adds(b, u[i + 2] == 0xA8 ? "\\u2028" : "\\u2029") < 0)
					return -1;
				i += 3;
			} else {
				if (buf_add(b, s + i, 1) < 0)
					return -1;
				i++;
			}
			continue;
		default:
			memcpy(esc, "\\u00", 4);
			esc[4] = hex[u[i] >> 4];
			esc[5] = hex[u[i] & 15];
			if (buf_add(b, esc, 6) < 0)
				return -1;
			i++;
			continue;
		}
		if (buf_add(b, esc, 2) < 0)
			return -1;
		i++;
	}
	return buf_add(b, "\"", 1);
}

/* ------------------------------------------------------------------ */
/* clocks                                                              */

static uint64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "2024-08-07T03:57:33.036588812Z" (RFC 3339, as Ollama's created_at) */
static int buf_add_created(struct buf *b)
{
	static time_t cached_sec = (time_t)-1;
	static char base[32];
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	if (ts.tv_sec != cached_sec) {
		if (!gmtime_r(&ts.tv_sec, &tm) ||
		    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
			return -1;
		cached_sec = ts.tv_sec;
	}
	{
		char frac[11];
		long ns = (long)ts.tv_nsec;
		int i;

		frac[0] = '.';
		for (i = 9; i >= 1; i--) {
			frac[i] = (char)('0' + ns % 10);
			ns /= 10;
		}
		frac[10] = 'Z';
		if (buf_add(b, base, 19) < 0)
			return -1;
		return buf_add(b, frac, sizeof(frac));
	}
}

/* "Mon, 02 Jan 2006 15:04:05 GMT" for the Date header, cached per second */
static const char *http_date(void)
{
	static time_t cached_sec = (time_t)-1;
	static char date[64];
	time_t now = time(NULL);
	struct tm tm;

	if (now != cached_sec) {
		if (!gmtime_r(&now, &tm) ||
		    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm) == 0)
			return "Thu, 01 Jan 1970 00:00:00 GMT";
		cached_sec = now;
	}
	return date;
}

/* ------------------------------------------------------------------ */
/* controls                                                            */

struct ctl {
	long tokens, delay_ms, first_ms, headers_ms, chunk, split_utf8, status;
	long error_after, malformed_after, cut_after, nodone, hang, hang_after, linger;
	long model_missing, garbage, long_line, no_end;
	long finish, error_style, comments; /* finish: FIN_*, error_style: ES_* */
	char *text;			    /* NULL: not set; owned */
	size_t text_len;
	char *message; /* NULL: not set; owned */
	size_t message_len;
};

/* Not const: -d sets the built-in default of delay_ms before the loop
 * starts; read-only afterwards. */
static struct ctl_num {
	const char *name;
	size_t off;
	long min, max, def;
	int flag;
} ctl_nums[] = {
	{"tokens", offsetof(struct ctl, tokens), 0, 10000000, 8, 0},
	{"delay_ms", offsetof(struct ctl, delay_ms), 0, 86400000, 0, 0},
	{"first_ms", offsetof(struct ctl, first_ms), 0, 86400000, 0, 0},
	{"headers_ms", offsetof(struct ctl, headers_ms), 0, 86400000, 0, 0},
	{"chunk", offsetof(struct ctl, chunk), 0, BODY_MAX, 0, 0},
	{"split_utf8", offsetof(struct ctl, split_utf8), 0, 1, 0, 1},
	{"status", offsetof(struct ctl, status), 0, 599, 0, 0},
	{"error_after", offsetof(struct ctl, error_after), -1, 10000000, -1, 0},
	{"malformed_after", offsetof(struct ctl, malformed_after), -1, 10000000, -1, 0},
	{"cut_after", offsetof(struct ctl, cut_after), -1, 10000000, -1, 0},
	{"nodone", offsetof(struct ctl, nodone), 0, 1, 0, 1},
	{"hang", offsetof(struct ctl, hang), 0, 1, 0, 1},
	{"hang_after", offsetof(struct ctl, hang_after), 0, 10000000, 0, 0},
	{"linger", offsetof(struct ctl, linger), 0, 1, 0, 1},
	{"model_missing", offsetof(struct ctl, model_missing), 0, 1, 0, 1},
	{"garbage", offsetof(struct ctl, garbage), 0, 1, 0, 1},
	{"long_line", offsetof(struct ctl, long_line), 0, LONG_LINE_MAX, 0, 0},
	{"finish", offsetof(struct ctl, finish), 0, 1, 0, 0},
	{"error_style", offsetof(struct ctl, error_style), 0, 1, 0, 0},
	{"comments", offsetof(struct ctl, comments), 0, 1, 0, 1},
	{"no_end", offsetof(struct ctl, no_end), 0, 1, 0, 1},
};
#define CTL_NNUM (sizeof(ctl_nums) / sizeof(ctl_nums[0]))

enum { FIN_STOP, FIN_LENGTH };
enum { ES_OPENAI, ES_VLLM };

static long *ctl_field(struct ctl *c, const struct ctl_num *d)
{
	return (long *)(void *)((char *)c + d->off);
}

/* The keys whose values are names (index = value), else NULL. */
static const char *const *ctl_names(const struct ctl_num *d)
{
	static const char *const finish[] = {"stop", "length", NULL};
	static const char *const style[] = {"openai", "vllm", NULL};

	if (strcmp(d->name, "finish") == 0)
		return finish;
	if (strcmp(d->name, "error_style") == 0)
		return style;
	return NULL;
}

/* A named value of d: 0 and *out set, or -1. */
static int ctl_name_value(const struct ctl_num *d, const char *s, size_t n, long *out)
{
	const char *const *names = ctl_names(d);
	long i;

	for (i = 0; names && names[i]; i++)
		if (strlen(names[i]) == n && strncasecmp(s, names[i], n) == 0) {
			*out = i;
			return 0;
		}
	return -1;
}

static void ctl_free(struct ctl *c)
{
	free(c->text);
	free(c->message);
	c->text = c->message = NULL;
	c->text_len = c->message_len = 0;
}

static void ctl_defaults(struct ctl *c)
{
	size_t i;

	ctl_free(c);
	for (i = 0; i < CTL_NNUM; i++)
		*ctl_field(c, &ctl_nums[i]) = ctl_nums[i].def;
}

static char *mem_dup(const char *p, size_t n)
{
	char *d = malloc(n + 1);

	if (!d)
		return NULL;
	if (n)
		memcpy(d, p, n);
	d[n] = '\0';
	return d;
}

/* Deep copy; 0 or -1 (dst left with defaults-free strings on failure). */
static int ctl_copy(struct ctl *dst, const struct ctl *src)
{
	*dst = *src;
	dst->text = dst->message = NULL;
	if (src->text && !(dst->text = mem_dup(src->text, src->text_len)))
		goto fail;
	if (src->message && !(dst->message = mem_dup(src->message, src->message_len)))
		goto fail;
	return 0;
fail:
	ctl_free(dst);
	return -1;
}

static int hexval(int ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* %XX-decodes s[0..n) into a new NUL-terminated string; bad escapes stay. */
static char *pct_decode(const char *s, size_t n, size_t *outlen)
{
	char *d = malloc(n + 1);
	size_t i, o = 0;

	if (!d)
		return NULL;
	for (i = 0; i < n; i++) {
		if (s[i] == '%' && i + 2 < n && hexval((unsigned char)s[i + 1]) >= 0 &&
		    hexval((unsigned char)s[i + 2]) >= 0) {
			d[o++] = (char)(hexval((unsigned char)s[i + 1]) * 16 +
					hexval((unsigned char)s[i + 2]));
			i += 2;
		} else {
			d[o++] = s[i];
		}
	}
	d[o] = '\0';
	*outlen = o;
	return d;
}

static int parse_long(const char *s, size_t n, long *out)
{
	size_t i = 0;
	long v = 0;
	int neg = 0;

	if (n == 0)
		return -1;
	if (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-';
		i = 1;
	}
	if (i == n || n - i > 12)
		return -1;
	for (; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	*out = neg ? -v : v;
	return 0;
}

static int parse_flag(const char *s, size_t n, long *out)
{
	static const char *const yes[] = {"true", "yes", "on"};
	static const char *const no[] = {"false", "no", "off"};
	size_t i;

	for (i = 0; i < 3; i++) {
		if (strlen(yes[i]) == n && strncasecmp(s, yes[i], n) == 0) {
			*out = 1;
			return 0;
		}
		if (strlen(no[i]) == n && strncasecmp(s, no[i], n) == 0) {
			*out = 0;
			return 0;
		}
	}
	return parse_long(s, n, out);
}

static const struct ctl_num *ctl_find(const char *key, size_t klen)
{
	size_t i;

	for (i = 0; i < CTL_NNUM; i++)
		if (strlen(ctl_nums[i].name) == klen && memcmp(ctl_nums[i].name, key, klen) == 0)
			return &ctl_nums[i];
	return NULL;
}

static int ctl_set_num(struct ctl *c, const struct ctl_num *d, long v)
{
	if (d->flag && v != 0)
		v = 1;
	if (v < d->min || v > d->max)
		return -1;
	*ctl_field(c, d) = v;
	return 0;
}

/* Sets one key from a string value; decode selects %-decoding for text and
 * message.  -1 for an unknown key or a bad value (the caller ignores it). */
static int ctl_set(struct ctl *c, const char *key, size_t klen, const char *val, size_t vlen,
		   int decode)
{
	const struct ctl_num *d;
	char **sp = NULL;
	size_t *lp = NULL, nl;
	char *ns;
	long v;

	if (klen == 4 && memcmp(key, "text", 4) == 0) {
		sp = &c->text;
		lp = &c->text_len;
	} else if (klen == 7 && memcmp(key, "message", 7) == 0) {
		sp = &c->message;
		lp = &c->message_len;
	}
	if (sp) {
		if (vlen > BODY_MAX)
			return -1;
		if (decode) {
			ns = pct_decode(val, vlen, &nl);
		} else {
			ns = mem_dup(val, vlen);
			nl = vlen;
		}
		if (!ns)
			return -1;
		free(*sp);
		*sp = ns;
		*lp = nl;
		return 0;
	}
	d = ctl_find(key, klen);
	if (!d || (ctl_name_value(d, val, vlen, &v) < 0 && parse_flag(val, vlen, &v) < 0))
		return -1;
	return ctl_set_num(c, d, v);
}

static int is_ws(int ch)
{
	return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

/* Applies every "[[fake k=v ...]]" directive found in s[0..n), in order. */
static void ctl_apply_directives(struct ctl *c, const char *s, size_t n)
{
	const char *p = s, *end = s + n, *close, *tok, *eq;

	while (p < end && (p = memmem(p, (size_t)(end - p), "[[fake", 6))) {
		p += 6;
		if (p < end && !is_ws((unsigned char)*p) && *p != ']')
			continue;
		close = memmem(p, (size_t)(end - p), "]]", 2);
		if (!close)
			break;
		while (p < close) {
			while (p < close && is_ws((unsigned char)*p))
				p++;
			tok = p;
			while (p < close && !is_ws((unsigned char)*p))
				p++;
			eq = memchr(tok, '=', (size_t)(p - tok));
			if (eq && eq > tok)
				ctl_set(c, tok, (size_t)(eq - tok), eq + 1, (size_t)(p - eq - 1),
					1);
		}
		p = close + 2;
	}
}

/* Merges a JSON object of keys into c; null restores a key's default. */
static int ctl_apply_json(struct ctl *c, const cJSON *obj)
{
	const cJSON *it;
	const struct ctl_num *d;
	double v;

	if (!cJSON_IsObject(obj))
		return -1;
	cJSON_ArrayForEach(it, obj)
	{
		const char *k = it->string;
		size_t kl;

		if (!k)
			continue;
		kl = strlen(k);
		if (cJSON_IsNull(it)) {
			if (strcmp(k, "text") == 0) {
				free(c->text);
				c->text = NULL;
				c->text_len = 0;
			} else if (strcmp(k, "message") == 0) {
				free(c->message);
				c->message = NULL;
				c->message_len = 0;
			} else if ((d = ctl_find(k, kl))) {
				*ctl_field(c, d) = d->def;
			}
		} else if (cJSON_IsString(it)) {
			ctl_set(c, k, kl, it->valuestring, strlen(it->valuestring), 0);
		} else if (cJSON_IsBool(it)) {
			if ((d = ctl_find(k, kl)))
				ctl_set_num(c, d, cJSON_IsTrue(it) ? 1 : 0);
		} else if (cJSON_IsNumber(it)) {
			v = it->valuedouble;
			if ((d = ctl_find(k, kl)) && v >= -1e12 && v <= 1e12 &&
			    v == (double)(long)v)
				ctl_set_num(c, d, (long)v);
		}
	}
	return 0;
}

static cJSON *ctl_to_json(const struct ctl *c)
{
	cJSON *o = cJSON_CreateObject();
	size_t i;

	if (!o)
		return NULL;
	for (i = 0; i < CTL_NNUM; i++) {
		long v = *ctl_field((struct ctl *)c, &ctl_nums[i]);
		const char *const *names = ctl_names(&ctl_nums[i]);

		if (names)
			cJSON_AddStringToObject(o, ctl_nums[i].name, names[v]);
		else
			cJSON_AddNumberToObject(o, ctl_nums[i].name, (double)v);
	}
	if (c->text)
		cJSON_AddStringToObject(o, "text", c->text);
	else
		cJSON_AddNullToObject(o, "text");
	if (c->message)
		cJSON_AddStringToObject(o, "message", c->message);
	else
		cJSON_AddNullToObject(o, "message");
	return o;
}

enum { API_OLLAMA, API_OPENAI };

/* ------------------------------------------------------------------ */
/* request log: a ring of the last LOG_CAP records, found by seq       */

struct rec {
	uint64_t seq;
	int64_t arrived_at, closed_at, finished_at;
	char *body; /* NUL-terminated copy of the request body */
	size_t body_len;
	char *model; /* NULL if none */
	char *last;  /* last message content, NULL if none */
	long message_count, tokens_sent;
	int status, stream, client_closed, finished, api;
};

static struct rec *g_ring[LOG_CAP];
static uint64_t g_seq;		 /* last seq handed out; never reset */
static uint64_t g_first_seq = 1; /* seqs below were cleared by a reset */

static void rec_free(struct rec *r)
{
	if (!r)
		return;
	free(r->body);
	free(r->model);
	free(r->last);
	free(r);
}

static struct rec *rec_get(uint64_t seq)
{
	struct rec *r;

	if (seq == 0 || seq < g_first_seq)
		return NULL;
	r = g_ring[seq % LOG_CAP];
	return r && r->seq == seq ? r : NULL;
}

static struct rec *rec_new(const char *body, size_t len)
{
	struct rec *r = calloc(1, sizeof(*r));
	size_t idx;

	if (!r)
		return NULL;
	r->body = mem_dup(body ? body : "", body ? len : 0);
	if (!r->body) {
		free(r);
		return NULL;
	}
	r->body_len = body ? len : 0;
	r->seq = ++g_seq;
	r->arrived_at = wall_ms();
	r->closed_at = r->finished_at = -1;
	r->stream = 1;
	idx = r->seq % LOG_CAP;
	rec_free(g_ring[idx]);
	g_ring[idx] = r;
	return r;
}

static void rec_clear(void)
{
	size_t i;

	for (i = 0; i < LOG_CAP; i++) {
		rec_free(g_ring[i]);
		g_ring[i] = NULL;
	}
	g_first_seq = g_seq + 1;
}

static cJSON *rec_to_json(const struct rec *r)
{
	cJSON *o = cJSON_CreateObject(), *b = NULL;

	if (!o)
		return NULL;
	cJSON_AddNumberToObject(o, "seq", (double)r->seq);
	cJSON_AddNumberToObject(o, "arrived_at", (double)r->arrived_at);
	cJSON_AddStringToObject(o, "api", r->api == API_OPENAI ? "openai" : "ollama");
	if (r->body_len)
		b = cJSON_ParseWithLength(r->body, r->body_len);
	if (b)
		cJSON_AddItemToObject(o, "body", b);
	else
		cJSON_AddStringToObject(o, "body", r->body);
	if (r->model)
		cJSON_AddStringToObject(o, "model", r->model);
	else
		cJSON_AddNullToObject(o, "model");
	cJSON_AddNumberToObject(o, "message_count", (double)r->message_count);
	if (r->last)
		cJSON_AddStringToObject(o, "last_content", r->last);
	else
		cJSON_AddNullToObject(o, "last_content");
	cJSON_AddBoolToObject(o, "stream", r->stream);
	cJSON_AddNumberToObject(o, "status", r->status);
	cJSON_AddNumberToObject(o, "tokens_sent", (double)r->tokens_sent);
	cJSON_AddBoolToObject(o, "client_closed", r->client_closed);
	if (r->closed_at >= 0)
		cJSON_AddNumberToObject(o, "closed_at", (double)r->closed_at);
	else
		cJSON_AddNullToObject(o, "closed_at");
	cJSON_AddBoolToObject(o, "finished", r->finished);
	if (r->finished_at >= 0)
		cJSON_AddNumberToObject(o, "finished_at", (double)r->finished_at);
	else
		cJSON_AddNullToObject(o, "finished_at");
	return o;
}

/* ------------------------------------------------------------------ */
/* connections, jobs, timers                                           */

enum { PH_HEAD = 1, PH_BODY, PH_HANG, PH_DRAIN, PH_CUT };
enum { DONE_OK, DONE_PEER };
enum { M_OTHER, M_GET, M_HEAD, M_POST };
enum { CK_SIZE, CK_DATA, CK_CRLF, CK_TRAILER };

/* One /api/chat response in progress; lives inside its connection. */
struct job {
	struct ctl ctl;
	uint64_t seq;
	struct buf prefix; /* {"model":"M","created_at":" */
	char *model;
	struct buf acc; /* non-stream: the content so far */
	uint64_t due;	/* mono_us of the next step */
	uint64_t t0_ns, t_first_ns;
	long sent; /* tokens (or garbage lines) sent */
	size_t text_pos;
	long prompt_tokens;
	int phase, stream, load_only, status;
	int api, include_usage; /* API_*; OpenAI: stream_options.include_usage */
};

/* Parsed request head, kept as offsets: c->in may move when it grows. */
struct req {
	int method, http10, keepalive, expect, chunked;
	size_t head_len, path_off, path_len, query_off, query_len;
	size_t clen;
	size_t auth_off, auth_len; /* Authorization value; auth_len 0: none */
};

struct conn {
	int fd;
	uint32_t ev;
	struct buf in, out;
	size_t out_off;
	struct buf body; /* decoded chunked request body */
	struct req req;
	int have_head, continue_sent;
	int ck_state;
	size_t ck_pos, ck_left;
	int keepalive, http10, head_only, closing, lingering, has_job;
	long hidx; /* index in the timer heap, -1 if absent */
	struct job job;
	struct conn *prev, *next;
};

static int g_ep = -1, g_lfd = -1, g_sfd = -1, g_spare = -1, g_logfd = -1;
static int g_quiet, g_stop;
static char g_tag_listen, g_tag_signal;
static struct ctl g_cfg;
static struct buf g_line; /* scratch for one output line */
static struct conn *g_conns;
static long g_nconns, g_active, g_total, g_client_closed;
/* Timer min-heap; the deadline sits beside the pointer so that sifting
 * does not touch the connections it compares. */
struct hent {
	uint64_t due;
	struct conn *c;
};
static struct hent *g_heap;
static size_t g_heap_len, g_heap_cap;

static void heap_place(size_t i, struct hent e)
{
	g_heap[i] = e;
	e.c->hidx = (long)i;
}

static void heap_up(size_t i)
{
	struct hent e = g_heap[i];

	while (i && e.due < g_heap[(i - 1) / 2].due) {
		heap_place(i, g_heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	heap_place(i, e);
}

static void heap_down(size_t i)
{
	struct hent e = g_heap[i];
	size_t l, m;

	for (;;) {
		l = 2 * i + 1;
		if (l >= g_heap_len)
			break;
		m = l + 1 < g_heap_len && g_heap[l + 1].due < g_heap[l].due ? l + 1 : l;
		if (g_heap[m].due >= e.due)
			break;
		heap_place(i, g_heap[m]);
		i = m;
	}
	heap_place(i, e);
}

static int tmr_set(struct conn *c, uint64_t due)
{
	struct hent *nh;
	size_t ncap;
	uint64_t old;

	if (c->hidx >= 0) {
		old = g_heap[c->hidx].due;
		g_heap[c->hidx].due = due;
		if (due < old)
			heap_up((size_t)c->hidx);
		else if (due > old)
			heap_down((size_t)c->hidx);
		return 0;
	}
	if (g_heap_len == g_heap_cap) {
		ncap = g_heap_cap ? g_heap_cap * 2 : 1024;
		nh = realloc(g_heap, ncap * sizeof(*nh));
		if (!nh)
			return -1;
		g_heap = nh;
		g_heap_cap = ncap;
	}
	g_heap[g_heap_len].due = due;
	g_heap[g_heap_len].c = c;
	heap_up(g_heap_len++);
	return 0;
}

static void tmr_del(struct conn *c)
{
	size_t i, last;

	if (c->hidx < 0)
		return;
	i = (size_t)c->hidx;
	last = --g_heap_len;
	c->hidx = -1;
	if (i != last) {
		struct conn *moved = g_heap[last].c;

		heap_place(i, g_heap[last]);
		heap_up(i);
		heap_down((size_t)moved->hidx);
	}
}

static size_t conn_pending(const struct conn *c)
{
	return c->out.len - c->out_off;
}

static void conn_update_ev(struct conn *c)
{
	struct epoll_event e;
	uint32_t ev = EPOLLRDHUP;
	size_t limit = (c->has_job || c->closing) ? IN_BUSY_MAX : IN_MAX;

	if (c->lingering || c->in.len < limit)
		ev |= EPOLLIN;
	if (conn_pending(c))
		ev |= EPOLLOUT;
	if (ev == c->ev)
		return;
	memset(&e, 0, sizeof(e));
	e.events = ev;
	e.data.ptr = c;
	if (epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &e) == 0)
		c->ev = ev;
}

static const char *reason_phrase(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 413: return "Request Entity Too Large";
	case 429: return "Too Many Requests";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return status < 400 ? "Redirect" : status < 500 ? "Client Error" : "Server Error";
	}
}

/* Queues a complete response with a Content-Length body. */
static int conn_reply(struct conn *c, int status, const char *ctype, const char *body, size_t n)
{
	const char *conn_hdr = "";

	if (!c->keepalive)
		conn_hdr = "Connection: close\r\n";
	else if (c->http10)
		conn_hdr = "Connection: keep-alive\r\n";
	if (buf_addf(&c->out,
		     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nDate: %s\r\n"
		     "Content-Length: %zu\r\n%s\r\n",
		     status, reason_phrase(status), ctype, http_date(), n, conn_hdr) < 0)
		return -1;
	return c->head_only ? 0 : buf_add(&c->out, body, n);
}

static int conn_reply_json(struct conn *c, int status, const char *body, size_t n)
{
	return conn_reply(c, status, "application/json; charset=utf-8", body, n);
}

/* {"error":"msg"} */
static int conn_reply_error(struct conn *c, int status, const char *msg, size_t n)
{
	g_line.len = 0;
	if (buf_adds(&g_line, "{\"error\":") < 0 || buf_add_jstr(&g_line, msg, n) < 0 ||
	    buf_adds(&g_line, "}") < 0)
		return -1;
	return conn_reply_json(c, status, g_line.p, g_line.len);
}

static int conn_reply_cjson(struct conn *c, int status, cJSON *o)
{
	char *s = o ? cJSON_PrintUnformatted(o) : NULL;
	int rc;

	cJSON_Delete(o);
	if (!s)
		return conn_reply_error(c, 500, "out of memory", 13);
	rc = conn_reply_json(c, status, s, strlen(s));
	cJSON_free(s);
	return rc;
}

/* --- job: the /api/chat response machine ---------------------------- */

static const char *const default_tokens[10] = {
	"Olá",	      "!",
	" Tudo",      " bem",
	"?",	      " \"quoted\"",
	" new\nline", " emoji \xF0\x9F\x8E\x89",
	" tab\there", " back\\slash",
};

static size_t piece_len(const struct ctl *ctl, size_t pos)
{
	const unsigned char *t = (const unsigned char *)ctl->text;
	size_t len = ctl->text_len, i = pos, n;

	if (ctl->chunk > 0) {
		n = (size_t)ctl->chunk;
		if (n > len - pos)
			n = len - pos;
		if (!ctl->split_utf8)
			while (pos + n < len && (t[pos + n] & 0xC0) == 0x80)
				n++;
		return n;
	}
	while (i < len && is_ws(t[i]))
		i++;
	while (i < len && !is_ws(t[i]))
		i++;
	return i - pos;
}

/* Next content token; 0 when the reply is complete. */
static int job_next_token(struct job *j, const char **p, size_t *n)
{
	if (j->ctl.text) {
		if (j->text_pos >= j->ctl.text_len)
			return 0;
		*p = j->ctl.text + j->text_pos;
		*n = piece_len(&j->ctl, j->text_pos);
		j->text_pos += *n;
		return 1;
	}
	if (j->sent >= j->ctl.tokens)
		return 0;
	*p = default_tokens[j->sent % 10];
	*n = strlen(*p);
	return 1;
}

/* Appends one line as a chunk (or raw for an HTTP/1.0 client). */
static int emit_chunk(struct conn *c, const char *p, size_t n)
{
	char hex[20];
	size_t i = sizeof(hex), v = n;

	hex[--i] = '\n';
	hex[--i] = '\r';
	do {
		hex[--i] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	if (c->http10)
		return buf_add(&c->out, p, n);
	if (buf_add(&c->out, hex + i, sizeof(hex) - i) < 0 || buf_add(&c->out, p, n) < 0 ||
	    buf_add(&c->out, "\r\n", 2) < 0)
		return -1;
	return 0;
}

static int line_begin(struct job *j)
{
	g_line.len = 0;
	if (buf_add(&g_line, j->prefix.p, j->prefix.len) < 0 || buf_add_created(&g_line) < 0 ||
	    buf_adds(&g_line, "\",\"message\":{\"role\":\"assistant\",\"content\":") < 0)
		return -1;
	return 0;
}

/* The final object: content (non-stream) or "" and the done fields. */
static int line_final(struct job *j, const char *content, size_t n)
{
	uint64_t now = mono_ns(), t_first = j->t_first_ns ? j->t_first_ns : now;
	uint64_t load = 1234567, prompt = t_first - j->t0_ns + 1000;
	uint64_t eval = now - t_first + 1000, total = load + prompt + eval;

	if (line_begin(j) < 0 || buf_add_jstr(&g_line, content, n) < 0)
		return -1;
	if (j->ctl.nodone)
		return buf_adds(&g_line, "},\"done\":false}");
	if (j->load_only)
		return buf_adds(&g_line, "},\"done\":true,\"done_reason\":\"load\"}");
	return buf_addf(&g_line,
			"},\"done\":true,\"done_reason\":\"%s\","
			"\"total_duration\":%llu,\"load_duration\":%llu,"
			"\"prompt_eval_count\":%ld,\"prompt_eval_duration\":%llu,"
			"\"eval_count\":%ld,\"eval_duration\":%llu}",
			j->ctl.finish == FIN_LENGTH ? "length" : "stop", (unsigned long long)total,
			(unsigned long long)load, j->prompt_tokens, (unsigned long long)prompt,
			j->sent, (unsigned long long)eval);
}

static int line_garbage(long k)
{
	static const char junk[] =
		"\xff\xfe\x00\x01garbage\x80\x81{\"[[\xc3\x28\x1b[0m not json \xf0\x28\x8c\xbc";

	g_line.len = 0;
	if (buf_add(&g_line, junk, sizeof(junk) - 1) < 0 ||
	    buf_addf(&g_line, "%ld\x7f\xc0\xaf}}\n", k) < 0)
		return -1;
	return 0;
}

/* Ends the response body; the job finishes once the output has drained. */
static int job_end(struct conn *c, int status)
{
	struct job *j = &c->job;

	j->status = status;
	j->phase = PH_DRAIN;
	if (j->stream && status == 200) {
		if (c->http10)
			c->keepalive = 0; /* the end of the body is the FIN */
		else if (buf_add(&c->out, "0\r\n\r\n", 5) < 0)
			return -1;
	}
	return 0;
}

static const char *job_message(const struct job *j, const char *def, size_t *n)
{
	if (j->ctl.message) {
		*n = j->ctl.message_len;
		return j->ctl.message;
	}
	*n = strlen(def);
	return def;
}

/* --- the OpenAI form of the same answers ----------------------------- */

static int add_jstr_or_null(struct buf *b, const char *s)
{
	return s ? buf_add_jstr(b, s, strlen(s)) : buf_adds(b, "null");
}

static const char *vllm_type(int status)
{
	return status == 404   ? "NotFoundError"
	       : status >= 500 ? "InternalServerError"
			       : "BadRequestError";
}

/* OpenAI's error object {"error":{"message","type","param","code"}} or,
 * for ES_VLLM, vLLM's {"object":"error","message","type","param","code":N}.
 * param and code: NULL for null. */
static int oai_error_json(struct buf *b, long style, int status, const char *msg, size_t n,
			  const char *param, const char *code)
{
	if (style == ES_VLLM) {
		if (buf_adds(b, "{\"object\":\"error\",\"message\":") < 0 ||
		    buf_add_jstr(b, msg, n) < 0 ||
		    buf_addf(b, ",\"type\":\"%s\",\"param\":", vllm_type(status)) < 0 ||
		    add_jstr_or_null(b, param) < 0 || buf_addf(b, ",\"code\":%d}", status) < 0)
			return -1;
		return 0;
	}
	if (buf_adds(b, "{\"error\":{\"message\":") < 0 || buf_add_jstr(b, msg, n) < 0 ||
	    buf_addf(b, ",\"type\":\"%s\",\"param\":",
		     status >= 500 ? "server_error" : "invalid_request_error") < 0 ||
	    add_jstr_or_null(b, param) < 0 || buf_adds(b, ",\"code\":") < 0 ||
	    add_jstr_or_null(b, code) < 0 || buf_adds(b, "}}") < 0)
		return -1;
	return 0;
}

static int oai_reply_error(struct conn *c, long style, int status, const char *msg, size_t n,
			   const char *param, const char *code)
{
	g_line.len = 0;
	if (oai_error_json(&g_line, style, status, msg, n, param, code) < 0)
		return -1;
	return conn_reply_json(c, status, g_line.p, g_line.len);
}

/* An HTTP error answer in the job's protocol. */
static int job_reply_error(struct conn *c, int status, const char *msg, size_t n, const char *code)
{
	struct job *j = &c->job;

	if (j->api == API_OPENAI)
		return oai_reply_error(c, j->ctl.error_style, status, msg, n, NULL, code);
	return conn_reply_error(c, status, msg, n);
}

/* One SSE event (in g_line, blank line included) as a chunk, after a
 * ": keep-alive" comment when comments=1. */
static int emit_event(struct conn *c, const struct job *j)
{
	static const char ka[] = ": keep-alive\n\n";

	if (j->ctl.comments && emit_chunk(c, ka, sizeof(ka) - 1) < 0)
		return -1;
	return emit_chunk(c, g_line.p, g_line.len);
}

static const char *finish_reason(const struct job *j)
{
	return j->ctl.finish == FIN_LENGTH ? "length" : "stop";
}

static int oai_add_usage(struct buf *b, const struct job *j)
{
	return buf_addf(b,
			"\"usage\":{\"prompt_tokens\":%ld,\"completion_tokens\":%ld,"
			"\"total_tokens\":%ld}",
			j->prompt_tokens, j->sent, j->prompt_tokens + j->sent);
}

/* data: {...chunk...,"choices":[{"index":0,"delta":{[role,]content},...}]} */
static int oai_token(const struct job *j, const char *p, size_t n)
{
	g_line.len = 0;
	if (buf_add(&g_line, j->prefix.p, j->prefix.len) < 0 ||
	    buf_adds(&g_line, j->sent == 0 ? "{\"index\":0,\"delta\":{\"role\":\"assistant\","
					     "\"content\":"
					   : "{\"index\":0,\"delta\":{\"content\":") < 0 ||
	    buf_add_jstr(&g_line, p, n) < 0 ||
	    buf_adds(&g_line, j->include_usage ? "},\"finish_reason\":null}],\"usage\":null}\n\n"
					       : "},\"finish_reason\":null}]}\n\n") < 0)
		return -1;
	return 0;
}

/* The finish chunk, the usage chunk when asked for, and [DONE] (not with
 * no_end). */
static int oai_stream_end(struct conn *c, const struct job *j)
{
	static const char done[] = "data: [DONE]\n\n";

	g_line.len = 0;
	if (buf_add(&g_line, j->prefix.p, j->prefix.len) < 0 ||
	    buf_addf(&g_line, "{\"index\":0,\"delta\":%s,\"finish_reason\":\"%s\"}]%s}\n\n",
		     j->sent ? "{}" : "{\"role\":\"assistant\",\"content\":\"\"}", finish_reason(j),
		     j->include_usage ? ",\"usage\":null" : "") < 0 ||
	    emit_event(c, j) < 0)
		return -1;
	if (j->include_usage) {
		g_line.len = 0;
		if (buf_add(&g_line, j->prefix.p, j->prefix.len) < 0 ||
		    buf_adds(&g_line, "],") < 0 || oai_add_usage(&g_line, j) < 0 ||
		    buf_adds(&g_line, "}\n\n") < 0 || emit_event(c, j) < 0)
			return -1;
	}
	if (j->ctl.no_end)
		return 0;
	g_line.len = 0;
	if (buf_add(&g_line, done, sizeof(done) - 1) < 0)
		return -1;
	return emit_event(c, j);
}

/* The whole chat.completion object (non-stream) into g_line. */
static int oai_completion(const struct job *j, const char *content, size_t n)
{
	g_line.len = 0;
	if (buf_add(&g_line, j->prefix.p, j->prefix.len) < 0 ||
	    buf_adds(&g_line, "{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":") <
		    0 ||
	    buf_add_jstr(&g_line, content, n) < 0 ||
	    buf_addf(&g_line, "},\"finish_reason\":%s%s%s}],", j->ctl.nodone ? "" : "\"",
		     j->ctl.nodone ? "null" : finish_reason(j), j->ctl.nodone ? "" : "\"") < 0 ||
	    oai_add_usage(&g_line, j) < 0 || buf_adds(&g_line, "}") < 0)
		return -1;
	return 0;
}

/* Time for the response headers (or an error status instead). */
static int job_head(struct conn *c)
{
	struct job *j = &c->job;
	const char *msg;
	size_t n;

	if (j->ctl.model_missing) {
		struct buf m = {0};
		int rc;

		if (buf_addf(&m,
			     j->api == API_OPENAI ? "The model `%s` does not exist or you do not "
						    "have access to it."
						  : "model \"%s\" not found, try pulling it first",
			     j->model) < 0) {
			buf_free(&m);
			return -1;
		}
		rc = job_reply_error(c, 404, m.p, m.len, "model_not_found");
		buf_free(&m);
		j->stream = 0;
		return rc < 0 ? -1 : job_end(c, 404);
	}
	if (j->ctl.status >= 300) {
		msg = job_message(j, "fake upstream failure", &n);
		j->stream = 0;
		if (job_reply_error(c, (int)j->ctl.status, msg, n, NULL) < 0)
			return -1;
		return job_end(c, (int)j->ctl.status);
	}
	if (j->stream &&
	    buf_addf(&c->out,
		     "HTTP/1.1 200 OK\r\n"
		     "Content-Type: %s\r\nDate: %s\r\n%s%s\r\n",
		     j->api == API_OPENAI ? "text/event-stream; charset=utf-8"
					  : "application/x-ndjson",
		     http_date(), j->api == API_OPENAI ? "Cache-Control: no-cache\r\n" : "",
		     c->http10	    ? "Connection: close\r\n"
		     : c->keepalive ? "Transfer-Encoding: chunked\r\n"
				    : "Transfer-Encoding: chunked\r\nConnection: close\r\n") < 0)
		return -1;
	j->phase = PH_BODY;
	j->due += (uint64_t)j->ctl.first_ms * 1000;
	return 0;
}

/* The error line mid-stream: Ollama {"error":M}; OpenAI data: {"error":{..}}
 * (vLLM style: its error object, then data: [DONE], as vLLM does). */
static int job_stream_error(struct conn *c, const char *msg, size_t n)
{
	struct job *j = &c->job;
	static const char done[] = "data: [DONE]\n\n";

	g_line.len = 0;
	if (j->api == API_OLLAMA) {
		if (buf_adds(&g_line, "{\"error\":") < 0 || buf_add_jstr(&g_line, msg, n) < 0 ||
		    buf_adds(&g_line, "}\n") < 0)
			return -1;
		return emit_chunk(c, g_line.p, g_line.len);
	}
	if (buf_adds(&g_line, "data: ") < 0 ||
	    oai_error_json(&g_line, j->ctl.error_style, j->ctl.error_style == ES_VLLM ? 400 : 500,
			   msg, n, NULL, NULL) < 0 ||
	    buf_adds(&g_line, "\n\n") < 0 || emit_event(c, j) < 0)
		return -1;
	if (j->ctl.error_style != ES_VLLM)
		return 0;
	g_line.len = 0;
	if (buf_add(&g_line, done, sizeof(done) - 1) < 0)
		return -1;
	return emit_event(c, j);
}

/* Time for the next token slot: a token, a fault, or the end. */
static int job_slot(struct conn *c)
{
	struct job *j = &c->job;
	const char *p, *msg;
	size_t n;
	long k = j->sent;
	int oai = j->api == API_OPENAI;

	if (j->ctl.cut_after == k) {
		j->phase = PH_CUT;
		return 0;
	}
	if (j->ctl.hang && j->ctl.hang_after == k) {
		j->phase = PH_HANG;
		return 0;
	}
	if (j->ctl.error_after == k) {
		msg = job_message(j, "fake error mid-stream", &n);
		if (!j->stream) {
			if (job_reply_error(c, 500, msg, n, NULL) < 0)
				return -1;
			return job_end(c, 500);
		}
		if (job_stream_error(c, msg, n) < 0)
			return -1;
		return job_end(c, 200);
	}
	if (j->ctl.malformed_after == k) {
		static const char bad[] = "{\"message\": {\"content\": \"broken\n";
		static const char bad_oai[] =
			"{\"id\":\"chatcmpl-0\",\"choices\":[{\"delta\":{\"content\":\"broken\n";
		static const char bad_sse[] = "data: {\"id\":\"chatcmpl-0\",\"object\":\"chat."
					      "completion.chunk\",\"choices\":[{\"delta\":{"
					      "\"content\":\"broken\n\n";

		if (!j->stream) {
			if (conn_reply_json(c, 200, oai ? bad_oai : bad,
					    oai ? sizeof(bad_oai) - 1 : sizeof(bad) - 1) < 0)
				return -1;
		} else if (oai) {
			g_line.len = 0;
			if (buf_add(&g_line, bad_sse, sizeof(bad_sse) - 1) < 0 ||
			    emit_event(c, j) < 0)
				return -1;
		} else if (emit_chunk(c, bad, sizeof(bad) - 1) < 0) {
			return -1;
		}
		return job_end(c, 200);
	}
	if (j->ctl.garbage) {
		if (k >= j->ctl.tokens) {
			if (!j->stream &&
			    conn_reply_json(c, 200, j->acc.p ? j->acc.p : "", j->acc.len) < 0)
				return -1;
			return job_end(c, 200);
		}
		if (line_garbage(k) < 0)
			return -1;
		if (j->stream ? emit_chunk(c, g_line.p, g_line.len)
			      : buf_add(&j->acc, g_line.p, g_line.len))
			return -1;
	} else if (!job_next_token(j, &p, &n)) {
		if (!j->stream) {
			if ((oai ? oai_completion(j, j->acc.p ? j->acc.p : "", j->acc.len)
				 : line_final(j, j->acc.p ? j->acc.p : "", j->acc.len)) < 0 ||
			    conn_reply_json(c, 200, g_line.p, g_line.len) < 0)
				return -1;
			return job_end(c, 200);
		}
		if (!j->ctl.nodone) {
			if (oai) {
				if (oai_stream_end(c, j) < 0)
					return -1;
			} else if (line_final(j, "", 0) < 0 || buf_add(&g_line, "\n", 1) < 0 ||
				   emit_chunk(c, g_line.p, g_line.len) < 0) {
				return -1;
			}
		}
		if (j->ctl.linger) {
			j->phase = PH_HANG; /* the body never ends */
			return 0;
		}
		return job_end(c, 200);
	} else {
		if (j->sent == 0)
			j->t_first_ns = mono_ns();
		if (!j->stream) {
			if (buf_add(&j->acc, p, n) < 0)
				return -1;
		} else if (oai) {
			if (oai_token(j, p, n) < 0 || emit_event(c, j) < 0)
				return -1;
		} else if (line_begin(j) < 0 || buf_add_jstr(&g_line, p, n) < 0 ||
			   buf_adds(&g_line, "},\"done\":false}\n") < 0 ||
			   emit_chunk(c, g_line.p, g_line.len) < 0) {
			return -1;
		}
	}
	j->sent++;
	j->due += (uint64_t)j->ctl.delay_ms * 1000;
	return 0;
}

/* Produces everything that is due.  1: stopped because the output is full
 * (call again once it drains); 0: waiting on the timer or done producing. */
static int job_pump(struct conn *c)
{
	struct job *j = &c->job;
	uint64_t now = mono_us();
	struct rec *r;
	int rc = 0, full = 0;

	while (j->phase == PH_HEAD || j->phase == PH_BODY) {
		if (conn_pending(c) >= OUT_HIGH) {
			full = 1;
			break;
		}
		if (j->due > now) {
			if (tmr_set(c, j->due) < 0)
				j->phase = PH_CUT;
			break;
		}
		rc = j->phase == PH_HEAD ? job_head(c) : job_slot(c);
		if (rc < 0)
			j->phase = PH_CUT; /* out of memory: give up on it */
	}
	if (j->phase != PH_HEAD && j->phase != PH_BODY)
		tmr_del(c);
	if ((r = rec_get(j->seq)))
		r->tokens_sent = j->sent;
	return full;
}

/* Finishes the job's record and releases the job. */
static void job_done(struct conn *c, int how)
{
	struct job *j = &c->job;
	struct rec *r = rec_get(j->seq);
	cJSON *o;
	char *s;

	if (!c->has_job)
		return;
	if (r) {
		r->tokens_sent = j->sent;
		r->status = j->status;
		r->finished = 1;
		r->finished_at = wall_ms();
		if (how == DONE_PEER) {
			r->client_closed = 1;
			r->closed_at = r->finished_at;
		}
		if (g_logfd >= 0 && (o = rec_to_json(r))) {
			s = cJSON_PrintUnformatted(o);
			cJSON_Delete(o);
			if (s) {
				size_t n = strlen(s);

				s[n] = '\n'; /* replaces the NUL; n+1 bytes written */
				if (write(g_logfd, s, n + 1) < 0)
					perror("fake_ollama: request log");
				cJSON_free(s);
			}
		}
	}
	if (how == DONE_PEER)
		g_client_closed++;
	if (!g_quiet)
		fprintf(stderr,
			"fake_ollama seq=%llu model=%s stream=%d status=%d tokens=%ld "
			"client_closed=%d ms=%llu\n",
			(unsigned long long)j->seq, j->model ? j->model : "-", j->stream,
			r ? r->status : j->status, j->sent, how == DONE_PEER,
			(unsigned long long)((mono_ns() - j->t0_ns) / 1000000));
	ctl_free(&j->ctl);
	buf_free(&j->prefix);
	buf_free(&j->acc);
	free(j->model);
	memset(j, 0, sizeof(*j));
	c->has_job = 0;
	g_active--;
	tmr_del(c);
	if (!c->keepalive)
		c->closing = 1;
}

/* ------------------------------------------------------------------ */
/* HTTP request parsing                                                */

static int is_tchar(int ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static int ieq(const char *a, size_t an, const char *b)
{
	return strlen(b) == an && strncasecmp(a, b, an) == 0;
}

/* Comma-separated header value contains token tok (case-insensitive). */
static int has_token(const char *v, size_t n, const char *tok)
{
	size_t i = 0, s, e;

	while (i < n) {
		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		s = i;
		while (i < n && v[i] != ',')
			i++;
		e = i;
		while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
			e--;
		if (e > s && ieq(v + s, e - s, tok))
			return 1;
	}
	return 0;
}

/* Parses the request head into c->req.  1 done, 0 need more, -1 bad. */
static int http_parse_head(struct conn *c, int *status)
{
	struct req *r = &c->req;
	char *b = c->in.p, *line, *eol, *sp1, *sp2, *colon, *v, *ve, *next;
	size_t n = c->in.len, i, lead = 0, end = 0, tlen;
	int have_cl = 0, ka = 0, cl_close = 0;

	while (lead < n && (b[lead] == '\r' || b[lead] == '\n'))
		lead++;
	if (lead) { /* stray CRLFs between requests */
		memmove(b, b + lead, n - lead);
		c->in.len = n -= lead;
	}
	for (i = 0; i < n; i++) {
		eol = memchr(b + i, '\n', n - i);
		if (!eol)
			break;
		i = (size_t)(eol - b);
		if (i + 1 < n && b[i + 1] == '\n') {
			end = i + 2;
			break;
		}
		if (i + 2 < n && b[i + 1] == '\r' && b[i + 2] == '\n') {
			end = i + 3;
			break;
		}
	}
	if (!end) {
		if (n >= HEAD_MAX) {
			*status = 400;
			return -1;
		}
		return 0;
	}
	*status = 400;
	if (end > HEAD_MAX || memchr(b, '\0', end))
		return -1;
	memset(r, 0, sizeof(*r));
	r->head_len = end;

	/* request line: METHOD SP target SP HTTP/1.x */
	line = b;
	eol = memchr(line, '\n', end);
	ve = eol;
	if (ve > line && ve[-1] == '\r')
		ve--;
	sp1 = memchr(line, ' ', (size_t)(ve - line));
	if (!sp1 || sp1 == line || sp1 - line > 16)
		return -1;
	for (v = line; v < sp1; v++)
		if (!is_tchar((unsigned char)*v))
			return -1;
	sp2 = memchr(sp1 + 1, ' ', (size_t)(ve - sp1 - 1));
	if (!sp2 || sp2 == sp1 + 1)
		return -1;
	if (ve - sp2 - 1 != 8 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
	    (sp2[8] != '0' && sp2[8] != '1'))
		return -1;
	r->http10 = sp2[8] == '0';
	tlen = (size_t)(sp1 - line);
	r->method = tlen == 3 && !memcmp(line, "GET", 3)    ? M_GET
		    : tlen == 4 && !memcmp(line, "HEAD", 4) ? M_HEAD
		    : tlen == 4 && !memcmp(line, "POST", 4) ? M_POST
							    : M_OTHER;
	v = sp1 + 1;
	for (i = 0; v + i < sp2; i++)
		if ((unsigned char)v[i] <= 0x20 || v[i] == 0x7f)
			return -1;
	if ((sp2 - v > 7 && !strncasecmp(v, "http://", 7)) ||
	    (sp2 - v > 8 && !strncasecmp(v, "https://", 8))) {
		v = memchr(v, '/', (size_t)(sp2 - v)) + 2; /* after "//" */
		v = memchr(v, '/', (size_t)(sp2 - v));
		if (!v)
			v = sp2; /* empty path */
	}
	r->path_off = (size_t)(v - b);
	for (ve = v; ve < sp2 && *ve != '?' && *ve != '#'; ve++)
		;
	r->path_len = (size_t)(ve - v);
	if (ve < sp2 && *ve == '?') {
		r->query_off = (size_t)(ve + 1 - b);
		for (ve++; ve < sp2 && *ve != '#'; ve++)
			;
		r->query_len = (size_t)(ve - b) - r->query_off;
	}

	/* header fields */
	for (line = eol + 1; line < b + end; line = next) {
		eol = memchr(line, '\n', (size_t)(b + end - line));
		next = eol + 1;
		ve = eol;
		if (ve > line && ve[-1] == '\r')
			ve--;
		if (ve == line)
			break; /* the blank line */
		if (*line == ' ' || *line == '\t')
			return -1; /* obs-fold */
		colon = memchr(line, ':', (size_t)(ve - line));
		if (!colon || colon == line)
			return -1;
		for (v = line; v < colon; v++)
			if (!is_tchar((unsigned char)*v))
				return -1;
		v = colon + 1;
		while (v < ve && (*v == ' ' || *v == '\t'))
			v++;
		while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
			ve--;
		tlen = (size_t)(colon - line);
		if (ieq(line, tlen, "content-length")) {
			size_t cl = 0;

			if (v == ve)
				return -1;
			for (i = 0; v + i < ve; i++) {
				if (v[i] < '0' || v[i] > '9')
					return -1;
				if (cl > (SIZE_MAX - 9) / 10)
					return -1;
				cl = cl * 10 + (size_t)(v[i] - '0');
			}
			if (have_cl && cl != r->clen)
				return -1;
			have_cl = 1;
			r->clen = cl;
		} else if (ieq(line, tlen, "transfer-encoding")) {
			if (!ieq(v, (size_t)(ve - v), "chunked") || r->http10) {
				*status = 501;
				return -1;
			}
			r->chunked = 1;
		} else if (ieq(line, tlen, "connection")) {
			if (has_token(v, (size_t)(ve - v), "close"))
				cl_close = 1;
			if (has_token(v, (size_t)(ve - v), "keep-alive"))
				ka = 1;
		} else if (ieq(line, tlen, "authorization")) {
			r->auth_off = (size_t)(v - b);
			r->auth_len = (size_t)(ve - v);
		} else if (ieq(line, tlen, "expect")) {
			if (ieq(v, (size_t)(ve - v), "100-continue"))
				r->expect = 1;
		}
	}
	if (have_cl && r->chunked)
		return -1;
	if (r->clen > BODY_MAX) {
		*status = 413;
		return -1;
	}
	r->keepalive = r->http10 ? (ka && !cl_close) : !cl_close;
	return 1;
}

/* Decodes a chunked body from c->in into c->body as far as it has arrived.
 * 1 complete (c->ck_pos is the end on the wire), 0 need more, -1 bad. */
static int http_chunked(struct conn *c, int *status)
{
	char *p, *nl;
	size_t avail, size, i, n;
	int digits, h;

	for (;;) {
		p = c->in.p + c->ck_pos;
		avail = c->in.len - c->ck_pos;
		switch (c->ck_state) {
		case CK_SIZE:
			nl = memchr(p, '\n', avail);
			if (!nl)
				return avail > 4096 ? (*status = 400, -1) : 0;
			size = 0;
			digits = 0;
			for (i = 0; p + i < nl && (h = hexval((unsigned char)p[i])) >= 0; i++) {
				if (size > (SIZE_MAX >> 4) || ++digits > 15)
					return *status = 400, -1;
				size = size * 16 + (size_t)h;
			}
			if (!digits)
				return *status = 400, -1;
			/* allow chunk extensions, spaces and CR before LF */
			if (p + i < nl && p[i] != ';' && p[i] != ' ' && p[i] != '\t' &&
			    p[i] != '\r')
				return *status = 400, -1;
			if (size > BODY_MAX - c->body.len)
				return *status = 413, -1;
			c->ck_pos += (size_t)(nl - p) + 1;
			c->ck_left = size;
			c->ck_state = size ? CK_DATA : CK_TRAILER;
			break;
		case CK_DATA:
			n = avail < c->ck_left ? avail : c->ck_left;
			if (buf_add(&c->body, p, n) < 0)
				return *status = 413, -1;
			c->ck_pos += n;
			c->ck_left -= n;
			if (c->ck_left)
				return 0;
			c->ck_state = CK_CRLF;
			break;
		case CK_CRLF:
			if (avail < 1)
				return 0;
			if (p[0] == '\n') {
				c->ck_pos += 1;
			} else if (p[0] == '\r') {
				if (avail < 2)
					return 0;
				if (p[1] != '\n')
					return *status = 400, -1;
				c->ck_pos += 2;
			} else {
				return *status = 400, -1;
			}
			c->ck_state = CK_SIZE;
			break;
		case CK_TRAILER:
			nl = memchr(p, '\n', avail);
			if (!nl)
				return avail > HEAD_MAX ? (*status = 400, -1) : 0;
			c->ck_pos += (size_t)(nl - p) + 1;
			if (nl == p || (nl == p + 1 && p[0] == '\r'))
				return 1;
			break;
		}
	}
}

/* ------------------------------------------------------------------ */
/* routes                                                              */

static const char tags_json[] =
	"{\"models\":[{\"name\":\"llama3.2:latest\",\"model\":\"llama3.2:latest\","
	"\"modified_at\":\"2024-10-01T12:00:00.000000000Z\",\"size\":2019393189,"
	"\"digest\":\"a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72\","
	"\"details\":{\"parent_model\":\"\",\"format\":\"gguf\",\"family\":\"llama\","
	"\"families\":[\"llama\"],\"parameter_size\":\"3.2B\","
	"\"quantization_level\":\"Q4_K_M\"}},"
	"{\"name\":\"qwen2.5:0.5b\",\"model\":\"qwen2.5:0.5b\","
	"\"modified_at\":\"2024-10-02T12:00:00.000000000Z\",\"size\":397821319,"
	"\"digest\":\"a8b0c51577010a279d933d14c2a8ab4b268079d44c5c8830c0a93900f1827c67\","
	"\"details\":{\"parent_model\":\"\",\"format\":\"gguf\",\"family\":\"qwen2\","
	"\"families\":[\"qwen2\"],\"parameter_size\":\"494.03M\","
	"\"quantization_level\":\"Q4_K_M\"}}]}";

static const char *g_api_key; /* -k: the Bearer key /v1/ wants, or NULL */

/* 1 when the request may use /v1/ (no -k, or the right Bearer key). */
static int oai_authorized(const struct conn *c)
{
	const char *v = c->in.p + c->req.auth_off;
	size_t n = c->req.auth_len, i = 6;

	if (!g_api_key)
		return 1;
	if (n < 7 || strncasecmp(v, "Bearer", 6) != 0 || (v[6] != ' ' && v[6] != '\t'))
		return 0;
	while (i < n && (v[i] == ' ' || v[i] == '\t'))
		i++;
	return n - i == strlen(g_api_key) && memcmp(v + i, g_api_key, n - i) == 0;
}

static int oai_reply_unauthorized(struct conn *c)
{
	static const char none[] = "You didn't provide an API key. You need to provide your API "
				   "key in an Authorization header using Bearer auth (i.e. "
				   "Authorization: Bearer YOUR_KEY).";
	static const char wrong[] = "Incorrect API key provided. You can find your API key at "
				    "https://platform.openai.com/account/api-keys.";

	if (c->req.auth_len == 0)
		return oai_reply_error(c, ES_OPENAI, 401, none, sizeof(none) - 1, NULL, NULL);
	return oai_reply_error(c, ES_OPENAI, 401, wrong, sizeof(wrong) - 1, NULL,
			       "invalid_api_key");
}

/* GET /v1/models: the models of /api/tags (created = their modified_at) */
static const char models_json[] =
	"{\"object\":\"list\",\"data\":[{\"id\":\"llama3.2:latest\",\"object\":\"model\","
	"\"created\":1727784000,\"owned_by\":\"library\"},{\"id\":\"qwen2.5:0.5b\",\"object\":"
	"\"model\",\"created\":1727870400,\"owned_by\":\"library\"}]}";

/* Starts an /api/chat (API_OLLAMA) or /v1/chat/completions (API_OPENAI)
 * response, or answers 400 (401 without the -k key) for a bad request. */
static int route_chat(struct conn *c, const char *body, size_t blen, int api)
{
	struct rec *r = rec_new(body, blen);
	struct job *j = &c->job;
	cJSON *root = NULL, *model, *stream, *msgs, *last, *content, *m, *sopt = NULL, *inc;
	const char *err = NULL, *lc = NULL, *err_param = NULL, *err_code = NULL;
	int oai = api == API_OPENAI, err_status = 400;
	long count = 0;
	size_t chars = 0;
	int rc = -1;

	g_total++;
	if (r) {
		r->status = 400;
		r->api = api;
		r->stream = !oai;
	}
	if (oai && !oai_authorized(c)) {
		if (r)
			r->status = 401;
		err_status = 401;
		goto bad;
	}
	if (blen == 0)
		err = oai ? "We could not parse the JSON body of your request. (HINT: This "
			    "likely means you aren't using your HTTP library correctly.)"
			  : "missing request body";
	else if (!(root = cJSON_ParseWithLength(body, blen)) || !cJSON_IsObject(root))
		err = oai ? "We could not parse the JSON body of your request. (HINT: This "
			    "likely means you aren't using your HTTP library correctly.)"
			  : "invalid character in request body";
	if (err)
		goto bad;
	model = cJSON_GetObjectItem(root, "model");
	stream = cJSON_GetObjectItem(root, "stream");
	msgs = cJSON_GetObjectItem(root, "messages");
	if (cJSON_IsString(model) && r &&
	    !(r->model = mem_dup(model->valuestring, strlen(model->valuestring))))
		goto oom;
	if (!cJSON_IsString(model) || !model->valuestring[0]) {
		err = oai ? "you must provide a model parameter" : "model is required";
		goto bad;
	}
	if (stream && !cJSON_IsNull(stream) && !cJSON_IsBool(stream)) {
		err = oai ? "Invalid type for 'stream': expected a boolean."
			  : "json: cannot unmarshal into Go struct field ChatRequest.stream of "
			    "type bool";
		err_param = "stream";
		err_code = "invalid_type";
		goto bad;
	}
	if (oai && (!msgs || cJSON_IsNull(msgs))) {
		err = "Missing required parameter: 'messages'.";
		err_param = "messages";
		err_code = "missing_required_parameter";
		goto bad;
	}
	if (msgs && !cJSON_IsNull(msgs) && !cJSON_IsArray(msgs)) {
		err = oai ? "Invalid type for 'messages': expected an array of objects."
			  : "json: cannot unmarshal into Go struct field ChatRequest.messages";
		err_param = "messages";
		err_code = "invalid_type";
		goto bad;
	}
	if (oai && cJSON_GetArraySize(msgs) == 0) {
		err = "Invalid 'messages': empty array. Expected an array with minimum length 1, "
		      "but got an empty array instead.";
		err_param = "messages";
		err_code = "empty_array";
		goto bad;
	}
	if (oai && (sopt = cJSON_GetObjectItem(root, "stream_options")) && !cJSON_IsNull(sopt)) {
		inc = cJSON_GetObjectItem(sopt, "include_usage");
		if (!cJSON_IsTrue(stream)) {
			err = "The 'stream_options' parameter is only allowed when 'stream' is "
			      "enabled.";
			err_param = "stream_options";
			err_code = "invalid_value";
			goto bad;
		}
		if (!cJSON_IsObject(sopt) || (inc && !cJSON_IsBool(inc))) {
			err = "Invalid type for 'stream_options.include_usage': expected a "
			      "boolean.";
			err_param = "stream_options.include_usage";
			err_code = "invalid_type";
			goto bad;
		}
	}
	last = NULL;
	cJSON_ArrayForEach(m, msgs)
	{
		count++;
		last = m;
		content = cJSON_GetObjectItem(m, "content");
		if (cJSON_IsString(content))
			chars += strlen(content->valuestring);
	}
	content = last ? cJSON_GetObjectItem(last, "content") : NULL;
	if (cJSON_IsString(content))
		lc = content->valuestring;

	memset(j, 0, sizeof(*j));
	if (ctl_copy(&j->ctl, &g_cfg) < 0)
		goto oom;
	c->has_job = 1; /* from here on job_done() releases it */
	g_active++;
	j->seq = r ? r->seq : 0;
	j->api = api;
	j->stream = oai ? cJSON_IsTrue(stream) : !cJSON_IsFalse(stream);
	j->include_usage = sopt && cJSON_IsTrue(cJSON_GetObjectItem(sopt, "include_usage"));
	j->load_only = count == 0;
	j->prompt_tokens = (long)(chars / 4) + 1;
	j->t0_ns = mono_ns();
	j->status = 200;
	if (!(j->model = mem_dup(model->valuestring, strlen(model->valuestring))))
		goto oom_job;
	if (oai) {
		/* data: {"id":..,"object":..,"created":..,"model":M,"choices":[ */
		if (buf_addf(&j->prefix,
			     "%s{\"id\":\"chatcmpl-%llu\",\"object\":\"chat.completion%s\","
			     "\"created\":%lld,\"model\":",
			     j->stream ? "data: " : "", (unsigned long long)j->seq,
			     j->stream ? ".chunk" : "", (long long)time(NULL)) < 0 ||
		    buf_add_jstr(&j->prefix, j->model, strlen(j->model)) < 0 ||
		    buf_adds(&j->prefix, ",\"choices\":[") < 0)
			goto oom_job;
	} else if (buf_adds(&j->prefix, "{\"model\":") < 0 ||
		   buf_add_jstr(&j->prefix, j->model, strlen(j->model)) < 0 ||
		   buf_adds(&j->prefix, ",\"created_at\":\"") < 0) {
		goto oom_job;
	}
	if (lc)
		ctl_apply_directives(&j->ctl, lc, strlen(lc));
	if (j->ctl.long_line > 0) {
		free(j->ctl.text);
		j->ctl.text_len = (size_t)j->ctl.long_line;
		if (!(j->ctl.text = malloc(j->ctl.text_len + 1)))
			goto oom_job;
		for (chars = 0; chars < j->ctl.text_len; chars++)
			j->ctl.text[chars] = (char)('a' + chars % 26);
		j->ctl.chunk = j->ctl.long_line;
	}
	if (j->load_only) {
		free(j->ctl.text);
		if (!(j->ctl.text = mem_dup("", 0)))
			goto oom_job;
		j->ctl.text_len = 0;
	}
	if (r) {
		r->status = 200;
		r->stream = j->stream;
		r->message_count = count;
		if (lc && !(r->last = mem_dup(lc, strlen(lc))))
			goto oom_job;
	}
	j->phase = PH_HEAD;
	j->due = mono_us() + (uint64_t)j->ctl.headers_ms * 1000;
	cJSON_Delete(root);
	return 0;

bad:
	if (r) {
		r->finished = 1;
		r->finished_at = wall_ms();
		if (oai && cJSON_IsBool(stream = cJSON_GetObjectItem(root, "stream")))
			r->stream = cJSON_IsTrue(stream);
	}
	if (err_status == 401)
		rc = oai_reply_unauthorized(c);
	else if (oai)
		rc = oai_reply_error(c, g_cfg.error_style, err_status, err, strlen(err), err_param,
				     err_code);
	else
		rc = conn_reply_error(c, err_status, err, strlen(err));
	cJSON_Delete(root);
	if (r && g_logfd >= 0) {
		cJSON *o = rec_to_json(r);
		char *s = o ? cJSON_PrintUnformatted(o) : NULL;

		cJSON_Delete(o);
		if (s) {
			size_t n = strlen(s);

			s[n] = '\n';
			if (write(g_logfd, s, n + 1) < 0)
				perror("fake_ollama: request log");
			cJSON_free(s);
		}
	}
	return rc;
oom_job:
	cJSON_Delete(root);
	job_done(c, DONE_OK);
	return job_reply_error(c, 500, "out of memory", 13, NULL);
oom:
	cJSON_Delete(root);
	return oai ? oai_reply_error(c, ES_OPENAI, 500, "out of memory", 13, NULL, NULL)
		   : conn_reply_error(c, 500, "out of memory", 13);
}

static int route_requests(struct conn *c, const char *q, size_t qn)
{
	cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray(), *it;
	uint64_t s, since = 0;
	const char *p;
	struct rec *r;

	if (!o || !arr) {
		cJSON_Delete(o);
		cJSON_Delete(arr);
		return conn_reply_error(c, 500, "out of memory", 13);
	}
	cJSON_AddItemToObject(o, "requests", arr);
	if (q && (p = memmem(q, qn, "since=", 6)) && (p == q || p[-1] == '&')) {
		for (p += 6; p < q + qn && *p >= '0' && *p <= '9' && since < UINT64_MAX / 10; p++)
			since = since * 10 + (uint64_t)(*p - '0');
	}
	s = g_seq >= LOG_CAP ? g_seq - LOG_CAP + 1 : 1;
	if (s < g_first_seq)
		s = g_first_seq;
	if (s <= since)
		s = since + 1;
	for (; s <= g_seq; s++)
		if ((r = rec_get(s)) && (it = rec_to_json(r)))
			cJSON_AddItemToArray(arr, it);
	return conn_reply_cjson(c, 200, o);
}

static int path_is(const struct conn *c, const char *p)
{
	return c->req.path_len == strlen(p) &&
	       memcmp(c->in.p + c->req.path_off, p, c->req.path_len) == 0;
}

static int route(struct conn *c, const char *body, size_t blen)
{
	int m = c->req.method, get = m == M_GET || m == M_HEAD;
	cJSON *o;

	if (get && path_is(c, "/"))
		return conn_reply(c, 200, "text/plain; charset=utf-8", "Ollama is running", 17);
	if (get && path_is(c, "/api/tags"))
		return conn_reply_json(c, 200, tags_json, sizeof(tags_json) - 1);
	if (get && path_is(c, "/api/version"))
		return conn_reply_json(c, 200, "{\"version\":\"0.5.7\"}", 19);
	if (m == M_POST && path_is(c, "/api/chat"))
		return route_chat(c, body, blen, API_OLLAMA);
	if (m == M_POST && path_is(c, "/v1/chat/completions"))
		return route_chat(c, body, blen, API_OPENAI);
	if (get && path_is(c, "/v1/models")) {
		if (!oai_authorized(c))
			return oai_reply_unauthorized(c);
		return conn_reply_json(c, 200, models_json, sizeof(models_json) - 1);
	}
	if (m == M_POST && path_is(c, "/_fake/config")) {
		cJSON *in = blen ? cJSON_ParseWithLength(body, blen) : NULL;

		if (!cJSON_IsObject(in)) {
			cJSON_Delete(in);
			return conn_reply_error(c, 400, "body must be a JSON object", 26);
		}
		ctl_apply_json(&g_cfg, in);
		cJSON_Delete(in);
	}
	if ((get || m == M_POST) && path_is(c, "/_fake/config")) {
		o = cJSON_CreateObject();
		if (o)
			cJSON_AddItemToObject(o, "config", ctl_to_json(&g_cfg));
		return conn_reply_cjson(c, 200, o);
	}
	if (m == M_POST && path_is(c, "/_fake/reset")) {
		ctl_defaults(&g_cfg);
		rec_clear();
		g_total = g_client_closed = 0;
		return conn_reply_json(c, 200, "{\"ok\":true}", 11);
	}
	if (get && path_is(c, "/_fake/requests"))
		return route_requests(c, c->req.query_len ? c->in.p + c->req.query_off : NULL,
				      c->req.query_len);
	if (get && path_is(c, "/_fake/stats")) {
		g_line.len = 0;
		if (buf_addf(&g_line,
			     "{\"active\":%ld,\"total\":%ld,\"client_closed\":%ld,"
			     "\"connections\":%ld}",
			     g_active, g_total, g_client_closed, g_nconns) < 0)
			return -1;
		return conn_reply_json(c, 200, g_line.p, g_line.len);
	}
	return conn_reply(c, 404, "text/plain", "404 page not found", 18);
}

/* ------------------------------------------------------------------ */
/* connection lifecycle                                                */

static int conn_close(struct conn *c, int how)
{
	if (c->has_job)
		job_done(c, how);
	tmr_del(c);
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		g_conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	buf_free(&c->in);
	buf_free(&c->out);
	buf_free(&c->body);
	free(c);
	g_nconns--;
	return -1;
}

/* Half-close and drain the peer for a while so that it reads our last
 * response instead of getting a reset for unread input. */
static int conn_linger(struct conn *c)
{
	shutdown(c->fd, SHUT_WR);
	c->lingering = 1;
	c->in.len = 0;
	if (tmr_set(c, mono_us() + LINGER_US) < 0)
		return conn_close(c, DONE_OK);
	conn_update_ev(c);
	return 0;
}

static void conn_consume(struct conn *c, size_t n)
{
	if (n >= c->in.len) {
		c->in.len = 0;
		buf_free(&c->in);
	} else {
		memmove(c->in.p, c->in.p + n, c->in.len - n);
		c->in.len -= n;
	}
}

/* Parses and dispatches one request.  1 dispatched (or an error queued),
 * 0 need more input. */
static int conn_next_request(struct conn *c)
{
	int status = 400, rc;
	size_t total;
	const char *body;
	size_t blen;

	if (!c->have_head) {
		rc = http_parse_head(c, &status);
		if (rc == 0)
			return 0;
		if (rc < 0)
			goto bad;
		c->have_head = 1;
		c->ck_state = CK_SIZE;
		c->ck_pos = c->req.head_len;
		c->body.len = 0;
	}
	if (c->req.chunked) {
		rc = http_chunked(c, &status);
		if (rc < 0)
			goto bad;
		total = c->ck_pos;
		body = c->body.p;
		blen = c->body.len;
	} else {
		rc = c->in.len - c->req.head_len >= c->req.clen;
		total = c->req.head_len + c->req.clen;
		body = c->in.p + c->req.head_len;
		blen = c->req.clen;
	}
	if (rc == 0) {
		if (c->in.len >= IN_MAX) {
			status = 413;
			goto bad;
		}
		if (c->req.expect && !c->req.http10 && !c->continue_sent) {
			c->continue_sent = 1;
			if (buf_adds(&c->out, "HTTP/1.1 100 Continue\r\n\r\n") < 0)
				return -1;
		}
		return 0;
	}
	c->keepalive = c->req.keepalive;
	c->http10 = c->req.http10;
	c->head_only = c->req.method == M_HEAD;
	if (route(c, blen ? body : "", blen) < 0)
		c->keepalive = 0;
	c->have_head = 0;
	c->continue_sent = 0;
	conn_consume(c, total);
	if (c->body.cap > BUF_KEEP)
		buf_free(&c->body);
	c->body.len = 0;
	if (!c->keepalive && !c->has_job)
		c->closing = 1;
	return 1;
bad:
	c->keepalive = 0;
	c->head_only = 0;
	c->have_head = 0;
	if (status == 413)
		conn_reply(c, 413, "text/plain; charset=utf-8", "413 Request Entity Too Large", 28);
	else if (status == 501)
		conn_reply(c, 501, "text/plain; charset=utf-8", "501 Not Implemented", 19);
	else
		conn_reply(c, 400, "text/plain; charset=utf-8", "400 Bad Request", 15);
	c->closing = 1;
	c->in.len = 0;
	return 1;
}

static int conn_flush(struct conn *c)
{
	ssize_t n;

	while (conn_pending(c)) {
		n = send(c->fd, c->out.p + c->out_off, conn_pending(c), MSG_NOSIGNAL);
		if (n > 0) {
			c->out_off += (size_t)n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			return 0;
		} else {
			return -1;
		}
	}
	c->out.len = c->out_off = 0;
	if (c->out.cap > BUF_KEEP)
		buf_free(&c->out);
	return 0;
}

/* Makes all the progress possible now.  -1 when c has been freed. */
static int conn_progress(struct conn *c)
{
	int more, ph;

	if (c->lingering)
		return 0;
	for (;;) {
		more = 0;
		if (c->has_job && (c->job.phase == PH_HEAD || c->job.phase == PH_BODY))
			more = job_pump(c);
		if (conn_flush(c) < 0)
			return conn_close(c, DONE_PEER);
		if (conn_pending(c)) {
			conn_update_ev(c);
			return 0;
		}
		if (c->has_job) {
			ph = c->job.phase;
			if (ph == PH_HEAD || ph == PH_BODY) {
				if (more)
					continue;
				conn_update_ev(c);
				return 0;
			}
			if (ph == PH_HANG) {
				conn_update_ev(c);
				return 0;
			}
			if (ph == PH_CUT) {
				job_done(c, DONE_OK);
				return conn_close(c, DONE_OK);
			}
			job_done(c, DONE_OK); /* PH_DRAIN: all delivered */
			continue;
		}
		if (c->closing)
			return conn_linger(c);
		if (conn_next_request(c) == 0) {
			if (conn_flush(c) < 0)
				return conn_close(c, DONE_PEER);
			conn_update_ev(c);
			return 0;
		}
	}
}

/* Reads what has arrived.  -1 when c has been freed (peer gone). */
static int conn_read(struct conn *c)
{
	static char discard[16384];
	size_t limit, want;
	ssize_t n;
	int i;

	for (i = 0; i < 16; i++) {
		if (c->lingering) {
			n = recv(c->fd, discard, sizeof(discard), 0);
			if (n > 0)
				continue;
			if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
				return 0;
			return conn_close(c, DONE_OK);
		}
		limit = (c->has_job || c->closing) ? IN_BUSY_MAX : IN_MAX;
		if (c->in.len >= limit)
			return 0;
		if (c->in.cap - c->in.len < 4096 && buf_reserve(&c->in, 4096) < 0)
			return conn_close(c, DONE_OK);
		want = c->in.cap - c->in.len;
		if (want > limit - c->in.len)
			want = limit - c->in.len;
		n = recv(c->fd, c->in.p + c->in.len, want, 0);
		if (n > 0) {
			c->in.len += (size_t)n;
			if ((size_t)n < want)
				return 0;
		} else if (n == 0) {
			return conn_close(c, DONE_PEER);
		} else if (errno == EINTR) {
			continue;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			return 0;
		} else {
			return conn_close(c, DONE_PEER);
		}
	}
	return 0;
}

static void conn_event(struct conn *c, uint32_t ev)
{
	if (ev & (EPOLLERR | EPOLLHUP)) {
		conn_close(c, DONE_PEER);
		return;
	}
	if ((ev & EPOLLIN) && conn_read(c) < 0)
		return;
	if (ev & EPOLLRDHUP) {
		/* the client shut down its side: like Ollama (Go cancels the
		 * request context), treat it as gone */
		conn_close(c, DONE_PEER);
		return;
	}
	conn_progress(c);
}

/* -1 when c has been freed */
static int conn_timer(struct conn *c)
{
	if (c->lingering)
		return conn_close(c, DONE_OK);
	return conn_progress(c);
}

static void accept_all(void)
{
	struct epoll_event e;
	struct conn *c;
	int fd, one = 1, i;

	for (i = 0; i < 65536; i++) {
		fd = accept4(g_lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if ((errno == EMFILE || errno == ENFILE) && g_spare >= 0) {
				/* out of fds: accept and drop, so the backlog
				 * does not spin the loop */
				close(g_spare);
				fd = accept(g_lfd, NULL, NULL);
				if (fd >= 0)
					close(fd);
				g_spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
				continue;
			}
			return;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		c->hidx = -1;
		c->keepalive = 1;
		c->ev = EPOLLIN | EPOLLRDHUP;
		memset(&e, 0, sizeof(e));
		e.events = c->ev;
		e.data.ptr = c;
		if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &e) < 0) {
			close(fd);
			free(c);
			continue;
		}
		c->next = g_conns;
		if (g_conns)
			g_conns->prev = c;
		g_conns = c;
		g_nconns++;
	}
}

/* ------------------------------------------------------------------ */
/* main                                                                */

static void usage(FILE *f)
{
	fprintf(f, "usage: fake_ollama [-l ADDR] -p PORT [-P pidfile] [-r requests.log] [-d MS] "
		   "[-k KEY] [-q]\n");
}

static int listen_on(const char *addr, const char *port, char *shown, size_t shown_len)
{
	struct addrinfo hints, *ai = NULL;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[NI_MAXHOST], serv[NI_MAXSERV];
	int fd = -1, one = 1, rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	rc = getaddrinfo(addr, port, &hints, &ai);
	if (rc != 0) {
		fprintf(stderr, "fake_ollama: %s:%s: %s\n", addr, port, gai_strerror(rc));
		return -1;
	}
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 65535) < 0 ||
	    getsockname(fd, (struct sockaddr *)&ss, &sl) < 0 ||
	    getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), serv, sizeof(serv),
			NI_NUMERICHOST | NI_NUMERICSERV) != 0)
		goto fail;
	if (snprintf(shown, shown_len, ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host,
		     serv) >= (int)shown_len)
		goto fail;
	freeaddrinfo(ai);
	return fd;
fail:
	fprintf(stderr, "fake_ollama: listen %s:%s: %s\n", addr, port, strerror(errno));
	if (fd >= 0)
		close(fd);
	freeaddrinfo(ai);
	return -1;
}

/* -d MS: the default every request starts from, as if built in, so that
 * /_fake/reset and a null key return to it too. */
static int set_default_delay(const char *arg)
{
	size_t i;
	long ms;

	for (i = 0; i < CTL_NNUM; i++) {
		struct ctl_num *d = &ctl_nums[i];

		if (strcmp(d->name, "delay_ms") != 0)
			continue;
		if (parse_long(arg, strlen(arg), &ms) < 0 || ms < d->min || ms > d->max)
			return -1;
		d->def = ms;
		return 0;
	}
	return -1;
}

static int write_pidfile(const char *path)
{
	FILE *f = fopen(path, "w");

	if (!f)
		return -1;
	fprintf(f, "%ld\n", (long)getpid());
	return fclose(f) == 0 ? 0 : -1;
}

static void loop(void)
{
	struct epoll_event evs[MAX_EVENTS];
	struct signalfd_siginfo si;
	uint64_t now, d;
	int n, i, timeout;

	while (!g_stop) {
		timeout = -1;
		if (g_heap_len) {
			now = mono_us();
			d = g_heap[0].due;
			timeout = d <= now			   ? 0
				  : (d - now + 999) / 1000 > 60000 ? 60000
								   : (int)((d - now + 999) / 1000);
		}
		n = epoll_wait(g_ep, evs, MAX_EVENTS, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("fake_ollama: epoll_wait");
			return;
		}
		for (i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;

			if (p == &g_tag_listen) {
				accept_all();
			} else if (p == &g_tag_signal) {
				while (read(g_sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
					g_stop = 1;
			} else {
				conn_event(p, evs[i].events);
			}
		}
		now = mono_us();
		/* a step re-arms its own timer (one sift instead of a pop and a
		 * push); whatever is still due afterwards waits for EPOLLOUT */
		while (g_heap_len && g_heap[0].due <= now) {
			struct conn *c = g_heap[0].c;

			if (conn_timer(c) == 0 && c->hidx >= 0 && g_heap[c->hidx].due <= now)
				tmr_del(c);
		}
	}
}

int main(int argc, char **argv)
{
	const char *addr = "127.0.0.1", *port = "11434", *pidfile = NULL, *logfile = NULL;
	char shown[NI_MAXHOST + NI_MAXSERV + 8];
	struct epoll_event e;
	struct rlimit rl;
	sigset_t mask;
	int opt, rc = 1, pid_written = 0;

	while ((opt = getopt(argc, argv, "l:p:P:r:d:k:qh")) != -1) {
		switch (opt) {
		case 'k': g_api_key = optarg; break;
		case 'l': addr = optarg; break;
		case 'd':
			if (set_default_delay(optarg) < 0) {
				fprintf(stderr, "fake_ollama: -d %s: expected milliseconds\n",
					optarg);
				return 2;
			}
			break;
		case 'p': port = optarg; break;
		case 'P': pidfile = optarg; break;
		case 'r': logfile = optarg; break;
		case 'q': g_quiet = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	json_plain_init();
	ctl_defaults(&g_cfg);
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0 ||
	    (g_sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0) {
		perror("fake_ollama: signalfd");
		goto out;
	}
	if (logfile &&
	    (g_logfd = open(logfile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0) {
		fprintf(stderr, "fake_ollama: %s: %s\n", logfile, strerror(errno));
		goto out;
	}
	g_spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if ((g_lfd = listen_on(addr, port, shown, sizeof(shown))) < 0)
		goto out;
	if ((g_ep = epoll_create1(EPOLL_CLOEXEC)) < 0) {
		perror("fake_ollama: epoll_create1");
		goto out;
	}
	memset(&e, 0, sizeof(e));
	e.events = EPOLLIN;
	e.data.ptr = &g_tag_listen;
	if (epoll_ctl(g_ep, EPOLL_CTL_ADD, g_lfd, &e) < 0)
		goto out;
	e.data.ptr = &g_tag_signal;
	if (epoll_ctl(g_ep, EPOLL_CTL_ADD, g_sfd, &e) < 0)
		goto out;
	if (pidfile) {
		if (write_pidfile(pidfile) < 0) {
			fprintf(stderr, "fake_ollama: %s: %s\n", pidfile, strerror(errno));
			goto out;
		}
		pid_written = 1;
	}
	printf("fake_ollama listening on %s\n", shown);
	fflush(stdout);
	loop();
	rc = 0;
out:
	while (g_conns)
		conn_close(g_conns, DONE_OK);
	rec_clear();
	ctl_free(&g_cfg);
	buf_free(&g_line);
	free(g_heap);
	if (pid_written)
		unlink(pidfile);
	if (g_ep >= 0)
		close(g_ep);
	if (g_lfd >= 0)
		close(g_lfd);
	if (g_sfd >= 0)
		close(g_sfd);
	if (g_spare >= 0)
		close(g_spare);
	if (g_logfd >= 0)
		close(g_logfd);
	return rc;
}
