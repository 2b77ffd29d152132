/*
 * ops — health and metrics endpoints (see ops.h).  Health runs a real
 * query, a real write and a real upstream request, each with a short
 * bound, so it never takes more than a few seconds.
 */
#include "ops.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "db.h"
#include "metrics.h"
#include "response.h"
#include "upstream.h"

#define HEALTH_UPSTREAM_TIMEOUT_MS 2000

/* A real write: the probe row rewritten and committed.  A read-only or
 * full database still answers reads but cannot record a login attempt,
 * and health must say so. */
static int database_writable(struct db *d, char *err, size_t errlen)
{
	static const char sql[] = "UPDATE health_probe SET checked_at = ?1 WHERE id = 1";
	struct db_stmt *st;
	int rc = DB_ERROR;

	if (db_begin(d) < 0)
		goto fail;
	st = db_stmt(d, sql);
	if (st) {
		db_bind_int64(st, 1, (long long)time(NULL));
		rc = db_step(st);
		db_reset(st);
	}
	if (rc != DB_DONE || db_changes(d) != 1 || db_commit(d) < 0)
		goto fail;
	return 0;
fail:
	snprintf(err, errlen, "cannot write: %s", db_errmsg(d));
	db_rollback(d);
	return -1;
}

/* A fresh connection, not a pooled one: a pooled connection keeps working
 * on a file that was deleted or replaced, and health must see the file as
 * it is on disk now. */
static int database_ok(char *err, size_t errlen)
{
	static const char sql[] = "SELECT count(*) FROM sequences";
	struct db *d = db_open(config.db_path, 0);
	struct db_stmt *st;
	int rc;

	if (!d) {
		snprintf(err, errlen, "cannot open %s", config.db_path);
		return -1;
	}
	st = db_stmt(d, sql);
	rc = st ? db_step(st) : DB_ERROR;
	if (rc != DB_ROW)
		snprintf(err, errlen, "%s", db_errmsg(d));
	if (st)
		db_reset(st);
	if (rc == DB_ROW && database_writable(d, err, errlen) < 0)
		rc = DB_ERROR;
	db_close(d);
	return rc == DB_ROW ? 0 : -1;
}

/* The upstream URL as health shows it: credentials in it (user:password@)
 * replaced by "***". */
static void shown_url(struct buf *out)
{
	const char *u = config.upstream_url, *host = strstr(u, "://");
	const char *at, *end;

	buf_reset(out);
	host = host ? host + 3 : u;
	end = host + strcspn(host, "/?#");
	at = memchr(host, '@', (size_t)(end - host));
	if (!at ? buf_puts(out, u) != BUF_OK
		: buf_append(out, u, (size_t)(host - u)) != BUF_OK ||
			    buf_puts(out, "***") != BUF_OK || buf_puts(out, at) != BUF_OK)
		buf_reset(out);
}

void ops_health(struct request *r)
{
	char db_err[256], up_err[256], key_note[1024];
	int db_ok = database_ok(db_err, sizeof db_err) == 0;
	int up_ok =
		upstream_models(HEALTH_UPSTREAM_TIMEOUT_MS, NULL, NULL, up_err, sizeof up_err) == 0;
	int key_ok = config_secret_check(key_note, sizeof key_note) == 0;
	cJSON *o = cJSON_CreateObject();
	struct buf msg;

	/* A key problem does not stop serving: "degraded", still 200, so a
	 * load balancer keeps sending traffic; the operator must act before
	 * the next stop. */
	buf_init(&msg, 1024);
	if (!db_ok && buf_printf(&msg, "error: %s", db_err) != BUF_OK)
		buf_reset(&msg); /* "error: " + a bounded reason: cannot happen */
	if (!o ||
	    !cJSON_AddStringToObject(o, "status",
				     !(db_ok && up_ok) ? "error"
				     : key_ok	       ? "ok"
						       : "degraded") ||
	    !cJSON_AddStringToObject(o, "database", db_ok ? "ok" : buf_str(&msg)) ||
	    !cJSON_AddStringToObject(o, "secret_key", key_ok ? "ok" : key_note)) {
		cJSON_Delete(o);
		buf_free(&msg);
		resp_json(r, 500, NULL);
		return;
	}
	buf_reset(&msg);
	if (!up_ok && buf_printf(&msg, "error: %s", up_err) != BUF_OK)
		buf_reset(&msg);
	cJSON_AddStringToObject(o, "upstream", up_ok ? "ok" : buf_str(&msg));
	shown_url(&msg);
	cJSON_AddStringToObject(o, "upstream_url", buf_str(&msg));
	cJSON_AddStringToObject(o, "upstream_api", config.upstream_api);
	cJSON_AddStringToObject(o, "model", config.model);
	if (config.dev_upstream)
		cJSON_AddStringToObject(o, "upstream_note",
					"development stand-in (tests/fake_ollama): answers are "
					"canned, not from a model");
	buf_free(&msg);
	resp_json(r, db_ok && up_ok ? 200 : 503, o);
}

void ops_metrics(struct request *r)
{
	struct buf out;

	buf_init(&out, 4u << 20);
	if (metrics_render(&out) < 0) {
		resp_detail(r, 500, "Metrics could not be rendered.");
	} else if (resp_headers(r, 200, "text/plain; version=0.0.4; charset=utf-8", (long)out.len,
				NULL) == 0) {
		resp_write(r, out.data, out.len);
	}
	buf_free(&out);
}
