/*
 * auth — who is calling: the Bearer access token of a request, checked the
 * way SimpleJWT's JWTAuthentication does (valid HS256 access token, the
 * user still exists and is active).  On failure the 401/503 answer has
 * already been sent in DRF's shape.
 */
#ifndef JARVAS_AUTH_H
#define JARVAS_AUTH_H

#include "request.h"
#include "users.h"

/* allow_query: also accept ?access_token= or a stream ticket, ?ticket=
 * (EventSource cannot set headers).  0 with *u filled (caller runs
 * users_clear), or -1. */
int auth_require(struct request *r, int allow_query, struct user *u);

/* The user a credential named: load it, check it is active and set
 * r->user_id.  0 with *u filled, or -1 (401/503 answered). */
int auth_user(struct request *r, long long user_id, struct user *u);

#endif
