/*
 * auth — request authentication (see auth.h).
 */
#include "auth.h"

#include <sodium.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "jwt.h"
#include "response.h"
#include "tickets.h"

static const char not_valid[] = "Given token not valid for any token type";
const char auth_password_changed[] = "The user's password has been changed.";

int auth_claim_matches(const struct jwt_claims *claims, const struct user *u)
{
	char want[JWT_CLAIM_HASH_LEN + 1];

	if (users_password_claim(u->password_hash, want) < 0 ||
	    strlen(claims->hash_password) != JWT_CLAIM_HASH_LEN)
		return 0;
	return sodium_memcmp(want, claims->hash_password, JWT_CLAIM_HASH_LEN) == 0;
}

/* The last token this thread verified, and its claims.  A client sends
 * the same access token with every request for minutes, and verifying
 * it (HMAC, base64, two JSON parses) cost more than all the rest of
 * authentication.  The same bytes carry the same signature and claims;
 * only the expiry must be checked again.  Per thread, so no lock; small,
 * because it lives in every thread's static TLS (stacks may be 64 KiB). */
static __thread struct {
	size_t len; /* 0: empty */
	char token[512];
	struct jwt_claims claims;
} verified;

static int verify_token(const char *token, size_t len, struct jwt_claims *claims)
{
	time_t now = time(NULL);

	/* Constant time: the cached token may be somebody else's. */
	if (len && verified.len == len && sodium_memcmp(verified.token, token, len) == 0) {
		if (verified.claims.exp <= (long long)now)
			return -1;
		*claims = verified.claims;
		return 0;
	}
	if (jwt_verify(token, config.secret, config.secret_len, now, claims) < 0)
		return -1;
	if (len <= sizeof verified.token) {
		memcpy(verified.token, token, len);
		verified.len = len;
		verified.claims = *claims;
	}
	return 0;
}

/* Split "Bearer <token>" as SimpleJWT does: 0 ok (*token set), 1 no
 * credentials of our scheme, -1 malformed header (answered). */
static int bearer_token(struct request *r, const char *header, struct buf *token)
{
	const char *word;
	size_t len;
	int rc = request_split_bearer(header, &word, &len);

	if (rc < 0) {
		resp_detail_code(r, 401,
				 "Authorization header must contain two space-delimited values",
				 "bad_authorization_header");
		return -1;
	}
	if (rc == 1)
		return 1;
	if (buf_append(token, word, len) != BUF_OK) {
		resp_detail_code(r, 401, not_valid, "token_not_valid");
		return -1;
	}
	return 0;
}

int auth_user(struct request *r, long long user_id, struct user *u)
{
	struct db *d = db_acquire();
	int found = d ? users_by_id(d, user_id, u) : -1;

	db_release(d);
	if (found < 0) {
		resp_detail(r, 503, "Database unavailable.");
		return -1;
	}
	if (found == 0) {
		resp_detail_code(r, 401, "User not found", "user_not_found");
		return -1;
	}
	if (!u->active) {
		users_clear(u);
		resp_detail_code(r, 401, "User is inactive", "user_inactive");
		return -1;
	}
	r->user_id = u->id;
	return 0;
}

int auth_require(struct request *r, int allow_query, struct user *u)
{
	const char *header = request_param(r, "HTTP_AUTHORIZATION");
	struct jwt_claims claims;
	struct buf token;
	int rc = 1;

	buf_init(&token, JWT_MAX_LEN);
	if (header)
		rc = bearer_token(r, header, &token);
	if (rc < 0)
		goto fail;
	/* A ticket is a credential of its own (tickets.c). */
	if (allow_query) {
		int t = tickets_authenticate(r, rc == 0, u, allow_query != AUTH_QUERY_KEEP_TICKET);

		if (t <= 0) {
			buf_free(&token);
			return t;
		}
	}
	if (rc == 1 && allow_query) {
		rc = request_query(r, "access_token", &token);
		if (rc < 0) {
			resp_detail_code(r, 401, not_valid, "token_not_valid");
			goto fail;
		}
		rc = rc == 1 ? 0 : 1;
	}
	if (rc == 1) {
		resp_detail(r, 401, "Authentication credentials were not provided.");
		goto fail;
	}
	if (verify_token(buf_str(&token), token.len, &claims) < 0 || claims.type != JWT_ACCESS) {
		resp_detail_code(r, 401, not_valid, "token_not_valid");
		goto fail;
	}
	if (auth_user(r, claims.user_id, u) < 0)
		goto fail;
	/* Against the hash stored now, on every request: the verified-token
	 * cache above remembers the claim, never the verdict. */
	if (!auth_claim_matches(&claims, u)) {
		users_clear(u);
		resp_detail_code(r, 401, auth_password_changed, "password_changed");
		goto fail;
	}
	buf_free(&token);
	return 0;
fail:
	buf_free(&token);
	return -1;
}
