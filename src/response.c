/*
 * response — status, headers and bodies written to nginx (see response.h).
 * Error bodies follow Django REST Framework's shapes so existing clients
 * keep working: {"detail": "..."} and per-field lists.
 */
#include "response.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "buf.h"
#include "request.h"
#include "utf8.h"

static const char *reason_phrase(int status)
{
	switch (status) {
	case 200: return "OK";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 413: return "Payload Too Large";
	case 415: return "Unsupported Media Type";
	case 429: return "Too Many Requests";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Unknown";
	}
}

int resp_write(struct request *r, const char *p, size_t n)
{
	if (r->client_gone)
		return -1;
	if (n == 0)
		return 0;
	if (FCGX_PutStr(p, (int)n, r->fcgx->out) != (int)n) {
		r->client_gone = 1;
		return -1;
	}
	r->bytes_out += n;
	return 0;
}

int resp_flush(struct request *r)
{
	if (r->client_gone)
		return -1;
	if (FCGX_FFlush(r->fcgx->out) < 0) {
		r->client_gone = 1;
		return -1;
	}
	return 0;
}

int resp_headers(struct request *r, int status, const char *content_type, long content_length,
		 const char *extra_headers)
{
	struct buf h;
	int rc;

	if (r->headers_sent)
		return -1;
	/* Built whole before anything counts as sent: a head that cannot be
	 * built leaves the request unanswered, and request_end() answers 500. */
	buf_init(&h, 4096);
	rc = buf_reserve(&h, 256) == BUF_OK && /* one allocation for the usual headers */
			     buf_printf(&h, "Status: %d %s\r\n", status, reason_phrase(status)) ==
				     BUF_OK &&
			     (!content_type ||
			      buf_printf(&h, "Content-Type: %s\r\n", content_type) == BUF_OK) &&
			     (content_length < 0 || buf_printf(&h, "Content-Length: %ld\r\n",
							       content_length) == BUF_OK) &&
			     buf_puts(&h, "Vary: Accept, Authorization\r\n") == BUF_OK &&
			     (!extra_headers || buf_puts(&h, extra_headers) == BUF_OK) &&
			     buf_puts(&h, "\r\n") == BUF_OK
		     ? 0
		     : -1;
	if (rc == 0) {
		r->headers_sent = 1;
		r->status = status;
		/* Header bytes are not counted as body bytes in the log. */
		rc = resp_write(r, h.data, h.len);
		r->bytes_out -= rc == 0 ? h.len : 0;
	}
	buf_free(&h);
	return rc;
}

int resp_json_text(struct request *r, int status, const char *json, const char *extra_headers)
{
	size_t n = strlen(json);

	if (resp_headers(r, status, "application/json", (long)n, extra_headers) < 0)
		return -1;
	return resp_write(r, json, n);
}

int resp_json_headers(struct request *r, int status, cJSON *body, const char *extra_headers)
{
	char *text = body ? cJSON_PrintUnformatted(body) : NULL;
	int rc;

	cJSON_Delete(body);
	if (!text)
		return resp_json_text(r, 500, "{\"detail\":\"Out of memory.\"}", NULL);
	rc = resp_json_text(r, status, text, extra_headers);
	cJSON_free(text);
	return rc;
}

int resp_json(struct request *r, int status, cJSON *body)
{
	return resp_json_headers(r, status, body, NULL);
}

int resp_detail_code(struct request *r, int status, const char *detail, const char *code)
{
	cJSON *o = cJSON_CreateObject();

	if (o && !cJSON_AddStringToObject(o, "detail", detail)) {
		cJSON_Delete(o);
		o = NULL;
	}
	if (o && code && !cJSON_AddStringToObject(o, "code", code)) {
		cJSON_Delete(o);
		o = NULL;
	}
	/* DRF + SimpleJWT: every 401 names the scheme to use. */
	return resp_json_headers(
		r, status, o, status == 401 ? "WWW-Authenticate: Bearer realm=\"api\"\r\n" : NULL);
}

int resp_detail(struct request *r, int status, const char *detail)
{
	return resp_detail_code(r, status, detail, NULL);
}

int resp_add_field_error(cJSON *errors, const char *field, const char *message)
{
	cJSON *list = cJSON_CreateArray(), *msg = cJSON_CreateString(message);

	if (!list || !msg) {
		cJSON_Delete(list);
		cJSON_Delete(msg);
		return -1;
	}
	cJSON_AddItemToArray(list, msg); /* cannot fail: both exist */
	if (!cJSON_AddItemToObject(errors, field, list)) {
		cJSON_Delete(list);
		return -1;
	}
	return 0;
}

int resp_field_error(struct request *r, const char *field, const char *message)
{
	cJSON *o = cJSON_CreateObject();

	if (!o || resp_add_field_error(o, field, message) < 0) {
		cJSON_Delete(o);
		return resp_json(r, 500, NULL);
	}
	return resp_json(r, 400, o);
}

int resp_problem_set(struct resp_problem *p, int status, const char *field, const char *fmt, ...)
{
	char text[sizeof p->detail * 2];
	va_list ap;

	memset(p, 0, sizeof *p);
	p->status = status;
	p->field = field;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	utf8_copy(p->detail, sizeof p->detail, text);
	return -1;
}

int resp_problem(struct request *r, const struct resp_problem *p)
{
	char headers[64] = "";
	cJSON *o;

	if (!p->status)
		return 0;
	if (p->field && p->status == 400)
		return resp_field_error(r, p->field, p->detail);
	o = cJSON_CreateObject();
	if (o && (!cJSON_AddStringToObject(o, "detail", p->detail) ||
		  (p->message_id > 0 &&
		   !cJSON_AddNumberToObject(o, "message_id", (double)p->message_id)))) {
		cJSON_Delete(o);
		o = NULL;
	}
	if (p->retry_after > 0)
		snprintf(headers, sizeof headers, "Retry-After: %d\r\n", p->retry_after);
	return resp_json_headers(r, p->status, o, headers[0] ? headers : NULL);
}

int resp_not_found(struct request *r)
{
	return resp_json_text(r, 404, "{\"detail\": \"Not found.\"}", NULL);
}

int resp_method_not_allowed(struct request *r, const char *allow)
{
	char headers[128], detail[96];
	const char *m = r->method;
	size_t i;
	cJSON *o;

	/* The method comes from the client: echo it only if short and plain. */
	for (i = 0; m[i]; i++)
		if (i >= 32 || m[i] < 'A' || m[i] > 'Z') {
			m = "?";
			break;
		}
	snprintf(headers, sizeof headers, "Allow: %s\r\n", allow);
	snprintf(detail, sizeof detail, "Method \"%s\" not allowed.", m);
	o = cJSON_CreateObject();
	if (o && !cJSON_AddStringToObject(o, "detail", detail)) {
		cJSON_Delete(o);
		o = NULL;
	}
	return resp_json_headers(r, 405, o, headers);
}

int resp_no_content(struct request *r)
{
	return resp_headers(r, 204, NULL, -1, NULL);
}
