/*
 * prompt — system prompt building and the prompt cache (see prompt.h).
 *
 * The base prompt file is re-read only when its stat() identity (inode,
 * size, mtime) changes; the copy is shared by all threads under
 * base.lock.
 */
#include "prompt.h"

#include <errno.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "metrics.h"

static const char builtin_prompt[] =
	"You are Jarvas, a helpful assistant. Answer clearly and concisely, in the "
	"language the user writes in.";

#define BASE_MAX (256u << 10)

static struct {
	pthread_mutex_t lock;	  /* guards the fields below */
	char *text;		  /* NULL: use builtin_prompt */
	unsigned char digest[16]; /* hash of the text in use */
	int have_digest;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
} base = {.lock = PTHREAD_MUTEX_INITIALIZER};

void prompt_init(struct prompt *p)
{
	p->key[0] = '\0';
	p->hit = 0;
	buf_init(&p->text, BASE_MAX + 128u * 1024);
}

void prompt_free(struct prompt *p)
{
	buf_free(&p->text);
}

static int read_file(const char *path, struct buf *out)
{
	FILE *f = fopen(path, "r");
	char chunk[8192];
	size_t n;
	int rc = 0;

	if (!f)
		return -1;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
		if (buf_append(out, chunk, n) != BUF_OK) {
			rc = -1;
			break;
		}
	if (ferror(f))
		rc = -1;
	fclose(f);
	return rc;
}

/* Bring base.text up to date with the file; base.lock held.  A file that
 * cannot be read is logged and the last good copy (or the built-in
 * prompt) is used: a typo in the file must not take the chat down. */
static void refresh_base(void)
{
	const char *text;
	struct stat st;

	if (config.system_prompt_file && stat(config.system_prompt_file, &st) == 0 &&
	    (!base.text || st.st_ino != base.ino || st.st_dev != base.dev ||
	     st.st_size != base.size || st.st_mtim.tv_sec != base.mtime.tv_sec ||
	     st.st_mtim.tv_nsec != base.mtime.tv_nsec)) {
		struct buf fresh;

		buf_init(&fresh, BASE_MAX);
		if (read_file(config.system_prompt_file, &fresh) == 0) {
			free(base.text);
			base.text = buf_steal(&fresh);
			base.dev = st.st_dev;
			base.ino = st.st_ino;
			base.size = st.st_size;
			base.mtime = st.st_mtim;
			base.have_digest = 0;
		} else {
			log_warn("cannot read system prompt %s: %s", config.system_prompt_file,
				 strerror(errno));
		}
		buf_free(&fresh);
	}
	if (!base.have_digest) {
		text = base.text ? base.text : builtin_prompt;
		crypto_generichash(base.digest, sizeof base.digest, (const unsigned char *)text,
				   strlen(text), NULL, 0);
		base.have_digest = 1;
	}
}

static int build(const struct user *u, struct buf *out)
{
	int rc;

	buf_reset(out);
	pthread_mutex_lock(&base.lock);
	refresh_base();
	rc = buf_puts(out, base.text ? base.text : builtin_prompt);
	pthread_mutex_unlock(&base.lock);
	if (rc != BUF_OK ||
	    buf_printf(out, "\n\nYou are talking with the user \"%s\".", u->username) != BUF_OK)
		return -1;
	if (u->context && u->context[0] &&
	    buf_printf(out, "\n\nWhat the user wants you to know about them:\n%s", u->context) !=
		    BUF_OK)
		return -1;
	return 0;
}

/* The key hashes every input of build(): the base prompt (by its digest),
 * the user's id, name and context.  Any change is a new key at once. */
static void make_key(const struct user *u, char key[PROMPT_KEY_LEN + 1])
{
	crypto_generichash_state st;
	unsigned char h[PROMPT_KEY_LEN / 2];
	unsigned char digest[sizeof base.digest];

	pthread_mutex_lock(&base.lock);
	refresh_base();
	memcpy(digest, base.digest, sizeof digest);
	pthread_mutex_unlock(&base.lock);

	crypto_generichash_init(&st, NULL, 0, sizeof h);
	crypto_generichash_update(&st, digest, sizeof digest);
	crypto_generichash_update(&st, (const unsigned char *)&u->id, sizeof u->id);
	/* Lengths keep ("ab","c") and ("a","bc") apart. */
	for (int i = 0; i < 2; i++) {
		const char *f = i == 0 ? u->username : (u->context ? u->context : "");
		size_t n = strlen(f);

		crypto_generichash_update(&st, (const unsigned char *)&n, sizeof n);
		crypto_generichash_update(&st, (const unsigned char *)f, n);
	}
	crypto_generichash_final(&st, h, sizeof h);
	sodium_bin2hex(key, PROMPT_KEY_LEN + 1, h, sizeof h);
}

int prompt_get(struct db *d, const struct user *u, struct prompt *p)
{
	static const char sql[] =
		"SELECT value FROM prompt_cache WHERE key = ?1 AND expires_at > ?2";
	struct db_stmt *st;
	int rc;

	make_key(u, p->key);
	st = db_stmt(d, sql);
	if (!st)
		return -1;
	db_bind_text(st, 1, p->key, -1);
	db_bind_int64(st, 2, (long long)time(NULL));
	rc = db_step(st);
	p->hit = rc == DB_ROW;
	buf_reset(&p->text);
	if (p->hit &&
	    buf_append(&p->text, db_column_text(st, 0), (size_t)db_column_bytes(st, 0)) != BUF_OK)
		rc = DB_ERROR;
	db_reset(st);
	if (rc != DB_ROW && rc != DB_DONE)
		return -1;
	if (!p->hit && build(u, &p->text) < 0)
		return -1;
	metrics_cache(p->hit);
	return 0;
}

int prompt_record(struct db *d, const struct prompt *p)
{
	static const char sql_hit[] = "UPDATE prompt_cache SET hits = hits + 1 WHERE key = ?1";
	static const char sql_put[] =
		"INSERT INTO prompt_cache (key, value, created_at, expires_at, hits) "
		"VALUES (?1, ?2, ?3, ?4, 0) ON CONFLICT (key) DO UPDATE SET "
		"value = excluded.value, created_at = excluded.created_at, "
		"expires_at = excluded.expires_at, hits = 0";
	static const char sql_expire[] = "DELETE FROM prompt_cache WHERE expires_at <= ?1";
	time_t now = time(NULL);
	struct db_stmt *st;
	int rc;

	if (p->hit) {
		st = db_stmt(d, sql_hit);
		if (!st)
			return -1;
		db_bind_text(st, 1, p->key, -1);
		return db_step_done(st);
	}
	/* A miss is rare: the moment to drop expired entries too. */
	st = db_stmt(d, sql_expire);
	if (!st)
		return -1;
	db_bind_int64(st, 1, (long long)now);
	rc = db_step(st);
	db_reset(st);
	if (rc != DB_DONE)
		return -1;
	st = db_stmt(d, sql_put);
	if (!st)
		return -1;
	db_bind_text(st, 1, p->key, -1);
	db_bind_text(st, 2, buf_str(&p->text), (int)p->text.len);
	db_bind_int64(st, 3, (long long)now);
	db_bind_int64(st, 4, (long long)(now + config.prompt_cache_ttl));
	return db_step_done(st);
}
