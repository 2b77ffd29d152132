/*
 * history — the messages table: the last N messages of a conversation,
 * the whole conversation for the history endpoint, storing an exchange,
 * and deleting a conversation.
 *
 * Invariant: history never holds a reply without its user message.  A
 * non-stream exchange writes both in one transaction; a stream writes its
 * user message when it starts and its reply as it grows, so a crash loses
 * at most the last seconds of a reply, never the message.  Every query is
 * scoped by user_id: no function here can reach another user's rows.
 */
#ifndef JARVAS_HISTORY_H
#define JARVAS_HISTORY_H

#include <cjson/cJSON.h>

#include "buf.h"
#include "db.h"

#define CONVERSATION_ID_MAX 64

struct history_msg {
	const char *role; /* "user" or "assistant" (static strings) */
	char *content;	  /* owned */
};

struct history {
	struct history_msg *items; /* oldest first */
	int n;
};

/* 1-64 characters of [A-Za-z0-9_-]. */
int history_conversation_valid(const char *id);

/* The last `limit` messages, oldest first.  0 or -1. */
int history_last(struct db *d, long long user_id, const char *conversation, int limit,
		 struct history *out);
void history_free(struct history *h);

/* All messages as a JSON array of {id, role, content, created_at, status}
 * (and, on replies that have them, usage {prompt_tokens,
 * completion_tokens}, model and finish_reason). */
cJSON *history_list(struct db *d, long long user_id, const char *conversation);

/* Reserve the ids of the user message and the reply (ids come first so a
 * stream can name its message before it is stored).  Must run inside a
 * write transaction.  0 or -1. */
int history_reserve_ids(struct db *d, long long *user_msg_id, long long *reply_id);

/* A reply as it is stored at its end. */
struct history_reply {
	const char *text;
	size_t len;
	const char *status;			    /* "done", "stopped", "failed", "interrupted" */
	long long prompt_tokens, completion_tokens; /* -1: the upstream sent none */
	const void *chunks;			    /* NULL: not known */
	size_t chunks_len;			    /* bytes */
	const char *error;			    /* NULL: none */
	const char *model;			    /* the model that wrote it */
	const char *finish_reason;		    /* NULL or "": not known */
};

/* Store both messages.  Must run inside the caller's write transaction,
 * which is what makes the pair atomic.  0 or -1. */
int history_store(struct db *d, long long user_id, const char *conversation, long long user_msg_id,
		  const char *user_text, long long reply_id, const struct history_reply *reply);

/* The empty reply row of a stream that starts, status 'streaming'.  In
 * the caller's write transaction.  0 or -1. */
int history_start_reply(struct db *d, long long reply_id, long long user_id,
			const char *conversation, const char *model);

/* One message row.  In the caller's write transaction.  0 or -1. */
int history_store_message(struct db *d, long long id, long long user_id, const char *conversation,
			  const char *role, const char *text, size_t len, int complete);

/* Write the reply row of an exchange whose user message is stored, while
 * that message is still there (a conversation deleted meanwhile stays
 * deleted).  partial: a save of reply->text while the reply still grows,
 * which never replaces a longer text nor a final status (a late partial
 * save after the final one changes nothing).  In the caller's write
 * transaction.  0 or -1. */
int history_save_reply(struct db *d, long long user_msg_id, long long reply_id, long long user_id,
		       const char *conversation, const struct history_reply *reply, int partial);

/* The chunks column: each chunk's length as an unsigned LEB128 number.
 * Append one (0 or -1), or read the next at *p before end (1 with *len,
 * *p moved on; 0 at the end; -1 malformed). */
int history_chunk_put(struct buf *b, size_t len);
int history_chunk_next(const unsigned char **p, const unsigned char *end, size_t *len);

/* A stored reply, for a client that reconnects (stream.c). */
struct history_stored {
	char conversation[CONVERSATION_ID_MAX + 1];
	char status[16];
	char *text; /* owned, like the two below */
	size_t len;
	unsigned char *chunks; /* NULL: not known */
	size_t chunks_len;
	char *error;				    /* NULL: none */
	long long prompt_tokens, completion_tokens; /* -1: none */
	char model[201];			    /* "": not known (older rows) */
	char finish_reason[32];
};
/* This user's reply message_id: 1 found, 0 none (or not a reply), -1. */
int history_get_reply(struct db *d, long long user_id, long long message_id,
		      struct history_stored *out);
void history_stored_free(struct history_stored *s);

/* Take back both rows of an exchange that produced no reply.  0 or -1. */
int history_forget(struct db *d, long long user_id, long long user_msg_id, long long reply_id);

/* Delete one conversation of one user; the number of rows or -1. */
int history_delete(struct db *d, long long user_id, const char *conversation);

#endif
