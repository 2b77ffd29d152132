/*
 * tickets — stream tickets: issuing and spending them (see tickets.h).
 *
 * Times are unix milliseconds, so a ticket lives its lifetime to the
 * millisecond, not up to a second less.  Expired rows go at the next
 * issue (by anybody), in the same transaction; the table never holds more
 * than TICKETS_PER_USER_MAX live rows per user.
 */
#include "tickets.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "config.h"
#include "db.h"
#include "log.h"
#include "response.h"

#define TICKET_BYTES 32
#define TICKET_VARIANT sodium_base64_VARIANT_URLSAFE_NO_PADDING
#define TICKET_TEXT_LEN sodium_base64_ENCODED_LEN(TICKET_BYTES, TICKET_VARIANT) /* with NUL */
/* A ?ticket= value longer than this is none of ours: refused unread. */
#define TICKET_QUERY_MAX 256

static const char not_valid[] = "Stream ticket not valid: unknown, expired or already used.";
static const char code_not_valid[] = "ticket_not_valid";

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* What the table keys on: the ticket itself is never stored. */
static void ticket_hash(unsigned char out[crypto_generichash_BYTES], const char *text, size_t n)
{
	crypto_generichash(out, crypto_generichash_BYTES, (const unsigned char *)text, n, NULL, 0);
}

/* Run a statement that returns at most one row, after its parameters are
 * bound; the row's first two columns in *a and *b.  DB_ROW,
 * DB_DONE or an error code. */
static int step_once(struct db_stmt *st, long long *a, long long *b)
{
	int rc = db_step(st);

	if (rc == DB_ROW && a)
		*a = db_column_int64(st, 0);
	if (rc == DB_ROW && b)
		*b = db_column_int64(st, 1);
	db_reset(st);
	return rc;
}

/* The statement for sql with the hash bound to ?1, or NULL. */
static struct db_stmt *with_hash(struct db *d, const char *sql, const unsigned char *hash)
{
	struct db_stmt *st = db_stmt(d, sql);

	if (st)
		db_bind_blob(st, 1, hash, crypto_generichash_BYTES);
	return st;
}

/* In one write transaction: drop expired tickets, count the user's, store
 * the new hash.  0 stored; 1 the user holds the maximum already, with
 * *wait_s until the oldest of them expires; -1 database error. */
static int ticket_store(struct db *d, long long user_id, const unsigned char *hash, long long now,
			long long expires, long *wait_s)
{
	static const char sql_purge[] = "DELETE FROM stream_tickets WHERE expires_at <= ?1";
	static const char sql_count[] = "SELECT count(*), min(expires_at) FROM stream_tickets "
					"WHERE user_id = ?1 AND spent = 0";
	static const char sql_insert[] =
		"INSERT INTO stream_tickets (hash, user_id, expires_at) VALUES (?1, ?2, ?3)";
	long long n = 0, oldest = 0;
	struct db_stmt *st;
	int full;

	if (db_begin(d) < 0 || !(st = db_stmt(d, sql_purge)))
		goto fail;
	db_bind_int64(st, 1, now);
	if (step_once(st, NULL, NULL) != DB_DONE || !(st = db_stmt(d, sql_count)))
		goto fail;
	db_bind_int64(st, 1, user_id);
	if (step_once(st, &n, &oldest) != DB_ROW)
		goto fail;
	full = n >= TICKETS_PER_USER_MAX;
	if (!full) {
		if (!(st = with_hash(d, sql_insert, hash)))
			goto fail;
		db_bind_int64(st, 2, user_id);
		db_bind_int64(st, 3, expires);
		if (step_once(st, NULL, NULL) != DB_DONE)
			goto fail;
	}
	if (db_commit(d) < 0)
		goto fail;
	if (full)
		*wait_s = oldest > now ? (long)((oldest - now + 999) / 1000) : 1;
	return full;
fail:
	db_rollback(d);
	return -1;
}

/* Spend a ticket (spend 1): 1 it was live and unspent (*user_id set), 0
 * unknown, spent or expired, -1 database error.  Presenting it spends it,
 * live or not; a spent row stays until it expires, for reconnects: with
 * spend 0 a ticket not expired is live, spent or not, and stays as it is. */
static int ticket_spend(struct db *d, const unsigned char *hash, long long now, long long *user_id,
			int spend)
{
	static const char sql_find[] =
		"SELECT user_id, expires_at, spent FROM stream_tickets WHERE hash = ?1";
	static const char sql_spend[] = "UPDATE stream_tickets SET spent = 1 WHERE hash = ?1";
	long long expires = 0;
	struct db_stmt *st;
	int rc, spent = 0;

	if (db_begin(d) < 0 || !(st = with_hash(d, sql_find, hash)))
		goto fail;
	rc = db_step(st);
	if (rc == DB_ROW) {
		*user_id = db_column_int64(st, 0);
		expires = db_column_int64(st, 1);
		spent = db_column_int(st, 2);
	}
	db_reset(st);
	if (rc != DB_ROW && rc != DB_DONE)
		goto fail;
	if (rc == DB_ROW && spend && !spent &&
	    (!(st = with_hash(d, sql_spend, hash)) || step_once(st, NULL, NULL) != DB_DONE))
		goto fail;
	if (db_commit(d) < 0)
		goto fail;
	return rc == DB_ROW && expires > now && !(spend && spent);
fail:
	db_rollback(d);
	return -1;
}

