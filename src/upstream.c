/*
 * upstream — the curl transport to the LLM server (see upstream.h).
 *
 * The hot path: curl's write callback → ndjson_feed() → parse_line() →
 * the protocol's decoder (wire/) → call->on_content().  The timeouts are
 * checked in one place, upstream_xfer_idle(): in a blocking call from
 * curl's progress callback (called at least once a second, also while
 * nothing arrives), for the streams from relay.c's tick.
 */
#include "upstream.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "config.h"
#include "log.h"
#include "ndjson.h"
#include "server.h"
#include "utf8.h"

#define LINE_MAX_BYTES (4u << 20)  /* one line of the answer */
#define ERROR_BODY_MAX (64u << 10) /* body of a non-2xx answer we keep */

/* A worker thread's handle for blocking calls (chat). */
struct upstream {
	CURL *curl;
	struct upstream_xfer x;
};

/* Built once by upstream_global_init(), read-only afterwards. */
static const struct wire *wire;
static struct curl_slist *headers;     /* of a chat request */
static struct curl_slist *get_headers; /* of a GET: the API key alone */
static char *chat_url;

double upstream_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One connection cache for every worker of the process: a thread that
 * starts a stream takes any idle connection to the model server instead of
 * opening its own.  curl calls these locks around the shared cache. */
static CURLSH *share;
static pthread_mutex_t share_lock = PTHREAD_MUTEX_INITIALIZER; /* guards share's data */

static void share_lock_fn(CURL *h, curl_lock_data what, curl_lock_access how, void *ctx)
{
	(void)h, (void)what, (void)how, (void)ctx;
	pthread_mutex_lock(&share_lock);
}

static void share_unlock_fn(CURL *h, curl_lock_data what, void *ctx)
{
	(void)h, (void)what, (void)ctx;
	pthread_mutex_unlock(&share_lock);
}

/* "Authorization: Bearer KEY" appended when a key is set.  0 or -1. */
static int add_key(struct curl_slist **list)
{
	struct buf h;
	struct curl_slist *l;

	if (!config.upstream_api_key)
		return 0;
	buf_init(&h, 16384);
	if (buf_printf(&h, "Authorization: Bearer %s", config.upstream_api_key) != BUF_OK) {
		buf_free(&h);
		return -1;
	}
	l = curl_slist_append(*list, buf_str(&h));
	sodium_memzero(h.data, h.len); /* curl keeps its own copy */
	buf_free(&h);
	if (!l)
		return -1;
	*list = l;
	return 0;
}

int upstream_global_init(void)
{
	struct buf url;

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return -1;
	wire = wire_find(config.upstream_api);
	if (!wire)
		return -1; /* config_load() refused it already */
	buf_init(&url, 8192);
	if (buf_printf(&url, "%s%s", config.upstream_url, wire->chat_path) != BUF_OK) {
		buf_free(&url);
		return -1;
	}
	chat_url = buf_steal(&url);
	/* Expect: 100-continue would cost a round trip on larger bodies. */
	headers = curl_slist_append(NULL, "Content-Type: application/json");
	if (headers)
		headers = curl_slist_append(headers, "Expect:");
	if (!headers || !chat_url || add_key(&headers) < 0 || add_key(&get_headers) < 0)
		return -1;
	share = curl_share_init();
	if (!share || curl_share_setopt(share, CURLSHOPT_LOCKFUNC, share_lock_fn) ||
	    curl_share_setopt(share, CURLSHOPT_UNLOCKFUNC, share_unlock_fn) ||
	    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT)) {
		/* Each handle then keeps its own connection: slower, still right. */
		log_warn("curl connection sharing unavailable");
		if (share)
			curl_share_cleanup(share);
		share = NULL;
	}
	/* A new connection to an https upstream resumes a TLS session instead
	 * of a full handshake; without it, only slower. */
	if (share && curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION))
		log_warn("curl TLS session sharing unavailable");
	return 0;
}

void upstream_global_cleanup(void)
{
	if (share)
		curl_share_cleanup(share);
	share = NULL;
	curl_slist_free_all(headers);
	curl_slist_free_all(get_headers);
	headers = get_headers = NULL;
	free(chat_url);
	chat_url = NULL;
	curl_global_cleanup();
}

