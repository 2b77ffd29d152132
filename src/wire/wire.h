/*
 * wire — the chat protocols of LLM servers, one file each behind one
 * table: ollama.c (Ollama's POST /api/chat, NDJSON) and openai.c (POST
 * /v1/chat/completions, Server-Sent Events, as llama.cpp, vLLM, LM
 * Studio, LiteLLM and the hosted APIs serve it).  upstream.c, the curl
 * transport, picks one at start (JARVAS_UPSTREAM_API) and knows nothing
 * of either format.
 *
 * Invariant: a decoder is pure — one line of the answer in (without its
 * '\n'; empty lines never reach it), one struct wire_line out — so it can
 * be fuzzed, and the transport alone decides what a line means for the
 * stream (an error, data after the end, a cut).
 */
#ifndef JARVAS_WIRE_H
#define JARVAS_WIRE_H

#include <stddef.h>

#include "buf.h"

struct cJSON;

struct wire_message {
	const char *role;
	const char *content;
};

/* One line of a streamed answer, decoded.  Every field is optional; a
 * line with none of them (an SSE comment, a role-only delta) is nothing
 * to act on.  The strings point into json (wire_line_free()); content
 * holds no NUL ("\u0000" became U+FFFD) but may end inside a UTF-8
 * character, which the transport completes from the next piece. */
struct wire_line {
	struct cJSON *json;
	const char *content; /* a piece of the reply */
	size_t len;
	const char *error;	   /* the server reported an error mid-stream */
	const char *finish_reason; /* the model finished: "stop", "length", ... */
	long long prompt_tokens;   /* usage; -1: not in this line */
	long long completion_tokens;
	int end; /* the answer's last line: nothing may follow */
};

struct wire {
	const char *name;	 /* its JARVAS_UPSTREAM_API value */
	const char *chat_path;	 /* POST, streamed */
	const char *models_path; /* GET: health and GET /api/models/ */
	/* The streaming chat request for model, written into out.  0 or -1. */
	int (*chat_body)(struct buf *out, const char *model, const struct wire_message *m, int n);
	/* 0, or -1 for a line that is not one of the protocol's. */
	int (*decode)(const char *line, size_t n, struct wire_line *out);
	/* fn(ctx, name) for each model of a models_path answer; 0, or -1
	 * when the body is not such an answer. */
	int (*models)(const char *body, size_t n, void (*fn)(void *ctx, const char *name),
		      void *ctx);
};

extern const struct wire wire_ollama;
extern const struct wire wire_openai;

/* The protocol called name, or NULL. */
const struct wire *wire_find(const char *name);

void wire_line_free(struct wire_line *l);

/* Helpers of the decoders (wire.c). */

/* The text as one JSON object (white space after it allowed), with every
 * "\u0000" and raw NUL inside a string read as U+FFFD: cJSON would cut
 * the string there.  NULL when it is not exactly one object. */
struct cJSON *wire_parse_object(const char *text, size_t n);

/* A whole-number member, or -1 when absent, not a number, negative or
 * past 2^53. */
long long wire_count(const struct cJSON *o, const char *name);

/* "[{"role":..,"content":..},...]": the messages array both protocols
 * take, written straight into out (a cJSON tree of a long history,
 * printed and freed, costs more than the rest of a request's work); the
 * bytes cJSON_PrintUnformatted would give.  0 or -1. */
int wire_messages(struct buf *out, const struct wire_message *m, int n);

/* fn(ctx, name) for each string member name_key of the objects in the
 * array list_key of the JSON object body: a models list.  0, or -1 when
 * the body is not such an object. */
int wire_names(const char *body, size_t n, const char *list_key, const char *name_key,
	       void (*fn)(void *ctx, const char *name), void *ctx);

/* A model name of the server's list names the configured one: the same,
 * or one of them is the other with Ollama's default tag ":latest". */
int wire_model_matches(const char *listed, const char *wanted);

#endif
