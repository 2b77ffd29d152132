/*
 * jwt — SimpleJWT-compatible JSON Web Tokens, HS256 only.
 *
 * Claims: token_type ("access"|"refresh"), exp, iat, jti, user_id, and
 * hash_password: SimpleJWT's CHECK_REVOKE_TOKEN claim, the MD5 of the
 * user's stored password hash (users_password_claim()).  auth.c and
 * tokens.c refuse a token whose claim does not match the user's current
 * hash, so a password change ends every token issued before it; a
 * deleted user's id is never given again (schema.sql, migration 3).
 * jwt_verify() only reads the claim.  A token without it (issued before
 * it existed) matches no user.
 *
 * Verification accepts nothing but alg HS256 with a valid signature
 * (compared in constant time) and an exp in the future.  HMAC, base64url
 * and randomness come from libsodium.
 */
#ifndef JARVAS_JWT_H
#define JARVAS_JWT_H

#include <stddef.h>
#include <time.h>

#include "buf.h"

enum jwt_type { JWT_ACCESS, JWT_REFRESH };

#define JWT_CLAIM_HASH_LEN 32 /* hash_password: MD5, upper-case hex */

struct jwt_claims {
	enum jwt_type type;
	long long user_id;
	long long exp;
	long long iat;
	char jti[33];
	char hash_password[JWT_CLAIM_HASH_LEN + 1]; /* "" when absent or malformed */
};

#define JWT_MAX_LEN 4096

/* Append a signed token to out; hash_password: the claim's value, or
 * NULL for none.  0 or -1. */
int jwt_sign(struct buf *out, enum jwt_type type, long long user_id, const char *hash_password,
	     time_t now, long lifetime, const unsigned char *key, size_t keylen);

/* 0 when token is a valid, unexpired HS256 token signed with key; then
 * *claims is filled.  -1 otherwise. */
int jwt_verify(const char *token, const unsigned char *key, size_t keylen, time_t now,
	       struct jwt_claims *claims);

/* base64url without padding, exposed for the tests. */
int jwt_b64_encode(struct buf *out, const unsigned char *p, size_t n);
/* Decodes into out (cap bytes); sets *outlen.  -1 on any invalid input. */
int jwt_b64_decode(const char *s, size_t n, unsigned char *out, size_t cap, size_t *outlen);

#endif