void upstream_xfer_init(struct upstream_xfer *x)
{
	memset(x, 0, sizeof *x);
	ndjson_init(&x->nd, LINE_MAX_BYTES);
	buf_init(&x->error_body, ERROR_BODY_MAX);
	buf_init(&x->request_body, 64u << 20);
	buf_init(&x->piece, LINE_MAX_BYTES + sizeof x->tail);
}

void upstream_xfer_free(struct upstream_xfer *x)
{
	ndjson_free(&x->nd);
	buf_free(&x->error_body);
	buf_free(&x->request_body);
	buf_free(&x->piece);
}

void upstream_free(struct upstream *u)
{
	if (!u)
		return;
	curl_easy_cleanup(u->curl);
	upstream_xfer_free(&u->x);
	free(u);
}

static struct upstream *upstream_new(void)
{
	struct upstream *u = calloc(1, sizeof *u);

	if (!u)
		return NULL;
	upstream_xfer_init(&u->x);
	u->curl = curl_easy_init();
	if (!u->curl) {
		upstream_free(u);
		return NULL;
	}
	return u;
}

static void fail_with(struct upstream_xfer *s, enum metrics_upstream_error kind, const char *fmt,
		      ...) __attribute__((format(printf, 3, 4)));

static void fail_with(struct upstream_xfer *s, enum metrics_upstream_error kind, const char *fmt,
		      ...)
{
	char text[sizeof s->res->error * 2];
	va_list ap;

	if (s->failed)
		return; /* the first reason is the real one */
	s->failed = 1;
	s->res->kind = kind;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	/* The model's words may be invalid UTF-8 or longer than the room:
	 * repaired, and cut between characters. */
	utf8_copy(s->res->error, sizeof s->res->error, text);
}

/* Hand a piece of content on as valid UTF-8.  A character split between
 * two pieces is joined again (the start waits in s->tail); anything else
 * invalid becomes U+FFFD.  The usual piece is valid and whole, and goes
 * on as it is.  flush: the reply ends here, so a waiting start is
 * invalid too.  0, or -1 when the receiver asked to stop. */
static int give_content(struct upstream_xfer *s, const char *text, size_t n, int flush)
{
	const char *p = text;
	size_t keep;

	if (s->tail_len == 0 && utf8_valid(text, n))
		return n && s->call.on_content(s->call.ctx, text, n) < 0 ? -1 : 0;
	buf_reset(&s->piece);
	if (buf_append(&s->piece, s->tail, s->tail_len) != BUF_OK ||
	    buf_append(&s->piece, text, n) != BUF_OK)
		return -1;
	p = s->piece.data;
	n = s->piece.len;
	keep = flush ? 0 : utf8_incomplete_tail(p, n);
	memcpy(s->tail, p + n - keep, keep);
	s->tail_len = keep;
	n -= keep;
	if (!utf8_valid(p, n)) {
		struct buf fixed;
		int rc;

		buf_init(&fixed, 3 * n + 1);
		rc = utf8_sanitize(&fixed, p, n) < 0 ||
				     s->call.on_content(s->call.ctx, fixed.data, fixed.len) < 0
			     ? -1
			     : 0;
		buf_free(&fixed);
		return rc;
	}
	return n && s->call.on_content(s->call.ctx, p, n) < 0 ? -1 : 0;
}

/* What a decoded line tells about the answer: its usage, its finish. */
static void keep_line(struct upstream_xfer *s, const struct wire_line *l)
{
	if (l->prompt_tokens >= 0)
		s->res->prompt_tokens = l->prompt_tokens;
	if (l->completion_tokens >= 0)
		s->res->completion_tokens = l->completion_tokens;
	if (l->finish_reason && !s->finished) {
		s->finished = 1;
		s->finished_at = upstream_now();
		utf8_copy(s->res->finish_reason, sizeof s->res->finish_reason, l->finish_reason);
	}
}

/* Has a decoded line anything in it that may not follow the last one? */
static int says_something(const struct wire_line *l)
{
	return l->content || l->end || l->finish_reason || l->prompt_tokens >= 0 ||
	       l->completion_tokens >= 0;
}

