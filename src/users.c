/*
 * users — SQL for the users table (see users.h).  MD5 for the token
 * claim comes from OpenSSL's libcrypto: never a digest of our own.
 */
#include "users.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char sql_by_name[] =
	"SELECT id, username, is_active, password_hash, context FROM users WHERE username = ?1";
static const char sql_by_id[] =
	"SELECT id, username, is_active, password_hash, context FROM users WHERE id = ?1";

static int copy_text(char *dst, size_t cap, const char *src)
{
	size_t n = src ? strlen(src) : 0;

	if (n >= cap)
		return -1;
	memcpy(dst, src ? src : "", n + 1);
	return 0;
}

static int users_fetch(struct db_stmt *st, struct user *u)
{
	const char *ctx;
	int rc = db_step(st);

	if (rc == DB_DONE)
		return 0;
	if (rc != DB_ROW)
		return -1;
	memset(u, 0, sizeof *u);
	u->id = db_column_int64(st, 0);
	u->active = db_column_int(st, 2);
	ctx = db_column_text(st, 4);
	u->context = strdup(ctx ? ctx : "");
	if (!u->context || copy_text(u->username, sizeof u->username, db_column_text(st, 1)) < 0 ||
	    copy_text(u->password_hash, sizeof u->password_hash, db_column_text(st, 3)) < 0) {
		users_clear(u);
		return -1;
	}
	db_reset(st);
	return 1;
}

int users_by_name(struct db *d, const char *name, struct user *u)
{
	struct db_stmt *st = db_stmt(d, sql_by_name);

	if (!st)
		return -1;
	db_bind_text(st, 1, name, -1);
	return users_fetch(st, u);
}

int users_by_id(struct db *d, long long id, struct user *u)
{
	struct db_stmt *st = db_stmt(d, sql_by_id);

	if (!st)
		return -1;
	db_bind_int64(st, 1, id);
	return users_fetch(st, u);
}

void users_clear(struct user *u)
{
	free(u->context);
	u->context = NULL;
	sodium_memzero(u->password_hash, sizeof u->password_hash);
}

int users_password_claim(const char *password_hash, char out[JWT_CLAIM_HASH_LEN + 1])
{
	static const char hex[] = "0123456789ABCDEF";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0, i;

	if (EVP_Digest(password_hash, strlen(password_hash), md, &n, EVP_md5(), NULL) != 1 ||
	    n * 2 != JWT_CLAIM_HASH_LEN)
		return -1;
	for (i = 0; i < n; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[JWT_CLAIM_HASH_LEN] = '\0';
	return 0;
}

int users_name_valid(const char *name)
{
	size_t n = strlen(name), i;

	if (n < 1 || n > USERNAME_MAX)
		return 0;
	for (i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      strchr("@.+-_", c)))
			return 0;
	}
	return 1;
}

int users_create(struct db *d, const char *name, const char *hash, char *err, size_t errlen)
{
	static const char sql[] = "INSERT INTO users (username, password_hash) VALUES (?1, ?2)";
	struct db_stmt *st;
	int rc;

	if (!users_name_valid(name)) {
		snprintf(err, errlen, "invalid username: use 1-150 letters, digits and @.+-_");
		return -1;
	}
	st = db_stmt(d, sql);
	if (!st) {
		snprintf(err, errlen, "%s", db_errmsg(d));
		return -1;
	}
	db_bind_text(st, 1, name, -1);
	db_bind_text(st, 2, hash, -1);
	rc = db_step(st);
	db_reset(st);
	if (rc == DB_DONE)
		return 0;
	if (rc == DB_CONSTRAINT)
		snprintf(err, errlen, "user %s already exists", name);
	else
		snprintf(err, errlen, "%s", db_errmsg(d));
	return -1;
}

static int users_update(struct db *d, const char *sql, const char *name, const char *value)
{
	struct db_stmt *st = db_stmt(d, sql);
	int rc;

	if (!st)
		return -1;
	if (value)
		db_bind_text(st, 2, value, -1);
	db_bind_text(st, 1, name, -1);
	rc = db_step(st);
	db_reset(st);
	if (rc != DB_DONE)
		return -1;
	return db_changes(d) > 0 ? 1 : 0;
}

int users_set_password(struct db *d, const char *name, const char *hash)
{
	static const char sql[] = "UPDATE users SET password_hash = ?2 WHERE username = ?1";
	return users_update(d, sql, name, hash);
}

int users_set_context(struct db *d, const char *name, const char *context)
{
	static const char sql[] = "UPDATE users SET context = ?2 WHERE username = ?1";
	return users_update(d, sql, name, context);
}

int users_delete(struct db *d, const char *name)
{
	static const char sql[] = "DELETE FROM users WHERE username = ?1";
	return users_update(d, sql, name, NULL);
}
