/*
 * db — SQLite connections, prepared-statement cache, pool and migrations
 * (see db.h).
 *
 * The pool is a fixed array guarded by pool.lock; a thread waits on
 * pool.freed when every connection is taken.  Connections open on first
 * use so a responder starts even while the database is unavailable, and
 * /api/health/ can say so.
 */
#include "db.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>

#include "log.h"

#define STMT_CACHE 48

struct db {
	sqlite3 *conn;
	dev_t dev; /* the file this connection opened */
	ino_t ino;
	int in_use;
	int writing; /* between db_begin() and its commit or rollback */
	int nstmt;
	struct {
		const char *sql; /* key: address of the literal */
		sqlite3_stmt *stmt;
	} stmts[STMT_CACHE];
};

extern const char db_schema_sql[]; /* schema.sql, embedded by the Makefile */

static struct {
	pthread_mutex_t lock; /* guards every field below */
	pthread_cond_t freed;
	struct db *slots;
	int size;
	char *path;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, NULL};

/* Serialises this process's write transactions (db_begin() to commit or
 * rollback) and its RESTART checkpoints.  SQLite's write lock does that
 * too, but its waiters poll (wait_for_lock below): with a dozen threads
 * after the lock, each commit costs the others several sleeps and
 * wake-ups.  Waiters here sleep until the holder is done; the busy
 * handler is left to waits for other processes. */
static pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;

/* SQLite's own busy timeout sleeps 1, 2, 5 ... 100 ms between tries: a
 * lock held for 50 µs can cost a request 100 ms.  Retry soon instead,
 * backing off to 2 ms, for about 5 s in all. */
static int wait_for_lock(void *ctx, int tries)
{
	struct timespec pause = {0, 0};

	(void)ctx;
	if (tries > 2500)
		return 0; /* SQLITE_BUSY: the caller answers 503 */
	pause.tv_nsec = (tries < 6 ? 50000L << tries : 2000000L);
	nanosleep(&pause, NULL);
	return 1;
}

static int db_connect(struct db *d, const char *path, int create)
{
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
	struct stat st;
	int rc;

	if (create)
		flags |= SQLITE_OPEN_CREATE;
	rc = sqlite3_open_v2(path, &d->conn, flags, NULL);
	if (rc != SQLITE_OK) {
		log_error("cannot open database %s: %s", path,
			  d->conn ? sqlite3_errmsg(d->conn) : sqlite3_errstr(rc));
		goto fail;
	}
	if (stat(path, &st) == 0) {
		d->dev = st.st_dev;
		d->ino = st.st_ino;
	}
	sqlite3_busy_handler(d->conn, wait_for_lock, NULL);
	sqlite3_extended_result_codes(d->conn, 1);
	/* A query proves the file is a database, not just that open() worked. */
	if (db_exec(d, "PRAGMA foreign_keys = ON") < 0 ||
	    db_exec(d, "PRAGMA synchronous = NORMAL") < 0 ||
	    db_exec(d, "SELECT count(*) FROM sqlite_schema") < 0) {
		log_error("database %s unusable: %s", path, sqlite3_errmsg(d->conn));
		goto fail;
	}
	return 0;
fail:
	sqlite3_close(d->conn);
	d->conn = NULL;
	return -1;
}

static void db_disconnect(struct db *d)
{
	int i;

	for (i = 0; i < d->nstmt; i++)
		sqlite3_finalize(d->stmts[i].stmt);
	d->nstmt = 0;
	sqlite3_close(d->conn);
	d->conn = NULL;
}

struct db *db_open(const char *path, int create)
{
	struct db *d = calloc(1, sizeof *d);

	if (!d)
		return NULL;
	if (db_connect(d, path, create) < 0) {
		free(d);
		return NULL;
	}
	return d;
}

void db_close(struct db *d)
{
	if (!d)
		return;
	db_disconnect(d);
	free(d);
}

int db_pool_init(const char *path, int size)
{
	pool.slots = calloc((size_t)size, sizeof *pool.slots);
	pool.path = strdup(path);
	if (!pool.slots || !pool.path) {
		free(pool.slots);
		free(pool.path);
		return -1;
	}
	pool.size = size;
	return 0;
}

void db_pool_free(void)
{
	int i;

	for (i = 0; i < pool.size; i++)
		if (pool.slots[i].conn)
			db_disconnect(&pool.slots[i]);
	free(pool.slots);
	free(pool.path);
	pool.slots = NULL;
	pool.path = NULL;
	pool.size = 0;
}