/* One line of a 2xx answer. */
static int parse_line(void *ctx, const char *line, size_t n)
{
	struct upstream_xfer *s = ctx;
	struct wire_line l;
	int rc = -1, last;

	if (wire->decode(line, n, &l) < 0) {
		fail_with(s, METRICS_UE_MALFORMED,
			  "The language model sent a malformed response line.");
		goto out;
	}
	if (l.error) {
		fail_with(s, METRICS_UE_ERROR_LINE, "%s", l.error);
		goto out;
	}
	if (s->done && says_something(&l)) {
		fail_with(s, METRICS_UE_MALFORMED,
			  "The language model sent data after its last message.");
		goto out;
	}
	/* The reply ends with this line: a character it left open is invalid. */
	last = l.end || l.finish_reason;
	if ((l.len || (last && s->tail_len)) &&
	    give_content(s, l.content ? l.content : "", l.len, last) < 0) {
		s->stopped = 1;
		goto out;
	}
	keep_line(s, &l);
	if (l.end) {
		s->done = 1;
		s->done_at = upstream_now();
		if (s->call.on_done)
			s->call.on_done(s->call.ctx);
	}
	rc = 0;
out:
	wire_line_free(&l);
	return rc;
}

static size_t on_write(char *p, size_t size, size_t nmemb, void *ctx)
{
	struct upstream_xfer *s = ctx;
	size_t n = size * nmemb;
	int rc;

	s->last_data = upstream_now();
	if (!s->http_status)
		curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &s->http_status);
	if (s->http_status < 200 || s->http_status > 299) {
		/* Keep what fits of an error body; its reason goes to the user. */
		size_t room = s->error_body.max - s->error_body.len;

		if (buf_append(&s->error_body, p, n < room ? n : room) != BUF_OK)
			buf_reset(&s->error_body); /* out of memory: say only the status */
		return n;
	}
	rc = ndjson_feed(&s->nd, p, n, parse_line, s);
	if (rc == -2)
		fail_with(s, METRICS_UE_MALFORMED,
			  "The language model sent a line longer than %u bytes.", LINE_MAX_BYTES);
	return rc == 0 ? n : 0;
}

/* Has nginx closed this FastCGI connection?  It does when the client
 * leaves (it sends no abort record), and sends nothing else once the
 * request is in, so a hang-up is the only thing to look for. */
static int peer_closed(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLRDHUP};

	return fd >= 0 && poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

