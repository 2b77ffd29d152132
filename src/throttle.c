/*
 * throttle — failed-login counting (see throttle.h).
 */
#include "throttle.h"

#include <sodium.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "config.h"
#include "log.h"
#include "users.h"

#define KEY_MAX 512 /* "pair:" + two parts of at most USERNAME_MAX bytes */

/* One part of a key: as it is, or "#<sha256 hex>" when longer than a
 * username can be (the client chooses it; 1 MiB must not be a key). */
static int key_part(struct buf *b, const char *s)
{
	unsigned char md[crypto_hash_sha256_BYTES];
	char hex[2 * sizeof md + 1];
	size_t n;

	if (!s)
		s = "-";
	n = strlen(s);
	if (n <= USERNAME_MAX)
		return buf_append(b, s, n) == BUF_OK ? 0 : -1;
	crypto_hash_sha256(md, (const unsigned char *)s, n);
	sodium_bin2hex(hex, sizeof hex, md, sizeof md);
	return buf_putc(b, '#') == BUF_OK && buf_puts(b, hex) == BUF_OK ? 0 : -1;
}

int throttle_key(struct buf *b, enum throttle_key_kind kind, const char *username, const char *addr)
{
	static const char *const prefix[] = {"pair:", "addr:", "user:"};

	buf_reset(b);
	if (buf_puts(b, prefix[kind]) != BUF_OK)
		return -1;
	if (kind == THROTTLE_PAIR) /* an address holds no '|' */
		return key_part(b, addr) == 0 && buf_putc(b, '|') == BUF_OK &&
				       key_part(b, username) == 0
			       ? 0
			       : -1;
	return key_part(b, kind == THROTTLE_ADDR ? addr : username);
}

struct count {
	long long attempts, window_start;
};

/* Count one more attempt under key (a window that has ended starts again
 * at 1); in the caller's transaction.  0 or -1. */
static int count_attempt(struct db *d, const char *key, time_t now, struct count *c)
{
	static const char sql[] =
		"INSERT INTO login_failures (key, failures, window_start) VALUES (?1, 1, ?2) "
		"ON CONFLICT (key) DO UPDATE SET "
		"failures = CASE WHEN window_start + ?3 <= ?2 THEN 1 ELSE failures + 1 END, "
		"window_start = CASE WHEN window_start + ?3 <= ?2 THEN ?2 ELSE window_start END "
		"RETURNING failures, window_start";
	struct db_stmt *st = db_stmt(d, sql);
	int rc;

	if (!st)
		return -1;
	db_bind_text_copy(st, 1, key, -1);
	db_bind_int64(st, 2, (long long)now);
	db_bind_int64(st, 3, config.login_window);
	rc = db_step(st);
	if (rc == DB_ROW) {
		c->attempts = db_column_int64(st, 0);
		c->window_start = db_column_int64(st, 1);
		rc = db_step(st);
	}
	db_reset(st);
	return rc == DB_DONE ? 0 : -1;
}

/* Seconds until c's window ends, at least 1. */
static long wait_for(const struct count *c, time_t now)
{
	long long left = c->window_start + config.login_window - (long long)now;

	return left > 0 ? (long)left : 1;
}

long throttle_attempt(struct db *d, const char *username, const char *addr)
{
	struct count c[3];
	struct buf key;
	time_t now = time(NULL);
	long wait = 0;
	int k;

	buf_init(&key, KEY_MAX);
	if (db_begin(d) < 0)
		goto fail;
	for (k = THROTTLE_PAIR; k <= THROTTLE_USER; k++)
		if (throttle_key(&key, k, username, addr) < 0 ||
		    count_attempt(d, buf_str(&key), now, &c[k]) < 0)
			goto fail;
	if (c[THROTTLE_PAIR].attempts > config.login_failures_per_user)
		wait = wait_for(&c[THROTTLE_PAIR], now);
	else if (c[THROTTLE_ADDR].attempts > config.login_failures_per_addr)
		wait = wait_for(&c[THROTTLE_ADDR], now);
	else if (c[THROTTLE_USER].attempts > config.login_username_ceiling &&
		 c[THROTTLE_PAIR].attempts > 1)
		wait = wait_for(&c[THROTTLE_USER], now);
	/* A refused attempt is not counted: refusals do not feed the ceiling. */
	if (wait > 0)
		db_rollback(d);
	else if (db_commit(d) < 0)
		goto fail;
	buf_free(&key);
	return wait;
fail:
	log_error("cannot record a login attempt: %s", db_errmsg(d));
	db_rollback(d);
	buf_free(&key);
	return -1;
}

int throttle_succeeded(struct db *d, const char *username, const char *addr)
{
	static const char forget[] = "DELETE FROM login_failures WHERE key = ?1";
	static const char uncount[] = "UPDATE login_failures SET failures = max(failures - 1, 0) "
				      "WHERE key = ?1";
	struct buf key;
	int k, rc = -1;

	buf_init(&key, KEY_MAX);
	if (db_begin(d) < 0)
		goto out;
	for (k = THROTTLE_PAIR; k <= THROTTLE_USER; k++) {
		struct db_stmt *st = db_stmt(d, k == THROTTLE_PAIR ? forget : uncount);
		int step;

		if (!st || throttle_key(&key, k, username, addr) < 0)
			goto out;
		db_bind_text_copy(st, 1, buf_str(&key), -1);
		step = db_step(st);
		db_reset(st);
		if (step != DB_DONE)
			goto out;
	}
	rc = db_commit(d);
out:
	if (rc < 0)
		db_rollback(d);
	buf_free(&key);
	return rc;
}
