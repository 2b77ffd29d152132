/*
 * tickets — stream tickets: short-lived, single-use credentials for a
 * browser's EventSource, which cannot send an Authorization header, so
 * that no JWT has to travel in a URL.
 *
 *   POST /api/chat/stream/ticket/  (Authorization: Bearer <access>, body
 *   empty or {}) → 200 {"ticket": "<opaque>", "expires_in": <seconds>}
 *   GET  /api/chat/stream/?ticket=<ticket>&message=...
 *
 * A ticket is 32 random bytes (libsodium), base64url.  The table
 * stream_tickets keeps only its BLAKE2b hash, the issuer and the expiry,
 * so the database holds nothing a client could use, and any chat_stream
 * process redeems a ticket any other issued.  Redeeming deletes the row
 * inside one write transaction, so a ticket works once even when two
 * processes race with it; a ticket that was presented is spent, whatever
 * the request's fate after authentication.
 *
 * The ticket stands for its issuer alone: whoever presents it streams as
 * the issuer (history lands with the issuer).  A ticket together with an
 * Authorization header or an access_token is refused (401, and the ticket
 * is spent): two credentials that may name two users are a mistake or an
 * attack, and which one was meant is a guess.  Only the GET stream takes
 * a ticket; everywhere else ?ticket= is an unknown parameter.
 */
#ifndef JARVAS_TICKETS_H
#define JARVAS_TICKETS_H

#include "request.h"
#include "users.h"

/* Unused, unexpired tickets one user may hold; past it, 429. */
#define TICKETS_PER_USER_MAX 16

/* POST /api/chat/stream/ticket/ */
void tickets_post(struct request *r);

/* Authenticate a GET stream by its ?ticket=.  other_credential: the
 * request also carries a Bearer token.  1 when there is no ticket
 * parameter (authenticate otherwise), 0 with *u filled (the caller runs
 * users_clear), or -1 with the 401/503 answered. */
/* spend 0: a reconnect to a stream (stream.c) checks the ticket and
 * leaves it for the stream it was issued for. */
int tickets_authenticate(struct request *r, int other_credential, struct user *u, int spend);

#endif
