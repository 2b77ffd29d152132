/*
 * generations — SQL for the generations table (see generations.h).
 */
#include "generations.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The start time of process pid, in clock ticks since boot (field 22 of
 * /proc/<pid>/stat), or -1 when it does not run.  With the pid it names
 * a process for good: a pid is reused, a pid and start time are not. */
static long long start_time(long pid)
{
	char path[64], line[1024], *p;
	long long t = -1;
	FILE *f;
	int i;

	snprintf(path, sizeof path, "/proc/%ld/stat", pid);
	if (!(f = fopen(path, "r")))
		return -1;
	if (fgets(line, sizeof line, f)) {
		/* The command name (field 2) may hold spaces and ')': the
		 * fields after it start after the last ')'. */
		p = strrchr(line, ')');
		/* Field 3, the state: a zombie has died, only not been reaped. */
		if (p && (p[2] == 'Z' || p[2] == 'X'))
			p = NULL;
		for (i = 2; p && i < 22; i++)
			p = strchr(p + 1, ' ');
		if (p)
			t = strtoll(p + 1, NULL, 10);
	}
	fclose(f);
	return t;
}

const char *generations_owner(void)
{
	static __thread char owner[48];
	static __thread long pid;

	if (pid != (long)getpid()) { /* per thread, and again after a fork */
		pid = (long)getpid();
		snprintf(owner, sizeof owner, "%ld:%lld", pid, start_time(pid));
	}
	return owner;
}

static int owner_alive(const char *owner)
{
	char *end;
	long pid = strtol(owner ? owner : "", &end, 10);

	if (pid <= 0 || *end != ':')
		return 0;
	return start_time(pid) == strtoll(end + 1, NULL, 10);
}

/* A dead owner's generation: its reply interrupted (or gone, when it had
 * no text yet: the user message stays alone, as the user saw it), its
 * row gone. */
static int clear(struct db *d, long long message_id)
{
	static const char sql_empty[] =
		"DELETE FROM messages WHERE id = ?1 AND status = 'streaming' AND content = ''";
	static const char sql_reply[] = "UPDATE messages SET status = 'interrupted', complete = 0 "
					"WHERE id = ?1 AND status = 'streaming'";
	const char *const sql[] = {sql_empty, sql_reply};
	struct db_stmt *st;
	int i, rc;

	for (i = 0; i < 2; i++) {
		if (!(st = db_stmt(d, sql[i])))
			return -1;
		db_bind_int64(st, 1, message_id);
		rc = db_step(st);
		db_reset(st);
		if (rc != DB_DONE)
			return -1;
	}
	return generations_release(d, message_id);
}

int generations_claim(struct db *d, long long message_id, long long user_id,
		      const char *conversation, int resumable, long long *running)
{
	static const char sql[] = "INSERT INTO generations (message_id, user_id, conversation_id, "
				  "owner, resumable) VALUES (?1, ?2, ?3, ?4, ?5)";
	struct generation g;
	struct db_stmt *st;
	int rc, attempt;

	for (attempt = 0; attempt < 2; attempt++) {
		if (!(st = db_stmt(d, sql)))
			return -1;
		db_bind_int64(st, 1, message_id);
		db_bind_int64(st, 2, user_id);
		db_bind_text(st, 3, conversation, -1);
		db_bind_text_copy(st, 4, generations_owner(), -1);
		db_bind_int(st, 5, resumable);
		rc = db_step(st);
		db_reset(st);
		if (rc == DB_DONE)
			return 0;
		if (rc != DB_CONSTRAINT || generations_find(d, user_id, 0, conversation, &g) <= 0)
			return -1;
		if (g.alive) {
			*running = g.message_id;
			return 1;
		}
		if (clear(d, g.message_id) < 0) /* then try once more */
			return -1;
	}
	return -1;
}

int generations_release(struct db *d, long long message_id)
{
	static const char sql[] = "DELETE FROM generations WHERE message_id = ?1";
	struct db_stmt *st = db_stmt(d, sql);

	if (!st)
		return -1;
	db_bind_int64(st, 1, message_id);
	return db_step_done(st);
}

int generations_find(struct db *d, long long user_id, long long message_id,
		     const char *conversation, struct generation *out)
{
	static const char sql_id[] = "SELECT message_id, conversation_id, owner, resumable "
				     "FROM generations WHERE user_id = ?1 AND message_id = ?2";
	static const char sql_conv[] =
		"SELECT message_id, conversation_id, owner, resumable "
		"FROM generations WHERE user_id = ?1 AND conversation_id = ?2";
	struct db_stmt *st = db_stmt(d, conversation ? sql_conv : sql_id);
	int rc;

	if (!st)
		return -1;
	db_bind_int64(st, 1, user_id);
	if (conversation)
		db_bind_text(st, 2, conversation, -1);
	else
		db_bind_int64(st, 2, message_id);
	rc = db_step(st);
	if (rc == DB_ROW) {
		const char *conv = db_column_text(st, 1);

		memset(out, 0, sizeof *out);
		out->message_id = db_column_int64(st, 0);
		out->user_id = user_id;
		snprintf(out->conversation, sizeof out->conversation, "%s", conv ? conv : "");
		out->alive = owner_alive(db_column_text(st, 2));
		out->resumable = db_column_int(st, 3);
	}
	db_reset(st);
	return rc == DB_ROW ? 1 : rc == DB_DONE ? 0 : -1;
}

int generations_sweep(struct db *d)
{
	static const char sql[] = "SELECT message_id, owner FROM generations";
	long long dead[64];
	int n = 0, i, rc, total = 0;
	struct db_stmt *st;

	do { /* in batches: clear() needs the statement cache free */
		if (!(st = db_stmt(d, sql)))
			return -1;
		n = 0;
		while ((rc = db_step(st)) == DB_ROW && n < 64)
			if (!owner_alive(db_column_text(st, 1)))
				dead[n++] = db_column_int64(st, 0);
		db_reset(st);
		if (rc != DB_ROW && rc != DB_DONE)
			return -1;
		if (n == 0)
			break;
		if (db_begin(d) < 0)
			return -1;
		for (i = 0; i < n; i++)
			if (clear(d, dead[i]) < 0) {
				db_rollback(d);
				return -1;
			}
		if (db_commit(d) < 0)
			return -1;
		total += n;
	} while (n == 64);
	return total;
}
