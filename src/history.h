/*
 * history — the messages table: the last N messages of a conversation,
 * the whole conversation for the history endpoint, storing an exchange,
 * and deleting a conversation.
 *
 * Invariant: a user message and the reply it got are written in one
 * transaction (the caller's), so history never holds half an exchange.  Every query is
 * scoped by user_id: no function here can reach another user's rows.
 */
#ifndef JARVAS_HISTORY_H
#define JARVAS_HISTORY_H

#include <cjson/cJSON.h>

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

/* All messages as a JSON array of {id, role, content, created_at}. */
cJSON *history_list(struct db *d, long long user_id, const char *conversation);

/* Reserve the ids of the user message and the reply (ids come first so a
 * stream can name its message before it is stored).  Must run inside a
 * write transaction.  0 or -1. */
int history_reserve_ids(struct db *d, long long *user_msg_id, long long *reply_id);

/* Store both messages.  Must run inside the caller's write transaction,
 * which is what makes the pair atomic.  0 or -1. */
int history_store(struct db *d, long long user_id, const char *conversation, long long user_msg_id,
		  const char *user_text, long long reply_id, const char *reply_text,
		  size_t reply_len, int complete);

/* Delete one conversation of one user; the number of rows or -1. */
int history_delete(struct db *d, long long user_id, const char *conversation);

#endif
