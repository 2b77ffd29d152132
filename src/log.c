/*
 * log — one key=value line per request or event on stderr (see log.h).
 * Values that may hold spaces or quotes (paths, messages) are quoted with
 * %q-style escaping so a line always splits cleanly on spaces.
 */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"

/* getpid() is a system call (glibc no longer caches it), made for every
 * line; this process's pid, reset in a forked child.  Atomic, no lock. */
static pid_t log_pid;
static pthread_once_t log_pid_once = PTHREAD_ONCE_INIT;

static void log_pid_forget(void)
{
	__atomic_store_n(&log_pid, 0, __ATOMIC_RELAXED);
}

static void log_pid_setup(void)
{
	pthread_atfork(NULL, NULL, log_pid_forget);
}

static int log_getpid(void)
{
	pid_t pid = __atomic_load_n(&log_pid, __ATOMIC_RELAXED);

	if (!pid) {
		pthread_once(&log_pid_once, log_pid_setup);
		pid = getpid();
		__atomic_store_n(&log_pid, pid, __ATOMIC_RELAXED);
	}
	return (int)pid;
}

/* "time=... responder=... pid=...".  The date and time to the second are
 * formatted once a second per thread, not for every line. */
static int log_time(struct buf *b)
{
	static __thread struct {
		time_t sec;
		char text[64];
	} stamp;
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	if (ts.tv_sec != stamp.sec || !stamp.text[0]) {
		gmtime_r(&ts.tv_sec, &tm);
		snprintf(stamp.text, sizeof stamp.text, "%04d-%02d-%02dT%02d:%02d:%02d",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec);
		stamp.sec = ts.tv_sec;
	}
	return buf_printf(b, "time=%s.%03ldZ responder=%s pid=%d", stamp.text, ts.tv_nsec / 1000000,
			  config.responder ? config.responder : "-", log_getpid());
}

/* Append ` key="value"` with quotes, backslashes and control bytes
 * escaped.  BUF_OK or the buffer's (sticky) error. */
static int log_quoted(struct buf *b, const char *key, const char *v)
{
	static const char hex[] = "0123456789abcdef";

	if (buf_putc(b, ' ') != BUF_OK || buf_puts(b, key) != BUF_OK ||
	    buf_append(b, "=\"", 2) != BUF_OK)
		return buf_error(b);
	while (v && *v) {
		size_t clean = 0;
		unsigned char c;

		/* Plain characters go in runs, not one call each. */
		while ((c = (unsigned char)v[clean]) != 0 && c != '"' && c != '\\' && c >= 0x20 &&
		       c != 0x7f)
			clean++;
		if (buf_append(b, v, clean) != BUF_OK)
			return buf_error(b);
		v += clean;
		if (!c)
			break;
		if (c == '"' || c == '\\') {
			char esc[2] = {'\\', (char)c};

			if (buf_append(b, esc, 2) != BUF_OK)
				return buf_error(b);
		} else {
			char esc[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};

			if (buf_append(b, esc, 4) != BUF_OK)
				return buf_error(b);
		}
		v++;
	}
	return buf_putc(b, '"');
}

/* Write a built line (never half a line: callers write only what they
 * built whole). */
static void log_write(struct buf *b)
{
	if (buf_putc(b, '\n') == BUF_OK) {
		/* stderr may be gone; there is nowhere else to report it. */
		ssize_t rc = write(STDERR_FILENO, b->data, b->len);
		(void)rc;
	}
}

void log_request(const struct log_request_fields *f)
{
	struct buf b;

	buf_init(&b, 8192);
	if (buf_reserve(&b, 512) == BUF_OK && /* one allocation for a usual line */
	    log_time(&b) == BUF_OK &&
	    log_quoted(&b, "method", f->method ? f->method : "-") == BUF_OK &&
	    log_quoted(&b, "path", f->path ? f->path : "-") == BUF_OK &&
	    buf_printf(&b, " status=%d user=%lld duration_ms=%.2f", f->status, f->user_id,
		       f->duration_ms) == BUF_OK &&
	    (f->first_chunk_ms < 0 ||
	     buf_printf(&b, " first_chunk_ms=%.2f", f->first_chunk_ms) == BUF_OK) &&
	    buf_printf(&b, " bytes=%llu%s%s", f->bytes, f->note ? " " : "",
		       f->note ? f->note : "") == BUF_OK)
		log_write(&b);
	buf_free(&b);
}

void log_event(const char *level, const char *fmt, ...)
{
	struct buf b, msg;
	va_list ap;
	int rc;

	buf_init(&b, 8192);
	buf_init(&msg, 4096);
	va_start(ap, fmt);
	rc = buf_vprintf(&msg, fmt, ap);
	va_end(ap);
	if (log_time(&b) == BUF_OK && buf_printf(&b, " level=%s", level) == BUF_OK &&
	    log_quoted(&b, "msg", rc == BUF_OK ? buf_str(&msg) : "(too long to log)") == BUF_OK)
		log_write(&b);
	buf_free(&msg);
	buf_free(&b);
}
