/*
 * tokens — login and token endpoints, SimpleJWT-compatible (see tokens.h).
 *
 * The slow password check runs without a database connection held, and
 * an unknown username costs the same hash as a wrong password.  Verify
 * checks signature, type and expiry only, as SimpleJWT's does: it grants
 * nothing, and every endpoint that does checks the user (auth.c).
 */
#include "tokens.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "config.h"
#include "db.h"
#include "jwt.h"
#include "log.h"
#include "password.h"
#include "throttle.h"
#include "response.h"
#include "users.h"

static const char invalid_token[] = "Token is invalid or expired";

/* Collect DRF-style errors for required string fields.  Returns 0 when all
 * are present, else answers 400 with every field's error and returns -1. */
static int require_fields(struct request *r, const char *const *names, const char **values, int n)
{
	cJSON *errors = cJSON_CreateObject();
	int i, bad = 0;

	if (!errors) {
		resp_json(r, 500, NULL);
		return -1;
	}
	for (i = 0; i < n; i++) {
		int rc = request_field(r, names[i], &values[i]);
		const char *msg = request_field_problem(rc);

		if (!msg && values[i][0] == '\0')
			msg = "This field may not be blank.";
		if (msg) {
			cJSON *list = cJSON_AddArrayToObject(errors, names[i]);
			cJSON *item = cJSON_CreateString(msg);

			if (!list || !item) {
				cJSON_Delete(item);
				cJSON_Delete(errors);
				resp_json(r, 500, NULL);
				return -1;
			}
			cJSON_AddItemToArray(list, item);
			bad = 1;
		}
	}
	if (bad) {
		resp_json(r, 400, errors);
		return -1;
	}
	cJSON_Delete(errors);
	return 0;
}

/* Answer {"refresh": ..., "access": ...} or just {"access": ...}, both
 * carrying the hash_password claim. */
static void send_tokens(struct request *r, long long user_id, const char *claim, int with_refresh)
{
	struct buf access, refresh;
	cJSON *o = cJSON_CreateObject();
	time_t now = time(NULL);

	buf_init(&access, JWT_MAX_LEN);
	buf_init(&refresh, JWT_MAX_LEN);
	if (!o ||
	    jwt_sign(&access, JWT_ACCESS, user_id, claim, now, config.access_lifetime,
		     config.secret, config.secret_len) < 0 ||
	    (with_refresh &&
	     jwt_sign(&refresh, JWT_REFRESH, user_id, claim, now, config.refresh_lifetime,
		      config.secret, config.secret_len) < 0) ||
	    (with_refresh && !cJSON_AddStringToObject(o, "refresh", buf_str(&refresh))) ||
	    !cJSON_AddStringToObject(o, "access", buf_str(&access))) {
		cJSON_Delete(o);
		o = NULL;
	}
	resp_json(r, o ? 200 : 500, o);
	buf_free(&access);
	buf_free(&refresh);
}

static void throttled(struct request *r, long wait)
{
	char headers[64];
	cJSON *o = cJSON_CreateObject();

	snprintf(headers, sizeof headers, "Retry-After: %ld\r\n", wait);
	if (o && !cJSON_AddStringToObject(o, "detail",
					  "Too many failed login attempts. Try again later.")) {
		cJSON_Delete(o);
		o = NULL;
	}
	snprintf(r->note, sizeof r->note, "login=throttled");
	resp_json_headers(r, 429, o, headers);
}

void tokens_obtain(struct request *r)
{
	static const char *const names[] = {"username", "password"};
	const char *values[2] = {NULL, NULL};
	const char *addr = request_param(r, "REMOTE_ADDR");
	char claim[JWT_CLAIM_HASH_LEN + 1] = "";
	struct user u;
	struct db *d;
	long wait;
	int found, ok;

	if (request_parse_body(r) < 0 || require_fields(r, names, values, 2) < 0)
		return;
	d = db_acquire();
	if (!d) {
		resp_detail(r, 503, "Database unavailable.");
		return;
	}
	/* Counted before the hash, so parallel guesses cannot overshoot; an
	 * attempt that cannot be counted is not made (fail closed). */
	wait = throttle_attempt(d, values[0], addr);
	found = wait == 0 && strlen(values[0]) <= USERNAME_MAX ? users_by_name(d, values[0], &u)
							       : 0;
	db_release(d);
	if (wait < 0) {
		snprintf(r->note, sizeof r->note, "login=unrecorded");
		resp_detail(r, 503,
			    "Login is unavailable: the attempt cannot be recorded (the database is "
			    "read-only or full). Try again later.");
		return;
	}
	if (wait > 0) {
		throttled(r, wait);
		return;
	}
	if (found < 0) {
		resp_detail(r, 503, "Database unavailable.");
		return;
	}
	/* Hash even for an unknown user, so timing does not tell. */
	ok = password_check(found ? u.password_hash : NULL, values[1]) && found && u.active &&
	     users_password_claim(u.password_hash, claim) == 0;
	if (found)
		users_clear(&u);
	if (!ok) {
		snprintf(r->note, sizeof r->note, "login=failed");
		resp_detail(r, 401, "No active account found with the given credentials");
		return;
	}
	/* The attempt stays counted as a failure if this fails: logged, and
	 * the login stands. */
	d = db_acquire();
	if (!d || throttle_succeeded(d, values[0], addr) < 0)
		log_warn("login throttling: clearing a success failed: %s", db_errmsg(d));
	db_release(d);
	r->user_id = u.id;
	send_tokens(r, u.id, claim, 1);
}

void tokens_refresh(struct request *r)
{
	static const char *const names[] = {"refresh"};
	const char *value = NULL;
	struct jwt_claims claims;
	struct user u;
	struct db *d;
	int found, ok;

	if (request_parse_body(r) < 0 || require_fields(r, names, &value, 1) < 0)
		return;
	if (jwt_verify(value, config.secret, config.secret_len, time(NULL), &claims) < 0 ||
	    claims.type != JWT_REFRESH) {
		resp_detail_code(r, 401, invalid_token, "token_not_valid");
		return;
	}
	d = db_acquire();
	if (!d) {
		resp_detail(r, 503, "Database unavailable.");
		return;
	}
	found = users_by_id(d, claims.user_id, &u);
	db_release(d);
	if (found < 0) {
		resp_detail(r, 503, "Database unavailable.");
		return;
	}
	if (!found || !u.active) {
		if (found)
			users_clear(&u);
		resp_detail_code(r, 401, "No active account found for the given token.",
				 "no_active_account");
		return;
	}
	/* SimpleJWT's TokenRefreshSerializer with CHECK_REVOKE_TOKEN; the new
	 * access token copies the (matching) claim. */
	ok = auth_claim_matches(&claims, &u);
	users_clear(&u);
	if (!ok) {
		resp_detail_code(r, 401, auth_password_changed, "password_changed");
		return;
	}
	r->user_id = claims.user_id;
	send_tokens(r, claims.user_id, claims.hash_password, 0);
}

void tokens_verify(struct request *r)
{
	static const char *const names[] = {"token"};
	const char *value = NULL;
	struct jwt_claims claims;

	if (request_parse_body(r) < 0 || require_fields(r, names, &value, 1) < 0)
		return;
	if (jwt_verify(value, config.secret, config.secret_len, time(NULL), &claims) < 0) {
		resp_detail_code(r, 401, invalid_token, "token_not_valid");
		return;
	}
	resp_json_text(r, 200, "{}", NULL);
}
