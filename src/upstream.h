/*
 * upstream — the client for the LLM server (Ollama's POST /api/chat with
 * "stream": true, and GET /api/tags for health).
 *
 * One curl handle per worker thread, reused, so the connection to the
 * model server stays alive between requests.  Every way the upstream can
 * fail — refused, HTTP error, {"error"} line, malformed line, cut before
 * "done", silence past the idle timeout — ends upstream_chat() with one
 * error kind and a human-readable reason; it never hangs.
 */
#ifndef JARVAS_UPSTREAM_H
#define JARVAS_UPSTREAM_H

#include <stddef.h>

#include "metrics.h"

struct worker;
struct upstream;

struct upstream_message {
	const char *role;
	const char *content;
};

struct upstream_call {
	const struct upstream_message *messages;
	int nmessages;
	/* A piece of the reply, exactly as the model sent it.  Return -1 to
	 * stop (the client left). */
	int (*on_content)(void *ctx, const char *text, size_t n);
	/* Called at least once a second while waiting; sends pings, notices
	 * a client that left.  Return -1 to stop.  May be NULL. */
	int (*on_tick)(void *ctx);
	void *ctx;
	int idle_timeout;  /* seconds of silence before giving up */
	int total_timeout; /* seconds for the whole call, 0: none */
};

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
 * caller frees out->json (content and error point into it). */
struct upstream_line {
	void *json; /* cJSON * */
	const char *content;
	size_t len;
	int done;
	const char *error;
};
int upstream_line_decode(const char *line, size_t n, struct upstream_line *out);

int upstream_global_init(void);
void upstream_global_cleanup(void);
void upstream_free(struct upstream *u);

/* Run one chat call on this worker's handle.  Returns 0 when the call
 * completed (outcome DONE) and -1 otherwise; res says why. */
int upstream_chat(struct worker *w, const struct upstream_call *call, struct upstream_result *res);

/* GET /api/tags within timeout_ms.  0 ok, or -1 with a reason. */
int upstream_health(int timeout_ms, char *err, size_t errlen);

#endif