/* The checkpointer: one thread per process copying the WAL back into the
 * database (PASSIVE: it never blocks readers or writers), every
 * CKPT_IDLE_MS, or every CKPT_BUSY_MS while writes keep coming.
 *
 * A PASSIVE checkpoint alone never lets the WAL start over while
 * requests keep reading: SQLite rewinds it only when a writer begins
 * with the whole WAL copied and no reader on it, which under steady load
 * never happens.  The WAL then grows by every commit (hundreds of MB a
 * minute), each append zero-fills fresh file pages in the kernel, and
 * every page lookup walks more WAL hash tables.  So once the WAL holds
 * CKPT_RESTART_FRAMES, a RESTART checkpoint waits (through the busy
 * handler) for the readers still on it, and the next commit writes from
 * the start of the file again.  Writers wait for it only for the few
 * frames the PASSIVE pass left and an fsync. */
#define CKPT_IDLE_MS 200
#define CKPT_BUSY_MS 50
#define CKPT_RESTART_FRAMES 256
static struct {
	pthread_mutex_t lock; /* guards stop */
	pthread_cond_t wake;
	pthread_t thread;
	int started, stop;
} ckpt = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};

static int same_file(const struct db *d, const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && st.st_dev == d->dev && st.st_ino == d->ino;
}

struct db *db_acquire(void)
{
	struct db *d = NULL;
	int i;

	pthread_mutex_lock(&pool.lock);
	for (;;) {
		/* Prefer an open connection, so the pool stays warm. */
		for (i = 0; i < pool.size && !d; i++)
			if (!pool.slots[i].in_use && pool.slots[i].conn)
				d = &pool.slots[i];
		for (i = 0; i < pool.size && !d; i++)
			if (!pool.slots[i].in_use)
				d = &pool.slots[i];
		if (d)
			break;
		pthread_cond_wait(&pool.freed, &pool.lock);
	}
	d->in_use = 1;
	pthread_mutex_unlock(&pool.lock);

	/* A connection keeps writing to a file that was deleted or replaced
	 * under it, and those writes would be lost: reconnect instead (and
	 * fail if the file is gone). */
	if (d->conn && !same_file(d, pool.path)) {
		log_warn("database file %s was replaced or removed; reconnecting", pool.path);
		db_disconnect(d);
	}
	/* Connecting happens outside the lock: it touches the disk. */
	if (!d->conn) {
		if (db_connect(d, pool.path, 0) < 0) {
			db_release(d);
			return NULL;
		}
		/* Checkpoints (and their fsync) belong to the checkpointer
		 * thread, not to whichever request commits the 1000th page. */
		if (ckpt.started)
			db_exec(d, "PRAGMA wal_autocheckpoint = 0");
	}
	return d;
}

/* One checkpoint pass; returns the milliseconds until the next one. */
static long checkpoint_once(struct db *d)
{
	int frames = 0, copied = 0;

	if (sqlite3_wal_checkpoint_v2(d->conn, NULL, SQLITE_CHECKPOINT_PASSIVE, &frames, &copied) !=
	    SQLITE_OK)
		return CKPT_IDLE_MS;
	if (frames >= CKPT_RESTART_FRAMES) {
		pthread_mutex_lock(&write_lock);
		sqlite3_wal_checkpoint_v2(d->conn, NULL, SQLITE_CHECKPOINT_RESTART, NULL, NULL);
		pthread_mutex_unlock(&write_lock);
	}
	/* frames > copied: commits arrived since the last pass. */
	return frames > 0 && frames != copied ? CKPT_BUSY_MS : CKPT_IDLE_MS;
}

static void *checkpointer(void *arg)
{
	struct db *d = NULL;
	struct timespec until;
	long next_ms = CKPT_IDLE_MS;

	(void)arg;
	pthread_mutex_lock(&ckpt.lock);
	while (!ckpt.stop) {
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += next_ms * 1000000L;
		until.tv_sec += until.tv_nsec / 1000000000L;
		until.tv_nsec %= 1000000000L;
		pthread_cond_timedwait(&ckpt.wake, &ckpt.lock, &until);
		if (ckpt.stop)
			break;
		pthread_mutex_unlock(&ckpt.lock);
		if (d && !same_file(d, pool.path)) {
			db_close(d);
			d = NULL;
		}
		if (!d)
			d = db_open(pool.path, 0);
		next_ms = d ? checkpoint_once(d) : CKPT_IDLE_MS;
		pthread_mutex_lock(&ckpt.lock);
	}
	pthread_mutex_unlock(&ckpt.lock);
	db_close(d);
	return NULL;
}

int db_checkpointer_start(void)
{
	pthread_attr_t attr;
	int rc;

	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	rc = pthread_create(&ckpt.thread, &attr, checkpointer, NULL);
	pthread_attr_destroy(&attr);
	ckpt.started = rc == 0;
	return rc == 0 ? 0 : -1;
}

void db_checkpointer_stop(void)
{
	if (!ckpt.started)
		return;
	pthread_mutex_lock(&ckpt.lock);
	ckpt.stop = 1;
	pthread_cond_signal(&ckpt.wake);
	pthread_mutex_unlock(&ckpt.lock);
	pthread_join(ckpt.thread, NULL);
	ckpt.started = ckpt.stop = 0;
}

