/*
 * exchange — one user message and the model's reply: the pipeline that
 * chat (whole reply as JSON) and chat_stream (SSE) share.
 *
 *   exchange_begin   authenticate, validate, load the last N messages and
 *                    the system prompt; for a stream, reserve the message
 *                    ids (a non-stream exchange does it when it stores)
 *   exchange_run     chat: call the model and collect the reply in
 *                    ex->reply (a stream's reply is relayed by relay.c,
 *                    which takes the exchange after exchange_begin)
 *   exchange_store   write the user message and ex->reply together (a
 *                    stream wrote its user message at the start, and
 *                    relay.c saves the reply as it grows)
 *   exchange_end     free everything
 *
 * No database connection is held while the model is talking.
 */
#ifndef JARVAS_EXCHANGE_H
#define JARVAS_EXCHANGE_H

#include "buf.h"
#include "history.h"
#include "prompt.h"
#include "request.h"
#include "response.h"
#include "upstream.h"
#include "users.h"

struct exchange {
	struct request *r;
	struct user user;
	int have_user;
	char conversation[CONVERSATION_ID_MAX + 1];
	const char *model;	/* one of config.models: "model", or the default */
	int model_index;	/* ... its index there */
	struct buf message;	/* the user's message */
	struct history history; /* the last N messages, oldest first */
	struct prompt prompt;
	long long user_msg_id;
	long long message_id; /* id of the reply */
	int reserved;	      /* the ids above are set */
	int user_stored;      /* the user message is in history already (streams) */
	struct buf reply;     /* everything sent on to the client */
	/* The length of each piece of a resumable reply (history_chunk_put()):
	 * the chunks a reconnecting client is sent again. */
	struct buf chunks;
	int chunks_lost; /* past the cap: not stored */
	struct upstream_result result;
	int reply_cut;	   /* the reply outgrew ex->reply's cap: the model was stopped */
	int stream_slot;   /* limits slot held (a stream's or a chat's), or -1 */
	int resumable;	   /* "resumable": true: the model goes on without its client */
	int claimed;	   /* the generations row is ours (generations.h) */
	int stopped;	   /* POST /api/chat/stop/ asked (exchange_run) */
	long long running; /* exchange_begin() refused with 409: the reply that runs */
	/* Why exchange_begin() refused, for the endpoint to answer
	 * (status 0: auth or body parsing answered already). */
	struct resp_problem problem;
};

/* from_query: read message, conversation_id, model, resumable (and
 * access_token) from the query string (GET of the stream) instead of the
 * body.  Counts the exchange against the user's cap of this process's
 * kind, open streams or chats in progress (429 past it, limits.h), and
 * the daily token quota.  stream: reserve its message ids now.  0, or -1
 * with ex->problem to answer (resp_problem()). */
int exchange_begin(struct exchange *ex, struct request *r, int from_query, int stream);

/* The messages to send upstream: system prompt, history, the new one.
 * *msgs points into ex; the caller frees the array.  0 or -1. */
int exchange_messages(struct exchange *ex, struct wire_message **msgs, int *n);

/* Free the history and prompt text once the upstream request holds them. */
void exchange_release_context(struct exchange *ex);

/* A piece of the reply, kept for history: 0, or -1 when the reply is
 * past its cap (logged, ex->reply_cut set: stop the model). */
int exchange_append_reply(struct exchange *ex, const char *text, size_t n);
/* Keep only the first n bytes of the reply (n on a piece boundary). */
void exchange_truncate_reply(struct exchange *ex, size_t n);

/* 0 when the model finished, -1 otherwise (see ex->result.outcome). */
int exchange_run(struct exchange *ex, int total_timeout);

/* Store the exchange with its final status ("done", "stopped", "failed",
 * "interrupted"; error: why it failed, or NULL) and end its generation.
 * An exchange without reply text leaves no trace unless it was stopped.
 * 0 (also when nothing to store) or -1. */
int exchange_store(struct exchange *ex, const char *status, const char *error);

/* Give the user's slot back: before the last bytes of the answer go out,
 * so that the user's next request, sent once this one is answered, is
 * admitted.  exchange_end() does it when nobody did. */
void exchange_release_slot(struct exchange *ex);

void exchange_end(struct exchange *ex);

#endif
