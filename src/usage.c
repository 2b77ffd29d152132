/*
 * usage — token accounting (see usage.h).
 */
#include "usage.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "config.h"
#include "log.h"
#include "response.h"
#include "users.h"

int usage_record(struct db *d, long long message_id, long long user_id, const char *model,
		 long long prompt_tokens, long long completion_tokens)
{
	static const char sql[] = "INSERT OR REPLACE INTO usage (message_id, user_id, model, "
				  "prompt_tokens, completion_tokens) VALUES (?1, ?2, ?3, ?4, ?5)";
	struct db_stmt *st = db_stmt(d, sql);

	if (!st)
		return -1;
	db_bind_int64(st, 1, message_id);
	db_bind_int64(st, 2, user_id);
	db_bind_text(st, 3, model, -1);
	db_bind_int64(st, 4, prompt_tokens > 0 ? prompt_tokens : 0);
	db_bind_int64(st, 5, completion_tokens > 0 ? completion_tokens : 0);
	return db_step_done(st);
}

/* t as stored in created_at: "YYYY-MM-DDTHH:MM:SS.000Z" (sorts as time). */
static void iso_time(long long t, char out[32])
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
}

static long long midnight_today(long long now)
{
	return now - now % 86400; /* UTC days are 86,400 s: no leap seconds in Unix time */
}

int usage_today(struct db *d, long long user_id, long long *used, int *reset_in)
{
	static const char sql[] = "SELECT total(prompt_tokens + completion_tokens) FROM usage "
				  "WHERE user_id = ?1 AND created_at >= ?2";
	long long now = (long long)time(NULL), start = midnight_today(now);
	struct db_stmt *st = db_stmt(d, sql);
	char since[32];
	int rc;

	if (!st)
		return -1;
	iso_time(start, since);
	db_bind_int64(st, 1, user_id);
	db_bind_text_copy(st, 2, since, -1);
	rc = db_step(st);
	if (rc == DB_ROW)
		*used = (long long)db_column_double(st, 0);
	db_reset(st);
	*reset_in = (int)(start + 86400 - now);
	return rc == DB_ROW ? 0 : -1;
}

/* n digits at p as a number, or -1. */
static int digits(const char *p, int n)
{
	int v = 0, i;

	for (i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		v = v * 10 + (p[i] - '0');
	}
	return v;
}

int usage_parse_since(const char *s, long long *out)
{
	static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	struct tm tm;
	int y, mo, dd, h = 0, mi = 0, sec = 0, off = 0;
	time_t t;

	if (strlen(s) < 10 || (y = digits(s, 4)) < 1970 || s[4] != '-' ||
	    (mo = digits(s + 5, 2)) < 1 || mo > 12 || s[7] != '-' || (dd = digits(s + 8, 2)) < 1 ||
	    dd > mdays[mo - 1] || (mo == 2 && dd == 29 && (y % 4 || (y % 100 == 0 && y % 400))))
		return -1;
	s += 10;
	if (*s == 'T' || *s == ' ') {
		if ((h = digits(s + 1, 2)) < 0 || h > 23 || s[3] != ':' ||
		    (mi = digits(s + 4, 2)) < 0 || mi > 59)
			return -1;
		s += 6;
		if (*s == ':') {
			if ((sec = digits(s + 1, 2)) < 0 || sec > 59)
				return -1;
			s += 3;
			if (*s == '.' && s[1] >= '0' && s[1] <= '9')
				for (s++; *s >= '0' && *s <= '9'; s++)
					; /* the fraction: the count is by whole seconds */
		}
		if (*s == 'Z') {
			s++;
		} else if (*s == '+' || *s == '-') {
			int oh = digits(s + 1, 2), om = s[3] == ':' ? digits(s + 4, 2) : -1;

			if (oh < 0 || oh > 23 || om < 0 || om > 59)
				return -1;
			off = (*s == '+' ? 1 : -1) * (oh * 3600 + om * 60);
			s += 6;
		}
	}
	if (*s)
		return -1;
	memset(&tm, 0, sizeof tm);
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = dd;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec;
	t = timegm(&tm);
	if (t == (time_t)-1)
		return -1;
	*out = (long long)t - off;
	return 0;
}

/* {"model", "prompt_tokens", "completion_tokens", "total_tokens",
 * "replies"} into o.  0 or -1. */