void db_release(struct db *d)
{
	if (!d)
		return;
	/* A connection left inside a transaction by an error path would hold
	 * the write lock for everyone; end it here. */
	if (d->writing || (d->conn && !sqlite3_get_autocommit(d->conn)))
		db_rollback(d);
	pthread_mutex_lock(&pool.lock);
	d->in_use = 0;
	pthread_cond_signal(&pool.freed);
	pthread_mutex_unlock(&pool.lock);
}

static sqlite3_stmt *cached(struct db *d, const char *sql);

/* A struct db_stmt is SQLite's own statement, under the name the rest of
 * the code knows. */
static sqlite3_stmt *sq(struct db_stmt *st)
{
	return (sqlite3_stmt *)(void *)st;
}

struct db_stmt *db_stmt(struct db *d, const char *sql)
{
	return (struct db_stmt *)(void *)cached(d, sql);
}

void db_bind_int64(struct db_stmt *st, int i, long long v)
{
	sqlite3_bind_int64(sq(st), i, (sqlite3_int64)v);
}

void db_bind_int(struct db_stmt *st, int i, int v)
{
	sqlite3_bind_int(sq(st), i, v);
}

void db_bind_text(struct db_stmt *st, int i, const char *text, int n)
{
	sqlite3_bind_text(sq(st), i, text, n, SQLITE_STATIC);
}

void db_bind_text_copy(struct db_stmt *st, int i, const char *text, int n)
{
	sqlite3_bind_text(sq(st), i, text, n, SQLITE_TRANSIENT);
}

void db_bind_blob(struct db_stmt *st, int i, const void *p, int n)
{
	sqlite3_bind_blob(sq(st), i, p, n, SQLITE_STATIC);
}

int db_step(struct db_stmt *st)
{
	int rc = sqlite3_step(sq(st));

	return rc == SQLITE_ROW			  ? DB_ROW
	       : rc == SQLITE_DONE		  ? DB_DONE
	       : (rc & 0xff) == SQLITE_CONSTRAINT ? DB_CONSTRAINT
						  : DB_ERROR;
}

int db_step_done(struct db_stmt *st)
{
	int rc = db_step(st);

	db_reset(st);
	return rc == DB_DONE ? 0 : -1;
}

void db_reset(struct db_stmt *st)
{
	sqlite3_reset(sq(st));
}

long long db_column_int64(struct db_stmt *st, int i)
{
	return (long long)sqlite3_column_int64(sq(st), i);
}

int db_column_int(struct db_stmt *st, int i)
{
	return sqlite3_column_int(sq(st), i);
}

double db_column_double(struct db_stmt *st, int i)
{
	return sqlite3_column_double(sq(st), i);
}

const char *db_column_text(struct db_stmt *st, int i)
{
	return (const char *)sqlite3_column_text(sq(st), i);
}

const void *db_column_blob(struct db_stmt *st, int i)
{
	return sqlite3_column_blob(sq(st), i);
}

int db_column_bytes(struct db_stmt *st, int i)
{
	return sqlite3_column_bytes(sq(st), i);
}

int db_column_is_null(struct db_stmt *st, int i)
{
	return sqlite3_column_type(sq(st), i) == SQLITE_NULL;
}

int db_column_is_blob(struct db_stmt *st, int i)
{
	return sqlite3_column_type(sq(st), i) == SQLITE_BLOB;
}

int db_changes(struct db *d)
{
	return sqlite3_changes(d->conn);
}

/* The cached statement of this SQL text, reset and unbound. */
static sqlite3_stmt *cached(struct db *d, const char *sql)
{
	sqlite3_stmt *st;
	int i;

	for (i = 0; i < d->nstmt; i++) {
		if (d->stmts[i].sql == sql) {
			st = d->stmts[i].stmt;
			sqlite3_reset(st);
			sqlite3_clear_bindings(st);
			return st;
		}
	}
	if (sqlite3_prepare_v3(d->conn, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) !=
	    SQLITE_OK) {
		log_error("prepare failed: %s: %s", sqlite3_errmsg(d->conn), sql);
		return NULL;
	}
	if (d->nstmt < STMT_CACHE) {
		d->stmts[d->nstmt].sql = sql;
		d->stmts[d->nstmt].stmt = st;
		d->nstmt++;
	} else {
		/* Cannot happen with our fixed set of statements; fail loudly. */
		log_error("statement cache full");
		sqlite3_finalize(st);
		return NULL;
	}
	return st;
}

