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

/* One message row.  In the caller's write transaction.  0 or -1. */
int history_store_message(struct db *d, long long id, long long user_id, const char *conversation,
			  const char *role, const char *text, size_t len, int complete);

/* Write the reply row of an exchange whose user message is stored, while
 * that message is still there (a conversation deleted meanwhile stays
 * deleted).  partial: a save while the reply still grows, which never
 * replaces a longer text (a late partial save after the final one changes
 * nothing).  In the caller's write transaction.  0 or -1. */
int history_save_reply(struct db *d, long long user_msg_id, long long reply_id, long long user_id,
		       const char *conversation, const char *text, size_t len, int complete,
		       int partial);

/* Take back both rows of an exchange that produced no reply.  0 or -1. */
int history_forget(struct db *d, long long user_id, long long user_msg_id, long long reply_id);

/* Delete one conversation of one user; the number of rows or -1. */
int history_delete(struct db *d, long long user_id, const char *conversation);

#endif