static int add_counts(cJSON *o, long long prompt, long long completion, long long replies)
{
	return cJSON_AddNumberToObject(o, "prompt_tokens", (double)prompt) &&
			       cJSON_AddNumberToObject(o, "completion_tokens",
						       (double)completion) &&
			       cJSON_AddNumberToObject(o, "total_tokens",
						       (double)(prompt + completion)) &&
			       cJSON_AddNumberToObject(o, "replies", (double)replies)
		       ? 0
		       : -1;
}

/* The sums by model since `since` into o.  0 or -1. */
static int add_totals(cJSON *o, struct db *d, long long user_id, const char *since)
{
	static const char sql[] = "SELECT model, total(prompt_tokens), total(completion_tokens), "
				  "count(*) FROM usage WHERE user_id = ?1 AND created_at >= ?2 "
				  "GROUP BY model ORDER BY model";
	struct db_stmt *st = db_stmt(d, sql);
	long long prompt = 0, completion = 0, replies = 0;
	cJSON *models;
	int rc;

	if (!st || !(models = cJSON_CreateArray()))
		return -1;
	db_bind_int64(st, 1, user_id);
	db_bind_text_copy(st, 2, since, -1);
	while ((rc = db_step(st)) == DB_ROW) {
		const char *model = db_column_text(st, 0);
		long long p = (long long)db_column_double(st, 1);
		long long c = (long long)db_column_double(st, 2);
		long long n = db_column_int64(st, 3);
		cJSON *m = cJSON_CreateObject();

		if (!m)
			break;
		cJSON_AddItemToArray(models, m);
		if (!cJSON_AddStringToObject(m, "model", model ? model : "") ||
		    add_counts(m, p, c, n) < 0)
			break;
		prompt += p;
		completion += c;
		replies += n;
	}
	db_reset(st);
	if (rc != DB_DONE || add_counts(o, prompt, completion, replies) < 0) {
		cJSON_Delete(models);
		return -1;
	}
	cJSON_AddItemToObject(o, "models", models);
	return 0;
}

/* "quota": {tokens_per_day, used_today, remaining, resets_at}, or null
 * without one.  0 or -1. */
static int add_quota(cJSON *o, struct db *d, long long user_id)
{
	long long used;
	int reset_in;
	char at[32];
	cJSON *q;

	if (!config.tokens_per_day)
		return cJSON_AddNullToObject(o, "quota") ? 0 : -1;
	if (usage_today(d, user_id, &used, &reset_in) < 0 ||
	    !(q = cJSON_AddObjectToObject(o, "quota")))
		return -1;
	iso_time((long long)time(NULL) + reset_in, at);
	return cJSON_AddNumberToObject(q, "tokens_per_day", (double)config.tokens_per_day) &&
			       cJSON_AddNumberToObject(q, "used_today", (double)used) &&
			       cJSON_AddNumberToObject(
				       q, "remaining",
				       (double)(used < config.tokens_per_day
							? config.tokens_per_day - used
							: 0)) &&
			       cJSON_AddStringToObject(q, "resets_at", at)
		       ? 0
		       : -1;
}

void usage_get(struct request *r)
{
	struct user u;
	struct buf v;
	long long since;
	char since_iso[32];
	struct db *d;
	cJSON *o;
	int found;

	if (auth_require(r, 0, &u) < 0)
		return;
	users_clear(&u); /* r->user_id has the id */
	buf_init(&v, 256);
	found = request_query(r, "since", &v);
	if (found < 0 || (found && usage_parse_since(buf_str(&v), &since) < 0)) {
		buf_free(&v);
		resp_field_error(r, "since",
				 "Use a date (YYYY-MM-DD) or an ISO 8601 date and time, such as "
				 "2026-12-01T08:00:00Z.");
		return;
	}
	buf_free(&v);
	if (!found)
		since = midnight_today((long long)time(NULL));
	iso_time(since, since_iso);
	if (!(d = db_acquire())) {
		resp_detail(r, 503, "Database unavailable.");
		return;
	}
	o = cJSON_CreateObject();
	if (!o || !cJSON_AddStringToObject(o, "since", since_iso) ||
	    add_totals(o, d, r->user_id, since_iso) < 0 || add_quota(o, d, r->user_id) < 0) {
		log_error("usage of user %lld: %s", r->user_id, db_errmsg(d));
		db_release(d);
		cJSON_Delete(o);
		resp_detail(r, 503, "Database unavailable.");
		return;
	}
	db_release(d);
	resp_json(r, 200, o);
}