int db_exec(struct db *d, const char *sql)
{
	char *msg = NULL;

	if (sqlite3_exec(d->conn, sql, NULL, NULL, &msg) != SQLITE_OK) {
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

/* Run a cached statement that returns no rows. */
static int db_run(struct db *d, const char *sql)
{
	sqlite3_stmt *st = cached(d, sql);
	int rc;

	if (!st)
		return -1;
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : -1;
}

int db_begin(struct db *d)
{
	static const char sql[] = "BEGIN IMMEDIATE";

	pthread_mutex_lock(&write_lock);
	if (db_run(d, sql) < 0) {
		pthread_mutex_unlock(&write_lock);
		return -1;
	}
	d->writing = 1;
	return 0;
}

int db_commit(struct db *d)
{
	static const char sql[] = "COMMIT";

	if (db_run(d, sql) < 0)
		return -1; /* still writing: the caller rolls back */
	if (d->writing) {
		d->writing = 0;
		pthread_mutex_unlock(&write_lock);
	}
	return 0;
}

void db_rollback(struct db *d)
{
	char *msg = NULL;

	if (sqlite3_exec(d->conn, "ROLLBACK", NULL, NULL, &msg) != SQLITE_OK)
		sqlite3_free(msg);
	if (d->writing) {
		d->writing = 0;
		pthread_mutex_unlock(&write_lock);
	}
}

const char *db_errmsg(struct db *d)
{
	return d && d->conn ? sqlite3_errmsg(d->conn) : "no database connection";
}

/* Find the next "-- migrate: N" marker at or after p.  Returns its start
 * and sets *version, or NULL. */
static const char *next_migration(const char *p, int *version)
{
	static const char marker[] = "-- migrate: ";

	while ((p = strstr(p, marker)) != NULL) {
		if (p == db_schema_sql || p[-1] == '\n') {
			*version = atoi(p + sizeof marker - 1);
			return p;
		}
		p += sizeof marker - 1;
	}
	return NULL;
}

/* 0 when no row breaks a foreign key, -1 (reason in err) otherwise. */
static int foreign_keys_hold(struct db *d, char *err, size_t errlen)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(d->conn, "PRAGMA foreign_key_check", -1, &st, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "%s", sqlite3_errmsg(d->conn));
		return -1;
	}
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		snprintf(err, errlen, "a row of %s breaks a foreign key (rowid %lld)",
			 (const char *)sqlite3_column_text(st, 0),
			 (long long)sqlite3_column_int64(st, 1));
	else if (rc != SQLITE_DONE)
		snprintf(err, errlen, "%s", sqlite3_errmsg(d->conn));
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : -1;
}

/* One migration block, as SQLite documents a table rebuild
 * (lang_altertable.html, "other kinds of table schema changes"): foreign
 * keys off outside the transaction, so that dropping a rebuilt table does
 * not cascade to the rows that refer to it, and checked before commit. */
static int migrate_one(struct db *d, const char *block, int version, char *err, size_t errlen)
{
	char pragma[64], why[256] = "";
	int rc = -1;

	snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", version);
	if (db_exec(d, "PRAGMA foreign_keys = OFF") < 0 || db_begin(d) < 0 ||
	    db_exec(d, block) < 0 || foreign_keys_hold(d, why, sizeof why) < 0 ||
	    db_exec(d, pragma) < 0 || db_commit(d) < 0) {
		snprintf(err, errlen, "migration %d failed: %s", version,
			 why[0] ? why : sqlite3_errmsg(d->conn));
		db_rollback(d);
	} else {
		rc = 0;
	}
	if (db_exec(d, "PRAGMA foreign_keys = ON") < 0 && rc == 0) {
		snprintf(err, errlen, "cannot turn foreign keys back on: %s",
			 sqlite3_errmsg(d->conn));
		rc = -1;
	}
	return rc;
}

int db_migrate(struct db *d, char *err, size_t errlen)
{
	const char *start, *end;
	int current = 0, version, next_version;
	char *block = NULL;
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(d->conn, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
		goto sqlfail;
	if (sqlite3_step(st) == SQLITE_ROW)
		current = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);

	/* WAL is a property of the file; setting it once here is enough. */
	if (db_exec(d, "PRAGMA journal_mode = WAL") < 0)
		goto sqlfail;

	start = next_migration(db_schema_sql, &version);
	while (start) {
		end = next_migration(start + 1, &next_version);
		if (version > current) {
			size_t n = end ? (size_t)(end - start) : strlen(start);

			block = malloc(n + 1);
			if (!block) {
				snprintf(err, errlen, "out of memory");
				return -1;
			}
			memcpy(block, start, n);
			block[n] = '\0';
			if (migrate_one(d, block, version, err, errlen) < 0) {
				free(block);
				return -1;
			}
			free(block);
			block = NULL;
			current = version;
		}
		start = end;
		version = next_version;
	}
	return 0;
sqlfail:
	snprintf(err, errlen, "%s", sqlite3_errmsg(d->conn));
	return -1;
}
