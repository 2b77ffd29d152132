/*
 * tokens — the SimpleJWT endpoints: obtain a pair, refresh, verify.
 */
#ifndef JARVAS_TOKENS_H
#define JARVAS_TOKENS_H

#include "request.h"

void tokens_obtain(struct request *r);	/* POST /api/token/ */
void tokens_refresh(struct request *r); /* POST /api/token/refresh/ */
void tokens_verify(struct request *r);	/* POST /api/token/verify/ */

#endif
