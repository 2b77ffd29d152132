/*
 * prompt — the system prompt of a user, through the prompt cache.
 *
 * The prompt is the base prompt (JARVAS_SYSTEM_PROMPT_FILE or the built-in
 * one) plus the user's context.  Built prompts live in the SQLite
 * prompt_cache table with a TTL and a hit count.  The cache key is a hash
 * of everything the prompt is built from, so a changed base prompt or a
 * changed user is a different key at once, not after the TTL.
 */
#ifndef JARVAS_PROMPT_H
#define JARVAS_PROMPT_H

#include "buf.h"
#include "db.h"
#include "users.h"

#define PROMPT_KEY_LEN 32 /* hex characters */

struct prompt {
	char key[PROMPT_KEY_LEN + 1];
	struct buf text;
	int hit; /* found in the cache */
};

void prompt_init(struct prompt *p);
void prompt_free(struct prompt *p);

/* Look the user's prompt up (building it on a miss).  Reads only; the
 * write is prompt_record().  0 or -1. */
int prompt_get(struct db *d, const struct user *u, struct prompt *p);
/* Count the hit or store the built prompt.  Runs inside the caller's
 * write transaction.  0 or -1. */
int prompt_record(struct db *d, const struct prompt *p);

#endif
