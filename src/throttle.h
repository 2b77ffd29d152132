/*
 * throttle — login throttling, counted in the login_failures table that
 * every token process shares, each key within a fixed window of
 * JARVAS_LOGIN_WINDOW seconds from its first counted attempt.
 *
 * Every login attempt is counted before its password is hashed, in one
 * write transaction under three keys, and refused (429, nothing counted)
 * when any of these holds:
 *
 *   - this address has more than JARVAS_LOGIN_FAILURES_PER_USER attempts
 *     for this username ("pair:<addr>|<name>");
 *   - this address has more than JARVAS_LOGIN_FAILURES_PER_ADDR attempts
 *     for any usernames ("addr:<addr>");
 *   - the username has more than JARVAS_LOGIN_USERNAME_CEILING attempts
 *     from all addresses ("user:<name>") AND this address has already
 *     failed for it: past the ceiling an address that never failed for
 *     the username still gets its try, so someone else's guesses never
 *     lock the owner out, while a botnet gets one guess per address.
 *
 * A successful login clears its pair and takes its attempt back from the
 * other two counts; a failed one stays counted.  Counting first makes the
 * limits exact under parallel guesses (the transaction is serialised).  A
 * key part over USERNAME_MAX bytes is replaced by "#" and its SHA-256 in
 * hex, so keys stay small whatever a client sends.
 */
#ifndef JARVAS_THROTTLE_H
#define JARVAS_THROTTLE_H

#include "db.h"

/* Count an attempt before the password is checked.  0 allowed (counted);
 * > 0 refused, the seconds until the key that refused starts again;
 * -1 the attempt cannot be recorded (read-only or full database): the
 * caller must refuse too, without checking the password. */
long throttle_attempt(struct db *d, const char *username, const char *addr);
/* The attempt succeeded (0 or -1). */
int throttle_succeeded(struct db *d, const char *username, const char *addr);

/* The key of one count, into b (reset first): "pair:<addr>|<name>",
 * "addr:<addr>" or "user:<name>", each part as it is or, past
 * USERNAME_MAX bytes, "#" and its SHA-256 in hex.  0 or -1.  Pure:
 * fuzzed. */
enum throttle_key_kind { THROTTLE_PAIR, THROTTLE_ADDR, THROTTLE_USER };
struct buf;
int throttle_key(struct buf *b, enum throttle_key_kind kind, const char *username,
		 const char *addr);

#endif