static int on_progress(void *ctx, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
		       curl_off_t ulnow)
{
	struct upstream_xfer *s = ctx;
	const struct upstream_call *c = &s->call;
	double t = upstream_now();

	(void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
	if (s->done && t - s->done_at > UPSTREAM_DONE_GRACE_S)
		return 1; /* finished; the body's end never came */
	if (peer_closed(c->client_fd)) {
		s->stopped = 1; /* nobody is waiting for the answer any more */
		return 1;
	}
	if (c->stop_requested && t - s->stop_polled >= UPSTREAM_STOP_POLL_S) {
		s->stop_polled = t;
		if (c->stop_requested(c->ctx)) {
			s->stopped = 1;
			return 1;
		}
	}
	return upstream_xfer_idle(s, t);
}

int upstream_http_reason(const char *body, size_t n, long status, char *out, size_t cap)
{
	int said = 1;

	cJSON *o = cJSON_ParseWithLength(body ? body : "", n);
	const cJSON *err = cJSON_GetObjectItemCaseSensitive(o, "error");
	const cJSON *msg =
		cJSON_GetObjectItemCaseSensitive(cJSON_IsObject(err) ? err : o, "message");
	char fallback[64];

	if (cJSON_IsString(err) && err->valuestring[0]) {
		utf8_copy(out, cap, err->valuestring);
	} else if (cJSON_IsString(msg) && msg->valuestring[0]) {
		utf8_copy(out, cap, msg->valuestring);
	} else {
		snprintf(fallback, sizeof fallback, "The language model answered HTTP %ld.",
			 status);
		utf8_copy(out, cap, fallback);
		said = 0;
	}
	cJSON_Delete(o);
	return said;
}

/* The reason in a non-2xx answer, as the server put it. */
static void fail_http(struct upstream_xfer *s)
{
	char reason[sizeof s->res->error];

	upstream_http_reason(s->error_body.data, s->error_body.len, s->http_status, reason,
			     sizeof reason);
	fail_with(s, METRICS_UE_HTTP, "%s", reason);
}

/* HTTPS: curl verifies the certificate and the host name by default;
 * a private CA comes from JARVAS_UPSTREAM_CA_FILE. */
static void set_tls(CURL *c)
{
	if (config.upstream_ca_file)
		curl_easy_setopt(c, CURLOPT_CAINFO, config.upstream_ca_file);
}

int upstream_xfer_prepare(struct upstream_xfer *x, const struct upstream_call *call,
			  struct upstream_result *res, int blocking)
{
	CURL *c = x->curl;

	memset(res, 0, sizeof *res);
	res->prompt_tokens = res->completion_tokens = -1;
	x->call = *call;
	x->res = res;
	x->http_status = 0;
	x->finished = x->done = x->failed = x->stopped = 0;
	x->curl_error[0] = '\0';
	ndjson_reset(&x->nd);
	buf_reset(&x->error_body);
	x->tail_len = 0;
	buf_reset(&x->request_body);
	if (!c ||
	    wire->chat_body(&x->request_body, call->model, call->messages, call->nmessages) < 0) {
		res->outcome = UPSTREAM_FAILED;
		res->kind = METRICS_UE_OTHER;
		snprintf(res->error, sizeof res->error, "Out of memory.");
		return -1;
	}
	x->call.messages = NULL; /* in the body now; the caller may free them */
	x->started = x->last_data = upstream_now();

	curl_easy_reset(c); /* keeps the connection cache */
	curl_easy_setopt(c, CURLOPT_URL, chat_url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, x->request_body.data);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->request_body.len);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(c, CURLOPT_PRIVATE, x);
	if (blocking) {
		curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
		curl_easy_setopt(c, CURLOPT_XFERINFODATA, x);
		curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	}
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)config.upstream_connect_timeout);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, x->curl_error);
	curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	/* The lines are a few hundred bytes: 16 KiB per stream is waste. */
	curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 4096L);
	set_tls(c);
	if (blocking && share) {
		curl_easy_setopt(c, CURLOPT_SHARE, share);
		curl_easy_setopt(c, CURLOPT_MAXCONNECTS, 1024L);
	}
	return 0;
}

/* The one place the timeouts are enforced: from curl's progress callback
 * in a blocking call, from relay.c's tick for the streams. */
int upstream_xfer_idle(struct upstream_xfer *x, double now)
{
	const struct upstream_call *c = &x->call;

	if (x->finished && !x->done && now - x->finished_at > UPSTREAM_FINISH_GRACE_S)
		return 1; /* whole, its end marker never came: ended as done */
	if (now - x->last_data > c->idle_timeout) {
		fail_with(x, METRICS_UE_TIMEOUT, "The language model sent nothing for %d seconds.",
			  c->idle_timeout);
		return 1;
	}
	if (c->total_timeout && now - x->started > c->total_timeout) {
		fail_with(x, METRICS_UE_TIMEOUT,
			  "The language model did not finish within %d seconds.", c->total_timeout);
		return 1;
	}
	return 0;
}

/* The transfer never reached the server: it could not be found or
 * connected to, or (https) not trusted: its certificate did not verify
 * against the CAs or names another host, or the handshake failed. */
static int never_reached(CURLcode cc)
{
	switch (cc) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_CRL_BADFILE: return 1;
	default: return 0;
	}
}

