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

/* allow_query: also accept ?access_token= (EventSource cannot set
 * headers).  0 with *u filled (caller runs users_clear), or -1. */
int auth_require(struct request *r, int allow_query, struct user *u);

#endif
