/*
 * users — the users table: lookup, create, change password, delete, list.
 * Functions take a connection from the caller; they never hold one.
 */
#ifndef JARVAS_USERS_H
#define JARVAS_USERS_H

#include "db.h"
#include "jwt.h"
#include "password.h"

#define USERNAME_MAX 150 /* Django's limit */

struct user {
	long long id;
	char username[USERNAME_MAX + 1];
	int active;
	char password_hash[PASSWORD_HASH_MAX];
	char *context; /* the user's part of the system prompt; owned */
};

/* 1 found, 0 not found, -1 database error. */
int users_by_name(struct db *d, const char *name, struct user *u);
int users_by_id(struct db *d, long long id, struct user *u);
void users_clear(struct user *u); /* frees u->context */

/* 0, or -1 (exists, invalid name or database error; reason in err). */
int users_create(struct db *d, const char *name, const char *hash, char *err, size_t errlen);
/* 1 changed, 0 no such user, -1 error. */
int users_set_password(struct db *d, const char *name, const char *hash);
int users_set_context(struct db *d, const char *name, const char *context);
int users_delete(struct db *d, const char *name);

/* The hash_password claim (jwt.h) for a stored password hash: its MD5 as
 * upper-case hex, SimpleJWT's get_md5_hash_password(), so tokens stay
 * interchangeable with a Django backend on the same users.  0 or -1. */
int users_password_claim(const char *password_hash, char out[JWT_CLAIM_HASH_LEN + 1]);

/* Django's username rule: 1-150 of letters, digits and @.+-_ */
int users_name_valid(const char *name);

#endif
