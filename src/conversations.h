/*
 * conversations — a user's conversations as the sidebar lists them: the
 * SQL that groups the messages table by conversation, and the renamed
 * titles (table conversation_titles).
 *
 * A conversation has no row of its own: it exists while it has messages,
 * and is gone with its last one (history_delete()).  A renamed title lives
 * only as long (a trigger in schema.sql removes it), so an id used again
 * starts afresh.  Every query is scoped by user_id: another user's
 * conversation is indistinguishable from one that does not exist.
 */
#ifndef JARVAS_CONVERSATIONS_H
#define JARVAS_CONVERSATIONS_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "db.h"

/* The title of a conversation nobody renamed: its first user message,
 * trimmed, cut to this many characters (code points). */
#define CONVERSATIONS_TITLE_CHARS 80
/* A renamed title: 1 to this many characters once trimmed. */
#define CONVERSATIONS_RENAME_MAX 200

/* Up to `limit` conversations whose last message id is below `before`,
 * newest first, as a JSON array of {conversation_id, title,
 * message_count, last_message_at, last_message_id}.  *next: when older
 * ones follow, the last item's last message id (the `before` of the next
 * page), else 0.  NULL on a database error or out of memory. */
cJSON *conversations_list(struct db *d, long long user_id, long long before, int limit,
			  long long *next);

/* One conversation as conversations_list() describes it: 0 with *out
 * set, 1 when the user has no message in it, -1 on error. */
int conversations_get(struct db *d, long long user_id, const char *conversation, cJSON **out);

/* Set a conversation's title to title[0..len) (trimmed by the caller),
 * only while it has messages: 0 renamed, 1 no such conversation, -1 on
 * error. */
int conversations_rename(struct db *d, long long user_id, const char *conversation,
			 const char *title, size_t len);

#endif
