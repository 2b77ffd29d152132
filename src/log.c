/*
 * log — one key=value line per request or event on stderr (see log.h).
 * Values that may hold spaces or quotes (paths, messages) are quoted with
 * %q-style escaping so a line always splits cleanly on spaces.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"

static void log_time(struct buf *b)
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	buf_printf(b, "time=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ responder=%s", tm.tm_year + 1900,
		   tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		   ts.tv_nsec / 1000000, config.responder ? config.responder : "-");
}

/* Append ` key="value"` with quotes, backslashes and control bytes escaped. */
static void log_quoted(struct buf *b, const char *key, const char *v)
{
	buf_printf(b, " %s=\"", key);
	for (; v && *v; v++) {
		unsigned char c = (unsigned char)*v;
		if (c == '"' || c == '\\')
			buf_printf(b, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			buf_printf(b, "\\x%02x", c);
		else
			buf_putc(b, (char)c);
	}
	buf_putc(b, '"');
}

static void log_write(struct buf *b)
{
	if (buf_putc(b, '\n') == BUF_OK) {
		/* stderr may be gone; there is nowhere else to report it. */
		ssize_t rc = write(STDERR_FILENO, b->data, b->len);
		(void)rc;
	}
	buf_free(b);
}

void log_request(const struct log_request_fields *f)
{
	struct buf b;

	buf_init(&b, 8192);
	log_time(&b);
	buf_printf(&b, " pid=%d", (int)getpid());
	log_quoted(&b, "method", f->method ? f->method : "-");
	log_quoted(&b, "path", f->path ? f->path : "-");
	buf_printf(&b, " status=%d user=%lld duration_ms=%.2f", f->status, f->user_id,
		   f->duration_ms);
	if (f->first_chunk_ms >= 0)
		buf_printf(&b, " first_chunk_ms=%.2f", f->first_chunk_ms);
	buf_printf(&b, " bytes=%llu", f->bytes);
	if (f->note)
		buf_printf(&b, " %s", f->note);
	log_write(&b);
}

void log_event(const char *level, const char *fmt, ...)
{
	struct buf b, msg;
	va_list ap;

	buf_init(&b, 8192);
	buf_init(&msg, 4096);
	va_start(ap, fmt);
	buf_vprintf(&msg, fmt, ap);
	va_end(ap);
	log_time(&b);
	buf_printf(&b, " pid=%d level=%s", (int)getpid(), level);
	log_quoted(&b, "msg", buf_str(&msg));
	buf_free(&msg);
	log_write(&b);
}
