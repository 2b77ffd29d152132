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
static void log_time(struct buf *b)
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
	buf_printf(b, "time=%s.%03ldZ responder=%s pid=%d", stamp.text, ts.tv_nsec / 1000000,
		   config.responder ? config.responder : "-", log_getpid());
}

/* Append ` key="value"` with quotes, backslashes and control bytes escaped. */
static void log_quoted(struct buf *b, const char *key, const char *v)
{
	static const char hex[] = "0123456789abcdef";

	buf_putc(b, ' ');
	buf_puts(b, key);
	buf_append(b, "=\"", 2);
	while (v && *v) {
		size_t clean = 0;
		unsigned char c;

		/* Plain characters go in runs, not one call each. */
		while ((c = (unsigned char)v[clean]) != 0 && c != '"' && c != '\\' && c >= 0x20 &&
		       c != 0x7f)
			clean++;
		buf_append(b, v, clean);
		v += clean;
		if (!c)
			break;
		if (c == '"' || c == '\\') {
			char esc[2] = {'\\', (char)c};
			buf_append(b, esc, 2);
		} else {
			char esc[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
			buf_append(b, esc, 4);
		}
		v++;
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
	buf_reserve(&b, 512); /* one allocation for a usual line */
	log_time(&b);
	log_quoted(&b, "method", f->method ? f->method : "-");
	log_quoted(&b, "path", f->path ? f->path : "-");
	buf_printf(&b, " status=%d user=%lld duration_ms=%.2f", f->status, f->user_id,
		   f->duration_ms);
	if (f->first_chunk_ms >= 0)
		buf_printf(&b, " first_chunk_ms=%.2f", f->first_chunk_ms);
	buf_printf(&b, " bytes=%llu%s%s", f->bytes, f->note ? " " : "", f->note ? f->note : "");
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
	buf_printf(&b, " level=%s", level);
	log_quoted(&b, "msg", buf_str(&msg));
	buf_free(&msg);
	log_write(&b);
}
