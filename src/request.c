/*
 * request — FastCGI request parsing (see request.h): path normalisation,
 * query strings, the capped body, JSON and form data.
 *
 * Parsing is written once here for every responder; the one rule it
 * enforces for all of them is that what reaches a handler is valid UTF-8
 * without NUL characters, so nothing stored can be mangled later.
 */
#include "request.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "response.h"

int request_accept(FCGX_Request *fcgx, int fd, int timeout_ms)
{
	struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};

	if (fd >= 0) {
		if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
		    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0)
			log_warn("socket timeouts: %s", strerror(errno));
		fcgx->ipcFd = fd;
	}
	/* Not closed by the finish step FCGX_Accept_r starts with; the
	 * request's own flags decide again once it is read. */
	fcgx->keepConnection = 1;
	/* The request has no listening socket (FCGX_InitRequest(-1)): when
	 * reading fails, libfcgi closes the connection and its own attempt to
	 * accept another fails at once instead of waiting. */
	return FCGX_Accept_r(fcgx) < 0 ? -1 : 0;
}

void request_begin(struct request *r, FCGX_Request *fcgx, struct worker *w)
{
	const char *uri, *m;
	size_t n;

	memset(r, 0, sizeof *r);
	r->fcgx = fcgx;
	r->worker = w;
	r->first_chunk_ms = -1;
	r->endpoint = METRICS_EP_OTHER;
	clock_gettime(CLOCK_MONOTONIC, &r->started);
	buf_init(&r->body, config.body_max);

	m = FCGX_GetParam("REQUEST_METHOD", fcgx->envp);
	r->method = m ? m : "GET";
	r->query = FCGX_GetParam("QUERY_STRING", fcgx->envp);
	if (!r->query)
		r->query = "";
	uri = FCGX_GetParam("DOCUMENT_URI", fcgx->envp);
	if (!uri)
		uri = FCGX_GetParam("SCRIPT_NAME", fcgx->envp);
	if (!uri)
		uri = "/";
	/* One trailing slash is optional ("/api/chat/" is "/api/chat");
	 * "/api/chat//" is another path, and a 404. */
	n = strlen(uri);
	if (n > 1 && uri[n - 1] == '/')
		n--;
	r->path = strndup(uri, n);
}

double request_elapsed_ms(const struct request *r)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - r->started.tv_sec) * 1e3 +
	       (double)(now.tv_nsec - r->started.tv_nsec) / 1e6;
}

void request_end(struct request *r)
{
	struct log_request_fields f = {
		.method = r->method,
		.path = r->path,
		.status = r->status,
		.user_id = r->user_id,
		.duration_ms = request_elapsed_ms(r),
		.first_chunk_ms = r->first_chunk_ms,
		.bytes = r->bytes_out,
		.note = r->note[0] ? r->note : NULL,
	};

	if (r->handed_off)
		goto out;
	if (!r->headers_sent && !r->client_gone) {
		/* A handler that forgot to answer is a bug; still answer. */
		resp_detail(r, 500, "Internal server error.");
		f.status = r->status;
	}
	log_request(&f);
	metrics_count_request(r->endpoint, r->status);
out:
	free(r->path);
	buf_free(&r->body);
	cJSON_Delete(r->data);
	r->path = NULL;
	r->data = NULL;
}