/* libsodium set up (once per process; later calls only check).  0, or -1
 * with 503 answered. */
static int sodium_ready(struct request *r)
{
	if (sodium_init() >= 0)
		return 0;
	resp_detail(r, 503, "No randomness available, please retry.");
	return -1;
}

static void refuse(struct request *r, const char *detail, const char *why)
{
	snprintf(r->note, sizeof r->note, "ticket=%s", why);
	resp_detail_code(r, 401, detail, code_not_valid);
}

void tickets_post(struct request *r)
{
	unsigned char raw[TICKET_BYTES], hash[crypto_generichash_BYTES];
	char text[TICKET_TEXT_LEN], headers[64];
	long long now, lifetime_ms = (long long)config.stream_ticket_lifetime * 1000;
	long wait_s = 0;
	struct user u;
	struct db *d;
	cJSON *o;
	int rc;

	if (auth_require(r, 0, &u) < 0)
		return;
	users_clear(&u);
	if (request_parse_body(r) < 0) /* nothing is read from it; {} or empty */
		return;
	if (sodium_ready(r) < 0)
		return;
	randombytes_buf(raw, sizeof raw);
	sodium_bin2base64(text, sizeof text, raw, sizeof raw, TICKET_VARIANT);
	sodium_memzero(raw, sizeof raw);
	ticket_hash(hash, text, strlen(text));
	d = db_acquire();
	if (!d) {
		resp_detail(r, 503, "Database unavailable.");
		return;
	}
	now = now_ms();
	rc = ticket_store(d, r->user_id, hash, now, now + lifetime_ms, &wait_s);
	if (rc < 0)
		log_error("storing a stream ticket of user %lld failed: %s", r->user_id,
			  db_errmsg(d));
	db_release(d);
	if (rc < 0) {
		resp_detail(r, 503, "Database unavailable.");
		return;
	}
	if (rc > 0) {
		char detail[160];

		snprintf(detail, sizeof detail,
			 "Too many unused stream tickets: at most %d per user. Use one, or retry "
			 "once the oldest has expired.",
			 TICKETS_PER_USER_MAX);
		snprintf(headers, sizeof headers, "Retry-After: %ld\r\n", wait_s);
		o = cJSON_CreateObject();
		if (o && !cJSON_AddStringToObject(o, "detail", detail)) {
			cJSON_Delete(o);
			o = NULL;
		}
		resp_json_headers(r, 429, o, headers);
		return;
	}
	o = cJSON_CreateObject();
	if (o && (!cJSON_AddStringToObject(o, "ticket", text) ||
		  !cJSON_AddNumberToObject(o, "expires_in", config.stream_ticket_lifetime))) {
		cJSON_Delete(o);
		o = NULL;
	}
	/* A credential: no cache may keep it (RFC 6749 5.1). */
	resp_json_headers(r, 200, o, "Cache-Control: no-store\r\nPragma: no-cache\r\n");
}

int tickets_authenticate(struct request *r, int other_credential, struct user *u, int spend)
{
	unsigned char hash[crypto_generichash_BYTES];
	long long user_id = 0;
	struct buf ticket, other;
	struct db *d;
	int found, ready, live;

	buf_init(&ticket, TICKET_QUERY_MAX);
	found = request_query(r, "ticket", &ticket);
	if (found <= 0) {
		buf_free(&ticket);
		if (found == 0)
			return 1;
		/* Bad encoding, too long or given twice: no ticket of ours. */
		refuse(r, not_valid, "malformed");
		return -1;
	}
	ready = sodium_ready(r);
	if (ready == 0)
		ticket_hash(hash, buf_str(&ticket), ticket.len);
	buf_free(&ticket);
	if (ready < 0)
		return -1;
	d = db_acquire();
	live = d ? ticket_spend(d, hash, now_ms(), &user_id, spend) : -1;
	if (live < 0)
		log_error("spending a stream ticket failed: %s", d ? db_errmsg(d) : "no database");
	db_release(d);
	if (live < 0) {
		resp_detail(r, 503, "Database unavailable.");
		return -1;
	}
	/* Any access_token counts, even an empty or malformed one: the
	 * client sent two credentials. */
	buf_init(&other, 16);
	if (!other_credential)
		other_credential = request_query(r, "access_token", &other) != 0;
	buf_free(&other);
	if (other_credential) {
		refuse(r,
		       "A stream ticket is a credential of its own: send it without an "
		       "Authorization header or access_token.",
		       "with_other_credential");
		return -1;
	}
	if (!live) {
		refuse(r, not_valid, "not_valid");
		return -1;
	}
	return auth_user(r, user_id, u);
}