int upstream_xfer_finish(struct upstream_xfer *s, CURLcode cc)
{
	struct upstream_result *res = s->res;

	res->http_status = s->http_status;
	if (!s->http_status)
		curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &res->http_status);

	if (s->stopped) {
		res->outcome = UPSTREAM_STOPPED;
		return -1;
	}
	if (!s->failed && res->http_status && (res->http_status < 200 || res->http_status > 299)) {
		s->http_status = res->http_status;
		fail_http(s);
	}
	/* After the model's last line (or its finish reason) a transfer may
	 * be ended by us (the body stayed open) or break: the answer is whole
	 * either way. */
	if (!s->failed && cc != CURLE_OK && !s->done && !s->finished) {
		if (never_reached(cc))
			fail_with(s, METRICS_UE_CONNECT,
				  "Could not reach the language model at %s: %s",
				  config.upstream_url,
				  s->curl_error[0] ? s->curl_error : curl_easy_strerror(cc));
		else
			fail_with(s, METRICS_UE_CUT,
				  "The connection to the language model broke before the answer "
				  "was finished (%s).",
				  s->curl_error[0] ? s->curl_error : curl_easy_strerror(cc));
	}
	if (!s->failed && ndjson_pending(&s->nd) > 0)
		ndjson_feed(&s->nd, "\n", 1, parse_line, s); /* last line lacked \n */
	if (s->stopped) {
		res->outcome = UPSTREAM_STOPPED; /* that last line's receiver left */
		return -1;
	}
	if (!s->failed && !s->done && !s->finished)
		fail_with(s, METRICS_UE_CUT,
			  "The language model's answer ended before it was finished.");
	if (s->failed) {
		res->outcome = UPSTREAM_FAILED;
		metrics_upstream_error(res->kind);
		return -1;
	}
	res->outcome = UPSTREAM_DONE;
	return 0;
}

int upstream_chat(struct worker *w, const struct upstream_call *call, struct upstream_result *res)
{
	struct upstream *u;

	if (!w->upstream)
		w->upstream = upstream_new();
	u = w->upstream;
	if (!u) {
		memset(res, 0, sizeof *res);
		res->outcome = UPSTREAM_FAILED;
		res->kind = METRICS_UE_OTHER;
		snprintf(res->error, sizeof res->error, "Out of memory.");
		return -1;
	}
	u->x.curl = u->curl;
	if (upstream_xfer_prepare(&u->x, call, res, 1) < 0)
		return -1;
	return upstream_xfer_finish(&u->x, curl_easy_perform(u->curl));
}

/* A GET's body, kept up to its cap (the rest is dropped: a list of
 * models that long is not one to read). */
static size_t keep_body(char *p, size_t size, size_t nmemb, void *ctx)
{
	struct buf *b = ctx;
	size_t n = size * nmemb, room = b->max - b->len;

	if (buf_append(b, p, n < room ? n : room) != BUF_OK)
		buf_reset(b);
	return n;
}

int upstream_models(int timeout_ms, void (*fn)(void *ctx, const char *name), void *ctx, char *err,
		    size_t errlen)
{
	char curl_error[CURL_ERROR_SIZE] = "";
	struct buf url, body;
	CURL *c = NULL;
	CURLcode cc;
	long status = 0;
	int rc = -1;

	buf_init(&url, 8192);
	buf_init(&body, ERROR_BODY_MAX * 16);
	if (buf_printf(&url, "%s%s", config.upstream_url, wire->models_path) != BUF_OK ||
	    !(c = curl_easy_init())) {
		snprintf(err, errlen, "cannot build the request for %s", wire->models_path);
		goto out;
	}
	curl_easy_setopt(c, CURLOPT_URL, buf_str(&url));
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, get_headers);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, keep_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_error);
	set_tls(c);
	if (share) /* the chat calls' connections (and TLS sessions) */
		curl_easy_setopt(c, CURLOPT_SHARE, share);
	cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	if (cc != CURLE_OK) {
		snprintf(err, errlen, "%s", curl_error[0] ? curl_error : curl_easy_strerror(cc));
	} else if (status != 200) {
		char reason[256];
		int said = upstream_http_reason(body.data, body.len, status, reason, sizeof reason);

		snprintf(err, errlen, "GET %s answered HTTP %ld%s%s", wire->models_path, status,
			 said ? ": " : "", said ? reason : "");
	} else if (fn && wire->models(body.data ? body.data : "", body.len, fn, ctx) < 0) {
		snprintf(err, errlen, "GET %s answered something that is not a list of models",
			 wire->models_path);
	} else {
		rc = 0;
	}
out:
	curl_easy_cleanup(c);
	buf_free(&url);
	buf_free(&body);
	return rc;
}
