/*
 * throttle — failed-login counting (see throttle.h).
 */
#include "throttle.h"

#include <stdio.h>
#include <time.h>

#include "buf.h"
#include "config.h"

/* "user:<name>" / "addr:<ip>"; 0 or -1. */
static int make_key(struct buf *b, const char *kind, const char *value)
{
	buf_reset(b);
	return buf_printf(b, "%s:%s", kind, value ? value : "-") == BUF_OK ? 0 : -1;
}

/* Seconds left in the key's window when it is over limit, else 0. */
static long over_limit(struct db *d, const char *key, int limit, time_t now)
{
	static const char sql[] =
		"SELECT failures, window_start FROM login_failures WHERE key = ?1";
	sqlite3_stmt *st = db_stmt(d, sql);
	long wait = 0;
	int rc;

	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		long long end = sqlite3_column_int64(st, 1) + config.login_window;
		if (sqlite3_column_int(st, 0) >= limit && end > now)
			wait = (long)(end - now);
	}
	sqlite3_reset(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? wait : -1;
}

long throttle_check(struct db *d, const char *username, const char *addr)
{
	struct buf key;
	time_t now = time(NULL);
	long a = -1, b = -1;

	buf_init(&key, 512);
	if (make_key(&key, "user", username) == 0)
		a = over_limit(d, buf_str(&key), config.login_failures_per_user, now);
	if (a >= 0 && make_key(&key, "addr", addr) == 0)
		b = over_limit(d, buf_str(&key), config.login_failures_per_addr, now);
	buf_free(&key);
	if (a < 0 || b < 0)
		return -1;
	return a > b ? a : b;
}

static int count_failure(struct db *d, const char *key, time_t now)
{
	/* A window that has ended starts again at 1. */
	static const char sql[] =
		"INSERT INTO login_failures (key, failures, window_start) VALUES (?1, 1, ?2) "
		"ON CONFLICT (key) DO UPDATE SET "
		"failures = CASE WHEN window_start + ?3 <= ?2 THEN 1 ELSE failures + 1 END, "
		"window_start = CASE WHEN window_start + ?3 <= ?2 THEN ?2 ELSE window_start END";
	sqlite3_stmt *st = db_stmt(d, sql);
	int rc;

	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)now);
	sqlite3_bind_int64(st, 3, config.login_window);
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : -1;
}

int throttle_failed(struct db *d, const char *username, const char *addr)
{
	struct buf key;
	time_t now = time(NULL);
	int rc = -1;

	buf_init(&key, 512);
	if (db_begin(d) == 0 && make_key(&key, "user", username) == 0 &&
	    count_failure(d, buf_str(&key), now) == 0 && make_key(&key, "addr", addr) == 0 &&
	    count_failure(d, buf_str(&key), now) == 0 && db_commit(d) == 0)
		rc = 0;
	else
		db_rollback(d);
	buf_free(&key);
	return rc;
}

int throttle_succeeded(struct db *d, const char *username)
{
	static const char sql[] = "DELETE FROM login_failures WHERE key = ?1";
	sqlite3_stmt *st = db_stmt(d, sql);
	struct buf key;
	int rc = SQLITE_ERROR;

	buf_init(&key, 512);
	if (st && make_key(&key, "user", username) == 0) {
		sqlite3_bind_text(st, 1, buf_str(&key), -1, SQLITE_STATIC);
		rc = sqlite3_step(st);
		sqlite3_reset(st);
	}
	buf_free(&key);
	return rc == SQLITE_DONE ? 0 : -1;
}
