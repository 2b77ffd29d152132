/*
 * usage — tokens spent: one row per reply the upstream counted (the usage
 * table, written with the reply in its transaction), the sums behind
 * GET /api/usage/, and the per-user daily quota (JARVAS_TOKENS_PER_DAY).
 *
 * Invariant: the table is kept apart from messages, so deleting a
 * conversation never gives its tokens back; days are UTC days.
 */
#ifndef JARVAS_USAGE_H
#define JARVAS_USAGE_H

#include "db.h"
#include "request.h"

/* The counts of reply message_id (negative: not known, stored as 0).  In
 * the caller's write transaction.  0 or -1. */
int usage_record(struct db *d, long long message_id, long long user_id, const char *model,
		 long long prompt_tokens, long long completion_tokens);

/* Tokens the user spent since 00:00 UTC today, and the seconds until the
 * next 00:00 UTC.  0 or -1. */
int usage_today(struct db *d, long long user_id, long long *used, int *reset_in);

/* "YYYY-MM-DD" or an ISO 8601 date and time ("YYYY-MM-DDTHH:MM[:SS[.f]]",
 * then "Z", "+HH:MM" or "-HH:MM"; no offset: UTC) as seconds since the
 * epoch.  0 or -1.  Pure: unit-tested. */
int usage_parse_since(const char *text, long long *out);

/* GET /api/usage/?since=...: the user's totals, by model, since then
 * (default: 00:00 UTC today), and the quota when there is one. */
void usage_get(struct request *r);

#endif