const char *request_param(const struct request *r, const char *name)
{
	return FCGX_GetParam(name, r->fcgx->envp);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int url_decode(const char *s, size_t n, struct buf *out)
{
	size_t i;

	buf_reset(out);
	for (i = 0; i < n; i++) {
		char c = s[i];

		if (c == '+') {
			c = ' ';
		} else if (c == '%') {
			int hi, lo;

			if (i + 2 >= n)
				return -1;
			hi = hexval(s[i + 1]);
			lo = hexval(s[i + 2]);
			if (hi < 0 || lo < 0)
				return -1;
			c = (char)(hi * 16 + lo);
			i += 2;
		}
		if (buf_putc(out, c) != BUF_OK)
			return -1;
	}
	return utf8_valid(out->data ? out->data : "", out->len) ? 0 : -1;
}

int form_lookup(const char *qs, const char *name, struct buf *out)
{
	const char *p = qs, *value = NULL;
	size_t valuelen = 0;
	struct buf key;
	int found = 0;

	/* Keys are decoded before they are compared ("conversation%5Fid" is
	 * conversation_id).  A key given twice is refused: which one the
	 * client meant is a guess, as with duplicate JSON keys. */
	buf_init(&key, 256);
	while (p && *p) {
		const char *amp = strchr(p, '&');
		size_t len = amp ? (size_t)(amp - p) : strlen(p);
		const char *eq = memchr(p, '=', len);
		size_t keylen = eq ? (size_t)(eq - p) : len;

		if (keylen < key.max && url_decode(p, keylen, &key) == 0 &&
		    strcmp(buf_str(&key), name) == 0) {
			if (found++) {
				buf_free(&key);
				return -1;
			}
			value = eq ? eq + 1 : "";
			valuelen = eq ? len - keylen - 1 : 0;
		}
		p = amp ? amp + 1 : NULL;
	}
	buf_free(&key);
	if (!found)
		return 0;
	return url_decode(value, valuelen, out) < 0 ? -1 : 1;
}

int request_split_bearer(const char *header, const char **token, size_t *len)
{
	const char *p = header, *word[3];
	size_t wlen[3];
	int n = 0;

	while (*p && n < 3) {
		while (*p == ' ' || *p == '\t')
			p++;
		if (!*p)
			break;
		word[n] = p;
		while (*p && *p != ' ' && *p != '\t')
			p++;
		wlen[n] = (size_t)(p - word[n]);
		n++;
	}
	if (n == 0 || wlen[0] != 6 || memcmp(word[0], "Bearer", 6) != 0)
		return 1;
	if (n != 2)
		return -1;
	*token = word[1];
	*len = wlen[1];
	return 0;
}

const char request_bad_query[] =
	"Malformed in the query string: bad percent-encoding, not UTF-8, or given twice.";

int request_query(const struct request *r, const char *name, struct buf *out)
{
	return form_lookup(r->query, name, out);
}

#define MAX_FIELDS 64 /* our bodies have a handful */

/* Form body → JSON object of strings, so handlers see one shape.  A key
 * given twice, or more than MAX_FIELDS fields, is refused, as in a JSON
 * body (and so no lookup here ever scans more than MAX_FIELDS). */
static cJSON *form_to_json(const char *body, size_t n)
{
	cJSON *obj = cJSON_CreateObject();
	struct buf key, val;
	size_t i = 0;
	int fields = 0;

	buf_init(&key, n + 1);
	buf_init(&val, n + 1);
	if (!obj)
		goto fail;
	while (i < n) {
		const char *p = body + i, *amp = memchr(p, '&', n - i);
		size_t len = amp ? (size_t)(amp - p) : n - i;
		const char *eq = memchr(p, '=', len);
		size_t keylen = eq ? (size_t)(eq - p) : len;

		if (len > 0) {
			if (url_decode(p, keylen, &key) < 0)
				goto fail;
			if (key.len == 0) { /* "&=&": nothing anybody meant */
				i += len + 1;
				continue;
			}
			if (url_decode(eq ? eq + 1 : "", eq ? len - keylen - 1 : 0, &val) < 0)
				goto fail;
			if (++fields > MAX_FIELDS ||
			    cJSON_GetObjectItemCaseSensitive(obj, buf_str(&key)) ||
			    !cJSON_AddStringToObject(obj, buf_str(&key), buf_str(&val)))
				goto fail;
		}
		i += len + 1;
	}
	buf_free(&key);
	buf_free(&val);
	return obj;
fail:
	buf_free(&key);
	buf_free(&val);
	cJSON_Delete(obj);
	return NULL;
}

/* What cJSON lets through but JSON forbids or we cannot keep, inside
 * strings: a raw control byte (JSON requires it escaped), and "\u0000",
 * which cJSON turns into a C string that ends early, silently cutting a
 * message.  NULL when the body is clean, else the reason. */
static const char *json_string_problem(const char *s, size_t n)
{
	int in_string = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (!in_string) {
			in_string = c == '"';
		} else if (c == '"') {
			in_string = 0;
		} else if (c < 0x20) {
			return "JSON parse error - control characters in strings must be escaped.";
		} else if (c == '\\' && i + 1 < n) {
			if (s[i + 1] == 'u' && i + 5 < n && memcmp(s + i + 2, "0000", 4) == 0)
				return "JSON parse error - NUL characters (\\u0000) are not "
				       "allowed.";
			i++; /* the escaped character */
		}
	}
	return NULL;
}

/* Which of two "message" keys is meant is a guess; refuse to guess.  More
 * than MAX_FIELDS is refused as well, which keeps this pairwise check
 * cheap. */
static int json_has_duplicate_key(const cJSON *obj)
{
	const cJSON *a, *b;

	if (cJSON_GetArraySize(obj) > MAX_FIELDS)
		return 1;
	for (a = obj->child; a; a = a->next)
		for (b = a->next; b; b = b->next)
			if (a->string && b->string && strcmp(a->string, b->string) == 0)
				return 1;
	return 0;
}

/* Is the media type of a Content-Type value `type` (parameters such as
 * "; charset=utf-8" allowed; "application/jsonlines" is not JSON)? */
static int media_type_is(const char *value, const char *type)
{
	size_t n = strlen(type);

	while (*value == ' ' || *value == '\t')
		value++;
	if (strncasecmp(value, type, n) != 0)
		return 0;
	value += n;
	while (*value == ' ' || *value == '\t')
		value++;
	return *value == '\0' || *value == ';';
}

