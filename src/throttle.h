/*
 * throttle — login throttling per username and per client address.
 *
 * Failed logins are counted in the login_failures table (shared by every
 * token process) within a fixed window; a username or address past its
 * limit is refused with 429 before any password is hashed, until its
 * window ends.  A successful login clears the username's count.
 */
#ifndef JARVAS_THROTTLE_H
#define JARVAS_THROTTLE_H

#include "db.h"

/* 0 allowed; otherwise the seconds to wait (> 0); -1 database error. */
long throttle_check(struct db *d, const char *username, const char *addr);
/* Record a failure (0 or -1). */
int throttle_failed(struct db *d, const char *username, const char *addr);
/* Clear the username's failures after a success (0 or -1). */
int throttle_succeeded(struct db *d, const char *username);

#endif
