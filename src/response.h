/*
 * response — everything written back to nginx: status line and headers,
 * JSON bodies, DRF-style error bodies, and the raw writes and flushes the
 * SSE writer uses.  A failed write marks the client gone; later writes are
 * skipped, so callers need not check every one.
 */
#ifndef JARVAS_RESPONSE_H
#define JARVAS_RESPONSE_H

#include <cjson/cJSON.h>
#include <stddef.h>

struct request;

/* Send status + headers.  extra_headers: "Name: value\r\n..." or NULL. */
int resp_headers(struct request *r, int status, const char *content_type, long content_length,
		 const char *extra_headers);
/* A complete JSON response from text. */
int resp_json_text(struct request *r, int status, const char *json, const char *extra_headers);
/* A complete JSON response; takes ownership of body. */
int resp_json(struct request *r, int status, cJSON *body);
/* The same with extra headers ("Name: value\r\n..."). */
int resp_json_headers(struct request *r, int status, cJSON *body, const char *extra_headers);
/* {"detail": "..."} */
int resp_detail(struct request *r, int status, const char *detail);
/* {"detail": "...", "code": "..."} */
int resp_detail_code(struct request *r, int status, const char *detail, const char *code);
/* {"<field>": ["This field is required."]} style validation error. */
int resp_field_error(struct request *r, const char *field, const char *message);
/* Add "<field>": ["<message>"] to a DRF error object being built, for
 * a 400 that names every bad field.  0 or -1 (out of memory). */
int resp_add_field_error(cJSON *errors, const char *field, const char *message);
int resp_not_found(struct request *r);

/* Why a step of an endpoint refused a request, for the endpoint to
 * answer (exchange.c decides, chat.c and stream.c render). */
struct resp_problem {
	int status;	   /* 0: nothing to answer (auth or body parsing did) */
	const char *field; /* a 400 on this field: {"<field>": [detail]}; else {"detail"} */
	char detail[256];
	int retry_after;      /* seconds: a Retry-After header; 0: none */
	long long message_id; /* > 0: "message_id" in the body (409) */
};
/* Fill p (detail formatted, cut between characters).  Returns -1, the
 * value the step returns with it. */
int resp_problem_set(struct resp_problem *p, int status, const char *field, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
int resp_problem(struct request *r, const struct resp_problem *p);
int resp_method_not_allowed(struct request *r, const char *allow);
int resp_no_content(struct request *r);

/* Raw body writes for streams; -1 once the client is gone. */
int resp_write(struct request *r, const char *p, size_t n);
int resp_flush(struct request *r);

#endif
