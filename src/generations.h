/*
 * generations — the replies being generated right now, in the database
 * so that every process sees them: one per user and conversation (a
 * second one is refused, 409), found by a stop or a resume that lands on
 * another process than the one generating.
 *
 * A row names its owner, "<pid>:<start time>" of the process generating
 * it.  A process that dies leaves its rows behind; whoever meets such a
 * row (a claim in the same conversation, the sweep when a responder
 * starts) marks its reply interrupted and removes it.
 */
#ifndef JARVAS_GENERATIONS_H
#define JARVAS_GENERATIONS_H

#include "db.h"
#include "history.h"

struct generation {
	long long message_id, user_id;
	char conversation[CONVERSATION_ID_MAX + 1];
	int resumable;
	int alive; /* its owner process still runs */
};

/* Register the reply message_id as this process's generation in
 * (user_id, conversation).  In the caller's write transaction.  0 done;
 * 1 when another runs there (*running gets its reply's id; nothing was
 * written); -1 on a database error. */
int generations_claim(struct db *d, long long message_id, long long user_id,
		      const char *conversation, int resumable, long long *running);

/* The generation is over (its reply stored).  In the caller's
 * transaction or on its own.  0 or -1. */
int generations_release(struct db *d, long long message_id);

/* This user's generation of reply message_id (conversation NULL), or the
 * one running in conversation (message_id 0).  1 found, 0 none, -1. */
int generations_find(struct db *d, long long user_id, long long message_id,
		     const char *conversation, struct generation *out);

/* Clear the rows of owners that died: their replies become interrupted.
 * The number cleared, or -1. */
int generations_sweep(struct db *d);

/* "<pid>:<start time>" of this process (for the owner column). */
const char *generations_owner(void);

#endif
