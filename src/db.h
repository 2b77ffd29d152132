/*
 * db — the SQLite layer: a per-process pool of connections, each with its
 * own cache of prepared statements, and the schema migration.
 *
 * A thread takes a connection with db_acquire() only for the few
 * statements it runs and gives it back with db_release(): a stream waiting
 * on the LLM holds no connection.  A connection is used by one thread at a
 * time, so SQLite runs in its no-mutex mode.
 */
#ifndef JARVAS_DB_H
#define JARVAS_DB_H

#include <stddef.h>

struct db;
/* A prepared statement of one connection, kept by it (db_stmt()). */
struct db_stmt;

/* Set up the pool (connections open lazily).  0 or -1. */
int db_pool_init(const char *path, int size);
void db_pool_free(void);

/* Checkpoint the WAL from a thread of its own, every second, instead of
 * inside requests (pool connections do not auto-checkpoint).  0 or -1. */
int db_checkpointer_start(void);
void db_checkpointer_stop(void);

/* A connection, waiting for a free one; NULL when the database cannot be
 * opened (the reason is logged). */
struct db *db_acquire(void);
void db_release(struct db *d);

/* Open one connection outside the pool (jarvas-admin); create: make the
 * file if missing. */
struct db *db_open(const char *path, int create);
void db_close(struct db *d);

/* The prepared statement for this SQL text, reset and unbound, or NULL
 * (logged).  `sql` must be a string literal: the cache is keyed on its
 * address.  Parameters are ?1, ?2, ... */
struct db_stmt *db_stmt(struct db *d, const char *sql);

/* Bind parameter i (from 1).  Text and blobs are not copied: they must
 * stay as they are until the statement is reset (db_bind_text_copy()
 * copies).  n < 0: the text up to its NUL. */
void db_bind_int64(struct db_stmt *st, int i, long long v);
void db_bind_int(struct db_stmt *st, int i, int v);
void db_bind_text(struct db_stmt *st, int i, const char *text, int n);
void db_bind_text_copy(struct db_stmt *st, int i, const char *text, int n);
void db_bind_blob(struct db_stmt *st, int i, const void *p, int n);

/* What db_step() returns. */
enum {
	DB_DONE = 0,	    /* finished, no (more) rows */
	DB_ROW = 1,	    /* a row to read with db_column_*() */
	DB_ERROR = -1,	    /* failed: db_errmsg() says why */
	DB_CONSTRAINT = -2, /* refused by a constraint (UNIQUE, CHECK, ...) */
};
int db_step(struct db_stmt *st);
/* Step a statement that returns no rows to its end, and reset it:
 * 0, or -1 (the step failed). */
int db_step_done(struct db_stmt *st);
/* Back to its start, bindings kept; what db_stmt() does too. */
void db_reset(struct db_stmt *st);

/* Column i (from 0) of the current row.  Text and blobs stay valid until
 * the next step or reset; NULL reads as 0, NULL or "". */
long long db_column_int64(struct db_stmt *st, int i);
int db_column_int(struct db_stmt *st, int i);
double db_column_double(struct db_stmt *st, int i);
const char *db_column_text(struct db_stmt *st, int i);
const void *db_column_blob(struct db_stmt *st, int i);
int db_column_bytes(struct db_stmt *st, int i);
int db_column_is_null(struct db_stmt *st, int i);
int db_column_is_blob(struct db_stmt *st, int i);

/* Rows the last INSERT, UPDATE or DELETE of d changed. */
int db_changes(struct db *d);
/* Run SQL without results (BEGIN, COMMIT, pragmas). 0 or -1. */
int db_exec(struct db *d, const char *sql);
int db_begin(struct db *d); /* BEGIN IMMEDIATE: we always write */
int db_commit(struct db *d);
void db_rollback(struct db *d);
const char *db_errmsg(struct db *d);

/* Apply schema.sql's migrations newer than the file's user_version, each
 * in one transaction with foreign keys off (so a block may rebuild a
 * table) and PRAGMA foreign_key_check clean before it commits. */
int db_migrate(struct db *d, char *err, size_t errlen);

#endif
