/*
 * upstream — the curl transport to the LLM server.  What goes over it is
 * the protocol's business (wire/: Ollama's or OpenAI's, JARVAS_UPSTREAM_API);
 * this file sends the request, feeds the answer line by line to the
 * protocol's decoder and turns what comes back into calls to the caller.
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
#include "wire/wire.h"

struct worker;
struct upstream;

struct upstream_call {
	const char *model; /* one of config.models */
	const struct wire_message *messages;
	int nmessages;
	/* A piece of the reply, as the model sent it (repaired to valid
	 * UTF-8).  Return -1 to stop (the client left, or the reply outgrew
	 * its cap). */
	int (*on_content)(void *ctx, const char *text, size_t n);
	/* The answer's last line arrived; NULL: not wanted. */
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
	UPSTREAM_DONE,	  /* the model finished */
	UPSTREAM_STOPPED, /* a callback asked to stop */
	UPSTREAM_FAILED,  /* see kind and error */
};

struct upstream_result {
	enum upstream_outcome outcome;
	enum metrics_upstream_error kind;
	char error[512];
	long http_status;
	/* What the server counted, in either protocol's terms; -1: it did not say. */
	long long prompt_tokens, completion_tokens;
	/* Why the model stopped: "stop", "length" (cut by its token limit),
	 * ...; "" when it did not say. */
	char finish_reason[32];
};

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
	int finished;	  /* saw a finish reason: the reply is whole */
	double finished_at;
	int done;	/* saw the answer's last line */
	double done_at; /* ... at this time */
	int failed;	/* res->kind/error are set */
	int stopped;	/* a callback (or the caller) asked to stop */
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

/* Seconds a transfer may stay open after the model's finish reason for
 * its end marker (OpenAI's usage chunk and [DONE]); past them it is ended
 * as finished. */
#define UPSTREAM_FINISH_GRACE_S 2.0

/* Silent past the idle timeout, or past the total timeout, at time now
 * (CLOCK_MONOTONIC seconds)?  Then the failure is recorded and 1
 * returned: end the transfer.  1 also for a reply finished that long ago
 * without its end marker (not a failure). */
int upstream_xfer_idle(struct upstream_xfer *x, double now);

/* The reason to give for a non-2xx answer with this body: its
 * {"error": "..."} (Ollama), {"error": {"message": "..."}} (OpenAI) or
 * {"message": "..."} (vLLM), else the status; repaired to valid UTF-8 and
 * cut between characters to fit cap.  1 when the reason is the body's,
 * 0 when it is only the status.  Pure: fuzzed. */
int upstream_http_reason(const char *body, size_t n, long status, char *out, size_t cap);

/* Seconds on CLOCK_MONOTONIC. */
double upstream_now(void);

/* The worker's handle for blocking calls. */
void upstream_free(struct upstream *u);

/* Run one chat call on this worker's handle.  Returns 0 when the call
 * completed (outcome DONE) and -1 otherwise; res says why. */
int upstream_chat(struct worker *w, const struct upstream_call *call, struct upstream_result *res);

/* GET the protocol's model list (/api/tags, /v1/models) within
 * timeout_ms and call fn(ctx, name) for each model in it (fn NULL: only
 * the health check).  0, or -1 with a reason. */
int upstream_models(int timeout_ms, void (*fn)(void *ctx, const char *name), void *ctx, char *err,
		    size_t errlen);

#endif
