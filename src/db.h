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

#include <sqlite3.h>
#include <stddef.h>

struct db;

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

/* The prepared statement for this SQL text, reset and unbound.  `sql`
 * must be a string literal: the cache is keyed on its address. */
sqlite3_stmt *db_stmt(struct db *d, const char *sql);
/* Run SQL without results (BEGIN, COMMIT, pragmas). 0 or -1. */
int db_exec(struct db *d, const char *sql);
int db_begin(struct db *d); /* BEGIN IMMEDIATE: we always write */
int db_commit(struct db *d);
void db_rollback(struct db *d);
const char *db_errmsg(struct db *d);
sqlite3 *db_handle(struct db *d);

/* Apply schema.sql's migrations newer than the file's user_version, each
 * in one transaction with foreign keys off (so a block may rebuild a
 * table) and PRAGMA foreign_key_check clean before it commits. */
int db_migrate(struct db *d, char *err, size_t errlen);

#endif
