/*
 * upstream — the client for the LLM server (Ollama's POST /api/chat with
 * "stream": true, and GET /api/tags for health).
 *
 * A transfer (struct upstream_xfer) runs either blocking in a worker
 * thread (chat: one curl handle per worker, reused, so the connection to
 * the model server stays alive between requests) or inside relay.c's
 * event loop (chat_stream).  Every way the upstream can
 * fail — refused, HTTP error, {"error"} line, malformed line, cut before
 * "done", silence past the idle timeout — ends upstream_chat() with one
 * error kind and a human-readable reason; it never hangs.
 */
#ifndef JARVAS_UPSTREAM_H
#define JARVAS_UPSTREAM_H

#include <curl/curl.h>
#include <stddef.h>

#include "buf.h"
#include "metrics.h"
#include "ndjson.h"

struct worker;
struct upstream;

struct upstream_message {
	const char *role;
	const char *content;
};

struct upstream_call {
	const struct upstream_message *messages;
	int nmessages;
	/* A piece of the reply, as the model sent it (repaired to valid
	 * UTF-8).  Return -1 to stop (the client left, or the reply outgrew
	 * its cap). */
	int (*on_content)(void *ctx, const char *text, size_t n);
	/* The model's last line ("done": true) arrived; NULL: not wanted. */
	void (*on_done)(void *ctx);
	void *ctx;
	int idle_timeout;  /* seconds of silence before giving up */
	int total_timeout; /* seconds for the whole call, 0: none */
	/* Blocking calls: the FastCGI connection of the request, watched so
	 * that a client who leaves stops the model (-1: none). */
	int client_fd;
	/* Blocking calls: asked every UPSTREAM_STOP_POLL_S; 1 stops the model
	 * (POST /api/chat/stop/).  NULL: never. */
	int (*stop_requested)(void *ctx);
};

#define UPSTREAM_STOP_POLL_S 0.25

enum upstream_outcome {
	UPSTREAM_DONE,	  /* the model finished ("done": true) */
	UPSTREAM_STOPPED, /* a callback asked to stop */
	UPSTREAM_FAILED,  /* see kind and error */
};

struct upstream_result {
	enum upstream_outcome outcome;
	enum metrics_upstream_error kind;
	char error[512];
	long http_status;
	/* Counters of the final line; -1 when absent. */
	long long eval_count, prompt_eval_count, total_duration, load_duration,
		prompt_eval_duration, eval_duration;
	char done_reason[32];
};

/* One line of Ollama's stream, decoded: the content piece, the final
 * "done", or an {"error"}.  -1 for a line that is none of these.  The
 * content holds no NUL ("\u0000", which would cut a C string, becomes
 * U+FFFD); it may still end inside a character, which the next piece
 * completes (see upstream_xfer.tail).  The caller frees out->json
 * (content and error point into it). */
struct upstream_line {
	void *json; /* cJSON * */
	const char *content;
	size_t len;
	int done;
	const char *error;
};
int upstream_line_decode(const char *line, size_t n, struct upstream_line *out);

/* One chat call's transfer: the curl handle (borrowed from the caller)
 * and everything curl's callbacks need.  Driven either to its end by
 * upstream_chat() in a worker thread, or by relay.c's curl multi handle
 * together with every other open stream of the process. */
struct upstream_xfer {
	CURL *curl;
	struct upstream_call call;
	struct upstream_result *res;
	struct ndjson nd;
	struct buf error_body;
	struct buf request_body;
	/* The reply as valid UTF-8: the start of a character a piece ended
	 * in (completed by the next piece), and a piece being repaired. */
	char tail[4];
	size_t tail_len;
	struct buf piece;
	long http_status; /* 0 until the first body byte */
	int done;	  /* saw "done": true */
	double done_at;	  /* ... at this time */
	int failed;	  /* res->kind/error are set */
	int stopped;	  /* a callback (or the caller) asked to stop */
	double started, last_data;
	double stop_polled; /* call.stop_requested() was asked then */
	char curl_error[CURL_ERROR_SIZE];
};

int upstream_global_init(void);
void upstream_global_cleanup(void);

void upstream_xfer_init(struct upstream_xfer *x);
void upstream_xfer_free(struct upstream_xfer *x); /* not x->curl */

/* Set x->curl up for one call: the request body, the callbacks, the
 * timeouts.  blocking: the caller runs curl_easy_perform(), and curl's
 * progress callback enforces the idle and total timeouts; otherwise the
 * caller polls upstream_xfer_idle().  0 or -1
 * (out of memory: res says so). */
int upstream_xfer_prepare(struct upstream_xfer *x, const struct upstream_call *call,
			  struct upstream_result *res, int blocking);

/* The transfer ended with curl's code cc: decide the outcome.  0 when the
 * model finished (outcome DONE) and -1 otherwise; res says why. */
int upstream_xfer_finish(struct upstream_xfer *x, CURLcode cc);

/* Seconds a transfer may stay open after the model's last line, for the
 * end of the HTTP body to arrive (the connection is then kept for the
 * next call); past it the transfer is ended as finished. */
#define UPSTREAM_DONE_GRACE_S 0.05

/* Silent past the idle timeout at time now (CLOCK_MONOTONIC seconds)?
 * Then the failure is recorded and 1 returned: remove the transfer. */
int upstream_xfer_idle(struct upstream_xfer *x, double now);

/* The reason to give for a non-2xx answer with this body: its
 * {"error": "..."} (Ollama's shape), else the status; repaired to valid
 * UTF-8 and cut between characters to fit cap.  Pure: fuzzed. */
void upstream_http_reason(const char *body, size_t n, long status, char *out, size_t cap);

/* Seconds on CLOCK_MONOTONIC. */
double upstream_now(void);

/* The worker's handle for blocking calls. */
void upstream_free(struct upstream *u);

/* Run one chat call on this worker's handle.  Returns 0 when the call
 * completed (outcome DONE) and -1 otherwise; res says why. */
int upstream_chat(struct worker *w, const struct upstream_call *call, struct upstream_result *res);

/* GET /api/tags within timeout_ms.  0 ok, or -1 with a reason. */
int upstream_health(int timeout_ms, char *err, size_t errlen);

#endif
