/*
 * auth — who is calling: the Bearer access token of a request, checked the
 * way SimpleJWT's JWTAuthentication does with CHECK_REVOKE_TOKEN (valid
 * HS256 access token, the user still exists and is active, and the
 * token's hash_password claim matches the user's password hash now).  On
 * failure the 401/503 answer has already been sent in DRF's shape.
 */
#ifndef JARVAS_AUTH_H
#define JARVAS_AUTH_H

#include "jwt.h"
#include "request.h"
#include "users.h"

/* SimpleJWT's detail for code "password_changed". */
extern const char auth_password_changed[];

/* 1 when the token's hash_password claim is the one of u's current
 * password hash (SimpleJWT's revoke check), else 0. */
int auth_claim_matches(const struct jwt_claims *claims, const struct user *u);

/* allow_query: also accept ?access_token= or a stream ticket, ?ticket=
 * (EventSource cannot set headers).  0 with *u filled (caller runs
 * users_clear), or -1. */
int auth_require(struct request *r, int allow_query, struct user *u);
/* allow_query for a reconnect: a ticket is checked, not spent. */
#define AUTH_QUERY_KEEP_TICKET 2

/* The user a credential named: load it, check it is active and set
 * r->user_id.  0 with *u filled, or -1 (401/503 answered). */
int auth_user(struct request *r, long long user_id, struct user *u);

#endif