int request_decode_body(const char *body, size_t n, const char *type, cJSON **data, char *reason,
			size_t reasonlen)
{
	const char *end = NULL, *problem;

	*data = NULL;
	if (!type)
		type = "";
	if (media_type_is(type, "application/x-www-form-urlencoded")) {
		*data = form_to_json(body, n);
		if (*data)
			return 0;
		snprintf(reason, reasonlen,
			 "Form parse error - invalid encoding, not UTF-8, a "
			 "field given twice or more than 64 fields.");
		return 400;
	}
	if (*type && !media_type_is(type, "application/json")) {
		size_t i, len = strcspn(type, ";");

		/* The header is the client's: echo a short, printable prefix. */
		snprintf(reason, reasonlen, "Unsupported media type \"%.*s\" in request.",
			 (int)(len > 100 ? 100 : len), type);
		for (i = 0; reason[i]; i++)
			if ((unsigned char)reason[i] < 0x20 || (unsigned char)reason[i] >= 0x7f)
				reason[i] = '?';
		return 415;
	}
	if (n == 0) {
		*data = cJSON_CreateObject(); /* DRF: an empty body is {} */
		if (*data)
			return 0;
		snprintf(reason, reasonlen, "Out of memory.");
		return 500;
	}
	if (!utf8_valid(body, n)) {
		snprintf(reason, reasonlen,
			 "JSON parse error - body is not valid UTF-8 or contains NUL bytes.");
		return 400;
	}
	if ((problem = json_string_problem(body, n)) != NULL) {
		snprintf(reason, reasonlen, "%s", problem);
		return 400;
	}
	*data = cJSON_ParseWithLengthOpts(body, n, &end, 0);
	/* Only white space may follow the value (bounded: body need not end
	 * in NUL). */
	while (*data && end < body + n &&
	       (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
		end++;
	if (!*data || end != body + n) {
		snprintf(reason, reasonlen, "JSON parse error - malformed JSON.");
		cJSON_Delete(*data);
		*data = NULL;
		return 400;
	}
	if (!cJSON_IsObject(*data)) {
		snprintf(reason, reasonlen, "Invalid data. Expected a dictionary.");
	} else if (json_has_duplicate_key(*data)) {
		snprintf(reason, reasonlen,
			 "JSON parse error - duplicate keys or more than 64 fields in object.");
	} else {
		return 0;
	}
	cJSON_Delete(*data);
	*data = NULL;
	return 400;
}

int request_parse_body(struct request *r)
{
	const char *len_s = request_param(r, "CONTENT_LENGTH");
	char chunk[4096], reason[256]; /* small: worker stacks may be 64 KiB */
	int got, status;

	if (len_s && *len_s && strtoull(len_s, NULL, 10) > config.body_max)
		goto too_big;
	while ((got = FCGX_GetStr(chunk, sizeof chunk, r->fcgx->in)) > 0)
		if (buf_append(&r->body, chunk, (size_t)got) != BUF_OK)
			goto too_big;
	/* A read error or timeout (server.c) is a peer gone mid-body: a
	 * truncated form body would otherwise pass for a whole one. */
	if (FCGX_GetError(r->fcgx->in) != 0) {
		r->client_gone = 1;
		r->status = 499;
		snprintf(r->note, sizeof r->note, "outcome=body_unread");
		return -1;
	}
	if (len_s && *len_s && strtoull(len_s, NULL, 10) != r->body.len) {
		resp_detail(r, 400, "Request body shorter than its Content-Length.");
		return -1;
	}
	status = request_decode_body(buf_str(&r->body), r->body.len,
				     request_param(r, "CONTENT_TYPE"), &r->data, reason,
				     sizeof reason);
	if (status == 0)
		return 0;
	resp_detail(r, status, reason);
	return -1;
too_big:
	snprintf(reason, sizeof reason, "Request body too large (limit %zu bytes).",
		 config.body_max);
	resp_detail(r, 413, reason);
	return -1;
}

int request_field(const struct request *r, const char *name, const char **out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->data, name);

	if (!v)
		return REQUEST_FIELD_MISSING;
	if (cJSON_IsNull(v))
		return REQUEST_FIELD_NULL;
	if (!cJSON_IsString(v))
		return REQUEST_FIELD_INVALID;
	*out = v->valuestring;
	return REQUEST_FIELD_FOUND;
}

const char *request_field_problem(int rc)
{
	switch (rc) {
	case REQUEST_FIELD_FOUND: return NULL;
	case REQUEST_FIELD_MISSING: return "This field is required.";
	case REQUEST_FIELD_NULL: return "This field may not be null.";
	default: return "Not a valid string.";
	}
}
