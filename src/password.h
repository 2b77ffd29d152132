/*
 * password — slow salted password hashes (libsodium crypto_pwhash_str,
 * argon2id, "interactive" limits: ~64 MiB and ~0.1 s per hash).
 *
 * At most config.hash_concurrency hashes run at once per process, so a
 * burst of logins cannot take all memory or every core.
 */
#ifndef JARVAS_PASSWORD_H
#define JARVAS_PASSWORD_H

#include <sodium.h>

#define PASSWORD_HASH_MAX crypto_pwhash_STRBYTES

int password_init(int concurrency);
/* 0 and out filled, or -1. */
int password_hash(const char *password, char out[PASSWORD_HASH_MAX]);
/* 1 if password matches hash, 0 if not (or hash is NULL: spends the same
 * time on a dummy hash so unknown users cannot be told apart). */
int password_check(const char *hash, const char *password);

#endif
