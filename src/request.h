/*
 * request — one FastCGI request as the handlers see it: method, path,
 * query string, headers, the body (read with a size cap) and its JSON or
 * form data, plus what was answered (for the log and metrics).
 *
 * Ownership: everything a request allocates hangs off struct request and is
 * released by request_end(), in one place, when the request is finished.
 */
#ifndef JARVAS_REQUEST_H
#define JARVAS_REQUEST_H

#include <cjson/cJSON.h>
#include <fcgiapp.h>
#include <time.h>

#include "buf.h"
#include "utf8.h"

struct worker;

struct request {
	FCGX_Request *fcgx;
	struct worker *worker;
	const char *method;  /* "GET", ... never NULL */
	char *path;	     /* DOCUMENT_URI without its trailing slash */
	const char *segment; /* within path: what a route's "*" segment matched, or NULL */
	const char *query;   /* raw QUERY_STRING, never NULL */
	struct buf body;
	cJSON *data; /* parsed JSON body or form fields */
	struct timespec started;

	/* What we answered. */
	int endpoint; /* enum metrics_endpoint, set by the router */
	int status;
	int headers_sent;
	int client_gone; /* a write failed: nginx or the client left */
	int handed_off;	 /* relay.c took the connection: it answers and logs */
	unsigned long long bytes_out;
	long long user_id;
	double first_chunk_ms; /* < 0 until a stream's first chunk */
	char note[256];	       /* extra key=value for the log line */
};

/* Let libfcgi read a request from connection fd, which the caller
 * accepted (or, fd < 0, the next request on the connection fcgx kept
 * open).  A peer slower than timeout_ms to send it, or to take an
 * answer later, fails.  0, or -1 when no request came (libfcgi then
 * closed the connection). */
int request_accept(FCGX_Request *fcgx, int fd, int timeout_ms);

void request_begin(struct request *r, FCGX_Request *fcgx, struct worker *w);
void request_end(struct request *r); /* logs, counts and frees */

/* A CGI parameter or header ("HTTP_AUTHORIZATION"); NULL if absent. */
const char *request_param(const struct request *r, const char *name);

/* Read the whole body (at most config.body_max) and parse it as JSON or,
 * for application/x-www-form-urlencoded, as form fields, into r->data.
 * On failure the error response has been sent: the handler just returns. */
int request_parse_body(struct request *r);

/* Look up a query-string parameter, percent-decoded into out.
 * 1 found, 0 absent, -1 malformed encoding, not UTF-8, or given twice. */
int request_query(const struct request *r, const char *name, struct buf *out);
/* The reason for a field whose request_query() was -1. */
extern const char request_bad_query[];

/* Split an Authorization header as SimpleJWT does (blank-separated
 * words): 0 "Bearer <token>" (*token, *len: the token, within header),
 * 1 another scheme or nothing (no credentials of ours), -1 "Bearer" with
 * no token or more than one word after it.  Pure: fuzzed. */
int request_split_bearer(const char *header, const char **token, size_t *len);

/* Milliseconds since the request started. */
double request_elapsed_ms(const struct request *r);

/* A string field of r->data, read as DRF's CharField reads it. */
enum request_field_rc {
	REQUEST_FIELD_FOUND = 1,    /* *out set */
	REQUEST_FIELD_MISSING = 0,  /* "This field is required." (or the default) */
	REQUEST_FIELD_INVALID = -1, /* a number, boolean, array or object */
	REQUEST_FIELD_NULL = -2,    /* null: never the same as missing */
};
int request_field(const struct request *r, const char *name, const char **out);
/* DRF's message for what request_field() returned (NULL when found).
 * DRF coerces numbers to strings; we refuse them as "Not a valid
 * string." like the other non-strings, so a value is what was sent. */
const char *request_field_problem(int rc);

/* The body as data: JSON object or form fields.  0 with *data set, or
 * the HTTP status to answer (400, 415, 500) with a reason.  Pure: the
 * fuzzers and unit tests call it directly. */
int request_decode_body(const char *body, size_t n, const char *content_type, cJSON **data,
			char *reason, size_t reasonlen);

/* Helpers shared with the tests and fuzzers. */
int url_decode(const char *s, size_t n, struct buf *out);
int form_lookup(const char *qs, const char *name, struct buf *out);

#endif
