/*
 * tests/bench/loadgen.c - the load client of `make bench` (tests/bench/bench.sh).
 *
 * Owns: one single-threaded epoll loop of non-blocking plain HTTP/1.1
 * connections to one loopback address, the per-stream and per-request
 * measurements taken in it, and the one JSON object printed on stdout at the
 * end.  Invariant: bounded - the run ends at the global timeout (-T) at the
 * latest and then reports what it has; nothing blocks but epoll_wait.
 *
 * Build:  cc -O2 -g -Wall -Wextra -Werror -o tests/bench/loadgen tests/bench/loadgen.c
 *
 * Usage:  loadgen [options] HOST:PORT PATH
 *   -m MODE      sse     (default) each request is one stream; a "data:" line
 *                        outside a named event is a chunk, "event: done" ends
 *                        it well, "event: error" badly (jarvas' SSE)
 *                ndjson  each request is one stream; every non-empty line is
 *                        a chunk except the one holding "done":true, which
 *                        ends it well (Ollama's protocol: the floor)
 *                openai  each request is one stream of OpenAI's chat
 *                        completions SSE: a "data:" line holding "content"
 *                        is a chunk (the finish and usage-only chunks are
 *                        not), "data: [DONE]" ends it well, a "data:" line
 *                        of an error object ({"error":.. or vLLM's
 *                        "object":"error") badly (the floor of
 *                        BENCH_API=openai)
 *                rr      request/response: -c keep-alive connections send
 *                        requests back to back for -d seconds
 *   -X METHOD    request method (default GET for sse, POST otherwise)
 *   -b BODY      request body, sent as application/json
 *   -a AUTH      value of the Authorization header ("Bearer eyJ...")
 *   -n N         sse/ndjson: streams to run in total (default 1)
 *   -c C         sse/ndjson: streams open at once at most (default N);
 *                rr: connections (default 1)
 *   -r RATE      new connections per second while ramping up; 0 = no limit
 *                (default 0)
 *   -d SECS      rr: how long to send requests (default 10)
 *   -T SECS      global timeout (default 60; rr: -d + 10); what is still
 *                open then fails with reason "timeout"
 *   -S PIDS      comma-separated pids whose VmRSS is sampled (and summed)
 *                every 100 ms, together with the number of streams past a
 *                200 response head (those a responder is serving)
 *   -U NAME=PIDS CPU seconds (utime + stime from /proc/PID/stat) of these
 *                pids over the run, reported under NAME; repeatable (8 max)
 *   -q           no progress line on stderr
 * In PATH and BODY, "{i}" is replaced by the request's number (from 0).
 *
 * Times: a stream's first-chunk latency runs from just before connect() to
 * the read that completed its first chunk; gaps are between the reads that
 * completed successive chunks (chunks that arrive in one read have gap 0).
 * All times are in milliseconds, CLOCK_MONOTONIC.  rr latency runs from
 * sending a request to its last byte; "rps" counts the responses completed
 * within the -d window, divided by -d.
 *
 * Output (one line of JSON): mode, started, done, failed, open_at_end,
 * peak_open (connections), peak_streaming (streams past a 200 head),
 * chunks, elapsed_s, machine {cpus, busy_s: non-idle CPU seconds of the
 * whole machine during the run, loadgen_cpu_s, listen_overflows: the
 * machine's TcpExt ListenOverflows during the run}, failed_by_reason (see
 * reason_name below), statuses {"200": N, ...}, first_chunk_ms and gap_ms
 * (streams) or requests, rps and latency_ms (rr), each as {n, min, p50,
 * p90, p99, max, mean}; with -S rss {samples, first_kib, peak_kib,
 * streaming_at_peak, max_streaming, at_max_streaming_kib, hwm_end_kib};
 * with -U cpu_s {NAME: seconds}.  Failures are also named on stderr (the
 * first five of each reason, with errno).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_BUF (256 * 1024)
#define HEAD_MAX (64 * 1024)	       /* status line + headers */
#define LINE_MAX_LEN (4 * 1024 * 1024) /* one SSE or NDJSON line */
#define MAX_EVENTS 1024
#define MAX_GROUPS 8
#define MAX_PIDS 64
#define SAMPLE_MS 100
#define SAMPLES_MAX (64L * 1024 * 1024) /* recorded values per series */

enum mode { M_SSE, M_NDJSON, M_RR, M_OPENAI };
enum cstate { C_CONNECTING, C_SENDING, C_HEAD, C_BODY };
enum framing { F_CLEN, F_CHUNKED, F_CLOSE };
enum chunked { CH_SIZE, CH_EXT, CH_DATA, CH_DATA_END, CH_TRAILER };
enum event { EV_MESSAGE, EV_DONE, EV_ERROR, EV_OTHER };
enum reason {
	R_CONNECT,
	R_STATUS,
	R_NO_DONE,
	R_ERROR_EVENT,
	R_CLOSED,
	R_RESET,
	R_BAD_HTTP,
	R_TIMEOUT,
	R_COUNT
};

/* connect: connect() or socket() failed (errno on stderr); status: not 200
 * (streams); ended_without_done: the response ended, or the connection
 * closed mid-body, without done; error_event: ... after "event: error";
 * closed_before_response: EOF before a whole response head; reset: a read
 * or write error (ECONNRESET...); bad_http: unparsable response; timeout:
 * still open at -T. */
static const char *const reason_name[R_COUNT] = {
	"connect",
	"status",
	"ended_without_done",
	"error_event",
	"closed_before_response",
	"reset",
	"bad_http",
	"timeout",
};

/* A growable array of samples (milliseconds), capped at SAMPLES_MAX. */
struct series {
	float *v;
	size_t n, cap;
	int truncated;
};

/* A growable byte buffer: header bytes, then a partial line. */
struct bytes {
	char *p;
	size_t len, cap;
};

struct conn {
	int fd;
	enum cstate state;
	long seq;  /* request number, for "{i}" */
	char *req; /* the request on the wire (owned) */
	size_t reqlen, sent;
	struct bytes in; /* header bytes until parsed, then a partial line */
	int status;
	enum framing framing;
	enum chunked ch;
	int ch_digits, tr_len;
	unsigned long long remaining;
	int keep_alive;
	int streaming; /* counted in g.streaming */
	enum event ev;
	int got_done, got_error;
	long nchunks;
	double t_start, t_last; /* connect(); the last chunk */
	double t_req;		/* rr: the request was sent */
	struct conn *next_free;
};

struct group {
	const char *name;
	int pids[MAX_PIDS];
	int npids;
	double cpu0;
};

static struct {
	enum mode mode;
	const char *method, *body, *auth, *path;
	struct sockaddr_in addr;
	char hostport[64];
	long total, concurrency;
	double rate, duration, timeout;
	int quiet;
	int rss_pids[MAX_PIDS];
	int nrss;
	struct group groups[MAX_GROUPS];
	int ngroups;
} opt;

static struct {
	int epfd;
	double t0;
	long started, done, failed, open, peak_open, chunks, rr_in_window;
	long streaming, peak_streaming; /* streams past a 200 head: in a responder */
	long reason[R_COUNT];
	long status[600];
	struct series first, gap, latency;
	double next_retry; /* rr: after a failed connect, wait a little */
	/* RSS samples */
	long rss_first, rss_peak, streaming_at_rss_peak, rss_at_max_streaming, max_streaming;
	int rss_samples;
	double next_sample, next_progress;
	double busy0;	 /* machine_busy_s() at the start */
	long overflows0; /* listen_overflows() at the start */
	char rbuf[READ_BUF];
} g;

static volatile sig_atomic_t interrupted; /* the signal that asked us to stop */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	va_list ap;

	fputs("loadgen: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Count a failure; say why on stderr for the first few of each kind. */
static void note(enum reason r, int err)
{
	static int said[R_COUNT];

	if (said[r]++ < 5)
		fprintf(stderr, "loadgen: %s%s%s\n", reason_name[r], err ? ": " : "",
			err ? strerror(err) : "");
}

static void on_signal(int sig)
{
	interrupted = sig;
}

/* ------------------------------------------------------------------ */
/* buffers and series                                                  */

static int bytes_append(struct bytes *b, const char *p, size_t n, size_t max)
{
	if (b->len + n > max)
		return -1;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *q;

		while (cap < b->len + n)
			cap *= 2;
		q = realloc(b->p, cap);
		if (!q)
			die("out of memory");
		b->p = q;
		b->cap = cap;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
	return 0;
}

static void series_add(struct series *s, double v)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 4096;
		float *q;

		if (s->n >= (size_t)SAMPLES_MAX) {
			s->truncated = 1;
			return;
		}
		q = realloc(s->v, cap * sizeof *q);
		if (!q)
			die("out of memory");
		s->v = q;
		s->cap = cap;
	}
	s->v[s->n++] = (float)v;
}

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;

	return (x > y) - (x < y);
}

static double dmin(double a, double b)
{
	return a < b ? a : b;
}

/* Nearest-rank percentile of a sorted series. */
static double pct(const struct series *s, double q)
{
	size_t k = (size_t)(q * (double)s->n);

	if ((double)k < q * (double)s->n)
		k++;

	if (k < 1)
		k = 1;
	if (k > s->n)
		k = s->n;
	return s->v[k - 1];
}

static void print_series(const char *name, struct series *s)
{
	double sum = 0;
	size_t i;

	if (s->n == 0) {
		printf("\"%s\": {\"n\": 0}", name);
		return;
	}
	qsort(s->v, s->n, sizeof *s->v, cmp_float);
	for (i = 0; i < s->n; i++)
		sum += s->v[i];
	printf("\"%s\": {\"n\": %zu, \"min\": %.3f, \"p50\": %.3f, \"p90\": %.3f, "
	       "\"p99\": %.3f, \"max\": %.3f, \"mean\": %.3f%s}",
	       name, s->n, s->v[0], pct(s, 0.50), pct(s, 0.90), pct(s, 0.99), s->v[s->n - 1],
	       sum / (double)s->n, s->truncated ? ", \"truncated\": true" : "");
}

/* ------------------------------------------------------------------ */
/* /proc sampling                                                      */

/* Sum of a "Key:   N kB" field of /proc/PID/status over pids; -1 if none. */
static long proc_status_kib(const int *pids, int n, const char *key)
{
	char path[64], line[256];
	size_t klen = strlen(key);
	long sum = -1;
	int i;

	for (i = 0; i < n; i++) {
		FILE *f;

		snprintf(path, sizeof path, "/proc/%d/status", pids[i]);
		f = fopen(path, "r");
		if (!f)
			continue;
		while (fgets(line, sizeof line, f))
			if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
				sum = (sum < 0 ? 0 : sum) + strtol(line + klen + 1, NULL, 10);
				break;
			}
		fclose(f);
	}
	return sum;
}

/* utime + stime of pids in seconds (threads included, dead ones too). */
static double proc_cpu_s(const int *pids, int n)
{
	char path[64], buf[1024];
	double sum = 0;
	int i;

	for (i = 0; i < n; i++) {
		unsigned long long ut, st;
		const char *p;
		FILE *f;
		size_t len;

		snprintf(path, sizeof path, "/proc/%d/stat", pids[i]);
		f = fopen(path, "r");
		if (!f)
			continue;
		len = fread(buf, 1, sizeof buf - 1, f);
		fclose(f);
		buf[len] = '\0';
		p = strrchr(buf, ')'); /* the command name may hold anything */
		/* after ")": state ppid pgrp session tty tpgid flags minflt
		 * cminflt majflt cmajflt utime stime */
		if (p && sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
				&ut, &st) == 2)
			sum += (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
	}
	return sum;
}

/* Non-idle CPU seconds of the whole machine since boot (/proc/stat). */
static double machine_busy_s(void)
{
	unsigned long long user, nice, sys, idle, iowait, irq, softirq, steal;
	FILE *f = fopen("/proc/stat", "r");
	int n;

	if (!f)
		return 0;
	n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &user, &nice, &sys, &idle,
		   &iowait, &irq, &softirq, &steal);
	fclose(f);
	if (n != 8)
		return 0;
	(void)idle, (void)iowait;
	return (double)(user + nice + sys + irq + softirq + steal) / (double)sysconf(_SC_CLK_TCK);
}

/* TcpExt ListenOverflows since boot (accept queues that were full, any
 * listener on the machine), or -1. */
static long listen_overflows(void)
{
	char names[4096], values[4096];
	FILE *f = fopen("/proc/net/netstat", "r");
	long found = -1;

	if (!f)
		return -1;
	/* pairs of lines: "TcpExt: Name Name ..." then "TcpExt: 1 2 ..." */
	while (fgets(names, sizeof names, f) && fgets(values, sizeof values, f)) {
		char *np, *vp, *nsave, *vsave;

		if (strncmp(names, "TcpExt:", 7) != 0)
			continue;
		strtok_r(names, " \n", &nsave); /* the "TcpExt:" labels */
		strtok_r(values, " \n", &vsave);
		while ((np = strtok_r(NULL, " \n", &nsave)) && (vp = strtok_r(NULL, " \n", &vsave)))
			if (strcmp(np, "ListenOverflows") == 0)
				found = strtol(vp, NULL, 10);
		break;
	}
	fclose(f);
	return found;
}

static double self_cpu_s(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) < 0)
		return 0;
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void sample_rss(void)
{
	long rss;

	if (opt.nrss == 0)
		return;
	rss = proc_status_kib(opt.rss_pids, opt.nrss, "VmRSS");
	if (rss < 0)
		return;
	if (g.rss_samples++ == 0)
		g.rss_first = rss;
	if (rss > g.rss_peak) {
		g.rss_peak = rss;
		g.streaming_at_rss_peak = g.streaming;
	}
	if (g.streaming > g.max_streaming ||
	    (g.streaming == g.max_streaming && rss > g.rss_at_max_streaming)) {
		g.max_streaming = g.streaming;
		g.rss_at_max_streaming = rss;
	}
}

static void parse_pids(const char *s, int *pids, int *n)
{
	char *end;

	while (*s) {
		long v = strtol(s, &end, 10);

		if (end == s || v <= 0 || v > INT32_MAX || *n >= MAX_PIDS)
			die("bad pid list: %s", s);
		pids[(*n)++] = (int)v;
		s = end;
		if (*s == ',')
			s++;
		else if (*s)
			die("bad pid list: %s", s);
	}
}

/* ------------------------------------------------------------------ */
/* requests                                                            */

static void put(struct bytes *b, const char *s)
{
	bytes_append(b, s, strlen(s), SIZE_MAX);
}

/* Append s to b with every "{i}" replaced by seq. */
static void expand(struct bytes *b, const char *s, long seq)
{
	char num[24];
	const char *p;

	snprintf(num, sizeof num, "%ld", seq);
	while ((p = strstr(s, "{i}"))) {
		bytes_append(b, s, (size_t)(p - s), SIZE_MAX);
		bytes_append(b, num, strlen(num), SIZE_MAX);
		s = p + 3;
	}
	bytes_append(b, s, strlen(s), SIZE_MAX);
}

static void build_request(struct conn *c)
{
	struct bytes b = {0}, body = {0};
	char line[256];

	if (opt.body)
		expand(&body, opt.body, c->seq);
	put(&b, opt.method);
	put(&b, " ");
	expand(&b, opt.path, c->seq);
	snprintf(line, sizeof line, " HTTP/1.1\r\nHost: %s\r\nUser-Agent: jarvas-loadgen\r\n",
		 opt.hostport);
	put(&b, line);
	if (opt.mode == M_SSE)
		put(&b, "Accept: text/event-stream\r\n");
	if (opt.auth) {
		put(&b, "Authorization: ");
		put(&b, opt.auth);
		put(&b, "\r\n");
	}
	if (opt.body) {
		snprintf(line, sizeof line,
			 "Content-Type: application/json\r\nContent-Length: %zu\r\n", body.len);
		put(&b, line);
	}
	put(&b, "\r\n");
	if (opt.body)
		bytes_append(&b, body.p, body.len, SIZE_MAX);
	free(body.p);
	free(c->req);
	c->req = b.p;
	c->reqlen = b.len;
	c->sent = 0;
}

/* Ready the connection for the next response. */
static void reset_response(struct conn *c)
{
	c->in.len = 0;
	c->status = 0;
	c->framing = F_CLOSE;
	c->ch = CH_SIZE;
	c->ch_digits = c->tr_len = 0;
	c->remaining = 0;
	c->keep_alive = 1;
	c->ev = EV_MESSAGE;
	c->got_done = c->got_error = 0;
	c->nchunks = 0;
}

/* ------------------------------------------------------------------ */
/* connections                                                         */

static struct conn *free_conns;

static void conn_free(struct conn *c)
{
	if (c->streaming)
		g.streaming--;
	c->streaming = 0;
	if (c->fd >= 0)
		close(c->fd); /* also removes it from the epoll set */
	c->fd = -1;
	free(c->req);
	c->req = NULL;
	free(c->in.p);
	c->in.p = NULL;
	c->in.len = c->in.cap = 0;
	c->next_free = free_conns;
	free_conns = c;
	g.open--;
}

static int mode_is_stream(void)
{
	return opt.mode != M_RR;
}

/* A stream ends (or an rr connection fails); reason < 0 means success.
 * err: the errno behind the failure, or 0. */
static void finish_err(struct conn *c, int reason, int err)
{
	if (reason >= 0) {
		g.failed++;
		g.reason[reason]++;
		note((enum reason)reason, err);
	} else {
		g.done++;
	}
	conn_free(c);
}

static void finish(struct conn *c, int reason)
{
	finish_err(c, reason, 0);
}

static void open_conn(double now)
{
	struct conn *c = free_conns;
	struct epoll_event ev;
	int fd, one = 1;

	if (c)
		free_conns = c->next_free;
	else if (!(c = calloc(1, sizeof *c)))
		die("out of memory");
	memset(c, 0, sizeof *c);
	c->fd = -1;
	c->seq = g.started++;
	g.open++;
	if (g.open > g.peak_open)
		g.peak_open = g.open;
	reset_response(c);
	build_request(c);
	c->t_start = now;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	c->fd = fd;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
	ev.data.ptr = c;
	if (epoll_ctl(g.epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		goto fail;
	if (connect(fd, (struct sockaddr *)&opt.addr, sizeof opt.addr) < 0 && errno != EINPROGRESS)
		goto fail;
	c->state = C_CONNECTING;
	return;
fail:
	if (opt.mode == M_RR)
		g.next_retry = now + 10;
	finish_err(c, R_CONNECT, errno);
}

/* ------------------------------------------------------------------ */
/* response parsing                                                    */

static void on_chunk(struct conn *c, double now)
{
	if (c->nchunks == 0)
		series_add(&g.first, now - c->t_start);
	else
		series_add(&g.gap, now - c->t_last);
	c->t_last = now;
	c->nchunks++;
	g.chunks++;
}

static int has_prefix(const char *p, size_t n, const char *prefix)
{
	size_t k = strlen(prefix);

	return n >= k && memcmp(p, prefix, k) == 0;
}

static void on_line(struct conn *c, const char *p, size_t n, double now)
{
	if (!p) /* never; says so to -Wnonnull under sanitizers */
		return;
	if (n > 0 && p[n - 1] == '\r')
		n--;
	if (opt.mode == M_NDJSON) {
		if (n == 0)
			return;
		if (memmem(p, n, "\"done\":true", 11) || memmem(p, n, "\"done\": true", 12))
			c->got_done = 1;
		else if (has_prefix(p, n, "{\"error\""))
			c->got_error = 1;
		else
			on_chunk(c, now);
		return;
	}
	if (opt.mode == M_OPENAI) {
		if (!has_prefix(p, n, "data:"))
			return; /* blank lines, comments, other fields */
		p += 5, n -= 5;
		if (n > 0 && *p == ' ')
			p++, n--;
		if (n == 6 && memcmp(p, "[DONE]", 6) == 0)
			c->got_done = !c->got_error; /* vLLM: [DONE] after an error */
		else if (has_prefix(p, n, "{\"error\"") || memmem(p, n, "\"object\":\"error\"", 16))
			c->got_error = 1;
		else if (memmem(p, n, "\"content\":", 10))
			on_chunk(c, now);
		return;
	}
	if (n == 0) { /* a blank line ends the event */
		c->ev = EV_MESSAGE;
		return;
	}
	if (p[0] == ':')
		return; /* comment: ": ping" */
	if (has_prefix(p, n, "data:")) {
		if (c->ev == EV_MESSAGE)
			on_chunk(c, now);
		return;
	}
	if (has_prefix(p, n, "event:")) {
		p += 6, n -= 6;
		if (n > 0 && *p == ' ')
			p++, n--;
		if (n == 4 && memcmp(p, "done", 4) == 0) {
			c->ev = EV_DONE;
			c->got_done = 1;
		} else if (n == 5 && memcmp(p, "error", 5) == 0) {
			c->ev = EV_ERROR;
			c->got_error = 1;
		} else {
			c->ev = n == 7 && memcmp(p, "message", 7) == 0 ? EV_MESSAGE : EV_OTHER;
		}
	}
}

/* Decoded body bytes: split into lines (streams) or drop them (rr). */
static void body_bytes(struct conn *c, const char *p, size_t n, double now)
{
	if (!mode_is_stream())
		return;
	while (n > 0) {
		const char *nl = memchr(p, '\n', n);
		size_t len;

		if (!nl) {
			if (bytes_append(&c->in, p, n, LINE_MAX_LEN) < 0)
				c->in.len = 0; /* an absurd line: drop it */
			return;
		}
		len = (size_t)(nl - p);
		if (c->in.len && c->in.p) {
			if (bytes_append(&c->in, p, len, LINE_MAX_LEN) == 0)
				on_line(c, c->in.p, c->in.len, now);
			c->in.len = 0;
		} else {
			on_line(c, p, len, now);
		}
		p += len + 1;
		n -= len + 1;
	}
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

static void chunk_size_done(struct conn *c)
{
	c->ch = c->remaining ? CH_DATA : CH_TRAILER;
	c->tr_len = 0;
}

/* Body bytes on the wire.  1: the response is complete (*used says how
 * many bytes it took), 0: more to come, -1: malformed. */
static int body_feed(struct conn *c, const char *p, size_t n, double now, size_t *used)
{
	const char *start = p;

	*used = n;
	if (c->framing == F_CLOSE) {
		body_bytes(c, p, n, now);
		return 0;
	}
	if (c->framing == F_CLEN) {
		size_t take = n < c->remaining ? n : (size_t)c->remaining;

		body_bytes(c, p, take, now);
		c->remaining -= take;
		*used = take;
		return c->remaining == 0;
	}
	while (n > 0) {
		char ch = *p;
		int v;

		switch (c->ch) {
		case CH_SIZE:
			p++, n--;
			v = hexval(ch);
			if (v >= 0) {
				if (c->remaining >> 40)
					return -1;
				c->remaining = c->remaining * 16 + (unsigned)v;
				c->ch_digits++;
			} else if (!c->ch_digits) {
				return -1;
			} else if (ch == '\n') {
				chunk_size_done(c);
			} else if (ch == '\r' || ch == ';' || ch == ' ' || ch == '\t') {
				c->ch = CH_EXT;
			} else {
				return -1;
			}
			break;
		case CH_EXT:
			p++, n--;
			if (ch == '\n')
				chunk_size_done(c);
			break;
		case CH_DATA: {
			size_t take = n < c->remaining ? n : (size_t)c->remaining;

			body_bytes(c, p, take, now);
			p += take, n -= take;
			c->remaining -= take;
			if (c->remaining == 0)
				c->ch = CH_DATA_END;
			break;
		}
		case CH_DATA_END:
			p++, n--;
			if (ch == '\n') {
				c->ch = CH_SIZE;
				c->ch_digits = 0;
			} else if (ch != '\r') {
				return -1;
			}
			break;
		case CH_TRAILER:
			p++, n--;
			if (ch == '\n') {
				if (c->tr_len == 0) {
					*used = (size_t)(p - start);
					return 1;
				}
				c->tr_len = 0;
			} else if (ch != '\r') {
				c->tr_len++;
			}
			break;
		}
	}
	return 0;
}

/* Parse the head in c->in (complete, ending in a blank line); -1 if bad. */
static int parse_head(struct conn *c)
{
	char *p = c->in.p, *end = c->in.p + c->in.len, *eol;
	int minor;

	if (sscanf(p, "HTTP/1.%d %d", &minor, &c->status) != 2 || c->status < 100 ||
	    c->status > 599)
		return -1;
	c->keep_alive = minor >= 1;
	c->framing = F_CLOSE;
	while ((eol = memchr(p, '\n', (size_t)(end - p)))) {
		char *line = p, *colon;

		p = eol + 1;
		*eol = '\0';
		if (eol > line && eol[-1] == '\r')
			eol[-1] = '\0';
		colon = strchr(line, ':');
		if (!colon)
			continue;
		*colon++ = '\0';
		while (*colon == ' ' || *colon == '\t')
			colon++;
		if (strcasecmp(line, "content-length") == 0 && c->framing != F_CHUNKED) {
			c->framing = F_CLEN;
			c->remaining = strtoull(colon, NULL, 10);
		} else if (strcasecmp(line, "transfer-encoding") == 0 &&
			   strcasestr(colon, "chunked")) {
			c->framing = F_CHUNKED;
		} else if (strcasecmp(line, "connection") == 0) {
			if (strcasestr(colon, "close"))
				c->keep_alive = 0;
			else if (strcasestr(colon, "keep-alive"))
				c->keep_alive = 1;
		}
	}
	if (c->status == 204 || c->status == 304 || (c->status >= 100 && c->status < 200)) {
		c->framing = F_CLEN;
		c->remaining = 0;
	}
	if (c->framing == F_CLOSE)
		c->keep_alive = 0;
	c->in.len = 0; /* from here on the buffer holds a partial line */
	return 0;
}

static int send_request(struct conn *c);

/* A whole response arrived (or, close-delimited, the connection ended). */
static void response_complete(struct conn *c, double now, int *closed)
{
	if (c->status >= 100 && c->status < 600)
		g.status[c->status]++;
	if (mode_is_stream()) {
		*closed = 1;
		if (c->status != 200)
			finish(c, R_STATUS);
		else if (c->got_done)
			finish(c, -1);
		else
			finish(c, c->got_error ? R_ERROR_EVENT : R_NO_DONE);
		return;
	}
	/* rr: every response counts as done, whatever its status */
	g.done++;
	series_add(&g.latency, now - c->t_req);
	if ((now - g.t0) <= opt.duration * 1e3)
		g.rr_in_window++;
	if (!c->keep_alive || now - g.t0 >= opt.duration * 1e3) {
		*closed = 1;
		conn_free(c);
		return;
	}
	reset_response(c);
	c->seq = g.started++;
	build_request(c);
	c->state = C_SENDING;
	if (send_request(c) < 0) {
		*closed = 1;
		finish(c, R_RESET);
	}
}

/* Write what is left of the request; -1 on a write error. */
static int send_request(struct conn *c)
{
	while (c->sent < c->reqlen) {
		ssize_t k = send(c->fd, c->req + c->sent, c->reqlen - c->sent, MSG_NOSIGNAL);

		if (k < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return errno == EINTR ? send_request(c) : 0;
			return -1;
		}
		c->sent += (size_t)k;
	}
	c->state = C_HEAD;
	c->t_req = now_ms();
	return 0;
}

/* Bytes read from the connection.  Returns 1 when c was freed. */
static int on_bytes(struct conn *c, const char *p, size_t n, double now)
{
	int closed = 0;

	while (n > 0 && !closed) {
		if (c->state == C_HEAD) {
			/* look for the blank line, also across reads */
			size_t old = c->in.len, take, i;
			char *end;

			if (bytes_append(&c->in, p, n, HEAD_MAX + READ_BUF) < 0) {
				finish(c, R_BAD_HTTP);
				return 1;
			}
			end = memmem(c->in.p + (old > 3 ? old - 3 : 0),
				     c->in.len - (old > 3 ? old - 3 : 0), "\r\n\r\n", 4);
			if (!end) {
				if (c->in.len > HEAD_MAX) {
					finish(c, R_BAD_HTTP);
					return 1;
				}
				return 0;
			}
			i = (size_t)(end - c->in.p) + 4; /* head length */
			take = i - old;			 /* of these new bytes */
			c->in.len = i;
			if (parse_head(c) < 0) {
				finish(c, R_BAD_HTTP);
				return 1;
			}
			p += take, n -= take;
			if (c->status == 100) { /* 100 Continue: another head follows */
				reset_response(c);
				continue;
			}
			c->state = C_BODY;
			if (mode_is_stream() && c->status != 200) {
				response_complete(c, now, &closed);
				return 1;
			}
			if (mode_is_stream()) {
				c->streaming = 1;
				if (++g.streaming > g.peak_streaming)
					g.peak_streaming = g.streaming;
			}
			if (c->framing == F_CLEN && c->remaining == 0)
				response_complete(c, now, &closed);
			continue;
		}
		if (c->state == C_BODY) {
			size_t used;
			int rc = body_feed(c, p, n, now, &used);

			if (rc < 0) {
				finish(c, R_BAD_HTTP);
				return 1;
			}
			p += used, n -= used;
			if (rc == 1)
				response_complete(c, now, &closed);
			continue;
		}
		break; /* bytes before the request was sent: ignore */
	}
	return closed;
}

static void on_event(struct conn *c, uint32_t events, double now)
{
	int closed = 0;

	if (c->state == C_CONNECTING) {
		int err = 0;
		socklen_t len = sizeof err;

		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
			if (opt.mode == M_RR)
				g.next_retry = now + 10;
			finish_err(c, R_CONNECT, err ? err : errno);
			return;
		}
		c->state = C_SENDING;
	}
	if (c->state == C_SENDING) {
		if (send_request(c) < 0) {
			finish_err(c, R_RESET, errno);
			return;
		}
		if (c->state == C_SENDING)
			return;
	}
	if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
		return;
	for (;;) {
		ssize_t k = read(c->fd, g.rbuf, sizeof g.rbuf);

		now = now_ms(); /* a batch of events takes a while at 10,000 streams */
		if (k > 0) {
			if (on_bytes(c, g.rbuf, (size_t)k, now))
				return;
			continue;
		}
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && errno == EAGAIN)
			return;
		/* EOF or error */
		if (k == 0 && c->state == C_BODY && c->framing == F_CLOSE) {
			c->keep_alive = 0;
			response_complete(c, now, &closed);
			return;
		}
		if (mode_is_stream() && c->got_done) {
			finish(c, -1); /* done arrived; only the end of the body did not */
			return;
		}
		if (k < 0)
			finish_err(c, R_RESET, errno);
		else /* rr: closed with a request unanswered */
			finish(c, c->state == C_BODY ? R_NO_DONE : R_CLOSED);
		return;
	}
}

/* ------------------------------------------------------------------ */
/* main loop                                                           */

static int want_open(double now)
{
	if (interrupted)
		return 0;
	if (opt.mode == M_RR)
		return g.open < opt.concurrency && now - g.t0 < opt.duration * 1e3 &&
		       now >= g.next_retry;
	if (g.started >= opt.total || g.open >= opt.concurrency)
		return 0;
	return opt.rate <= 0 || now >= g.t0 + (double)g.started * 1e3 / opt.rate;
}

/* Milliseconds until something is due (a ramp step, a sample, the end). */
static int wait_ms(double now, double deadline)
{
	double next = deadline;

	if (opt.mode != M_RR && g.started < opt.total && g.open < opt.concurrency && opt.rate > 0)
		next = dmin(next, g.t0 + (double)g.started * 1e3 / opt.rate);
	if (opt.mode == M_RR) {
		double end = g.t0 + opt.duration * 1e3;

		if (g.open < opt.concurrency && now < end)
			next = dmin(next, g.next_retry);
		next = dmin(next, end);
	}
	if (opt.nrss)
		next = dmin(next, g.next_sample);
	if (!opt.quiet)
		next = dmin(next, g.next_progress);
	if (next <= now)
		return 0;
	return (int)(next - now) + 1; /* never wake early: that would spin */
}

static int finished(double now)
{
	if (interrupted)
		return 1;
	if (opt.mode == M_RR)
		return now - g.t0 >= opt.duration * 1e3 && g.open == 0;
	return g.started >= opt.total && g.open == 0;
}

static void progress(double now)
{
	fprintf(stderr, "loadgen: t=%.1fs started=%ld open=%ld done=%ld failed=%ld\n",
		(now - g.t0) / 1e3, g.started, g.open, g.done, g.failed);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: loadgen [-m sse|ndjson|openai|rr] [-X METHOD] [-b BODY] [-a AUTH] [-n N] "
		"[-c C]\n"
		"               [-r RATE] [-d SECS] [-T SECS] [-S PIDS] [-U NAME=PIDS] [-q]\n"
		"               HOST:PORT PATH\n");
	exit(2);
}

static double num_arg(const char *s, double min, double max)
{
	char *end;
	double v = strtod(s, &end);

	if (end == s || *end || !(v >= min && v <= max))
		die("bad number: %s", s);
	return v;
}

static void parse_args(int argc, char **argv)
{
	const char *colon;
	char host[48];
	int ch;
	double timeout = -1;

	opt.total = 1;
	opt.concurrency = -1;
	opt.duration = 10;
	while ((ch = getopt(argc, argv, "m:X:b:a:n:c:r:d:T:S:U:q")) != -1) {
		switch (ch) {
		case 'm':
			if (strcmp(optarg, "sse") == 0)
				opt.mode = M_SSE;
			else if (strcmp(optarg, "ndjson") == 0)
				opt.mode = M_NDJSON;
			else if (strcmp(optarg, "rr") == 0)
				opt.mode = M_RR;
			else if (strcmp(optarg, "openai") == 0)
				opt.mode = M_OPENAI;
			else
				usage();
			break;
		case 'X': opt.method = optarg; break;
		case 'b': opt.body = optarg; break;
		case 'a': opt.auth = optarg; break;
		case 'n': opt.total = (long)num_arg(optarg, 1, 1e7); break;
		case 'c': opt.concurrency = (long)num_arg(optarg, 1, 1e6); break;
		case 'r': opt.rate = num_arg(optarg, 0, 1e7); break;
		case 'd': opt.duration = num_arg(optarg, 0.1, 86400); break;
		case 'T': timeout = num_arg(optarg, 0.1, 86400); break;
		case 'S': parse_pids(optarg, opt.rss_pids, &opt.nrss); break;
		case 'U': {
			struct group *gr;
			char *eq = strchr(optarg, '=');

			if (!eq || opt.ngroups == MAX_GROUPS)
				usage();
			*eq = '\0';
			gr = &opt.groups[opt.ngroups++];
			gr->name = optarg;
			parse_pids(eq + 1, gr->pids, &gr->npids);
			break;
		}
		case 'q': opt.quiet = 1; break;
		default: usage();
		}
	}
	if (argc - optind != 2)
		usage();
	colon = strrchr(argv[optind], ':');
	if (!colon || (size_t)(colon - argv[optind]) >= sizeof host)
		usage();
	memcpy(host, argv[optind], (size_t)(colon - argv[optind]));
	host[colon - argv[optind]] = '\0';
	opt.addr.sin_family = AF_INET;
	opt.addr.sin_port = htons((uint16_t)num_arg(colon + 1, 1, 65535));
	if (inet_pton(AF_INET, host, &opt.addr.sin_addr) != 1)
		die("not an IPv4 address: %s", host);
	snprintf(opt.hostport, sizeof opt.hostport, "%s", argv[optind]);
	opt.path = argv[optind + 1];
	if (!opt.method)
		opt.method = opt.mode == M_SSE ? "GET" : "POST";
	if (opt.concurrency < 0)
		opt.concurrency = opt.mode == M_RR ? 1 : opt.total;
	opt.timeout = timeout > 0 ? timeout : opt.mode == M_RR ? opt.duration + 10 : 60;
}

static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && opt.mode != M_RR &&
	    (rlim_t)opt.concurrency + 16 > rl.rlim_cur && (rlim_t)opt.total + 16 > rl.rlim_cur)
		fprintf(stderr, "loadgen: warning: %ld streams but only %llu descriptors\n",
			opt.concurrency < opt.total ? opt.concurrency : opt.total,
			(unsigned long long)rl.rlim_cur);
}

static void report(double now)
{
	const char *modes[] = {"sse", "ndjson", "rr", "openai"};
	double elapsed = (now - g.t0) / 1e3;
	int i, first = 1;

	long overflows = listen_overflows();

	printf("{\"mode\": \"%s\", \"started\": %ld, \"done\": %ld, \"failed\": %ld, "
	       "\"open_at_end\": %ld, \"peak_open\": %ld, \"peak_streaming\": %ld, "
	       "\"chunks\": %ld, \"elapsed_s\": %.3f, ",
	       modes[opt.mode], g.started, g.done, g.failed, g.open, g.peak_open, g.peak_streaming,
	       g.chunks, elapsed);
	printf("\"machine\": {\"cpus\": %ld, \"busy_s\": %.2f, \"loadgen_cpu_s\": %.2f, "
	       "\"listen_overflows\": %ld}, ",
	       sysconf(_SC_NPROCESSORS_ONLN), machine_busy_s() - g.busy0, self_cpu_s(),
	       overflows < 0 || g.overflows0 < 0 ? -1 : overflows - g.overflows0);
	printf("\"failed_by_reason\": {");
	for (i = 0; i < R_COUNT; i++)
		printf("%s\"%s\": %ld", i ? ", " : "", reason_name[i], g.reason[i]);
	printf("}, \"statuses\": {");
	for (i = 100; i < 600; i++)
		if (g.status[i]) {
			printf("%s\"%d\": %ld", first ? "" : ", ", i, g.status[i]);
			first = 0;
		}
	printf("}, ");
	if (opt.mode == M_RR) {
		printf("\"duration_s\": %.3f, \"requests\": %ld, \"rps\": %.1f, ", opt.duration,
		       g.rr_in_window, (double)g.rr_in_window / opt.duration);
		print_series("latency_ms", &g.latency);
	} else {
		print_series("first_chunk_ms", &g.first);
		printf(", ");
		print_series("gap_ms", &g.gap);
	}
	if (opt.nrss)
		printf(", \"rss\": {\"samples\": %d, \"first_kib\": %ld, \"peak_kib\": %ld, "
		       "\"streaming_at_peak\": %ld, \"max_streaming\": %ld, "
		       "\"at_max_streaming_kib\": %ld, \"hwm_end_kib\": %ld}",
		       g.rss_samples, g.rss_first, g.rss_peak, g.streaming_at_rss_peak,
		       g.max_streaming, g.rss_at_max_streaming,
		       proc_status_kib(opt.rss_pids, opt.nrss, "VmHWM"));
	if (opt.ngroups) {
		printf(", \"cpu_s\": {");
		for (i = 0; i < opt.ngroups; i++)
			printf("%s\"%s\": %.2f", i ? ", " : "", opt.groups[i].name,
			       proc_cpu_s(opt.groups[i].pids, opt.groups[i].npids) -
				       opt.groups[i].cpu0);
		printf("}");
	}
	printf("}\n");
	fflush(stdout);
}

int main(int argc, char **argv)
{
	struct epoll_event evs[MAX_EVENTS];
	struct sigaction sa;
	double now, deadline;
	int i, n;

	parse_args(argc, argv);
	raise_nofile();
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	g.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (g.epfd < 0)
		die("epoll_create1: %s", strerror(errno));
	for (i = 0; i < opt.ngroups; i++)
		opt.groups[i].cpu0 = proc_cpu_s(opt.groups[i].pids, opt.groups[i].npids);

	g.busy0 = machine_busy_s();
	g.overflows0 = listen_overflows();
	g.t0 = now = now_ms();
	deadline = g.t0 + opt.timeout * 1e3;
	g.next_sample = now;
	g.next_progress = now + 1000;
	for (;;) {
		now = now_ms();
		while (want_open(now) && now < deadline)
			open_conn(now);
		if (opt.nrss && now >= g.next_sample) {
			sample_rss();
			g.next_sample = now + SAMPLE_MS;
		}
		if (!opt.quiet && now >= g.next_progress) {
			progress(now);
			g.next_progress = now + 1000;
		}
		if (finished(now) || now >= deadline)
			break;
		n = epoll_wait(g.epfd, evs, MAX_EVENTS, wait_ms(now, deadline));
		if (n < 0 && errno != EINTR)
			die("epoll_wait: %s", strerror(errno));
		now = now_ms();
		for (i = 0; i < n; i++)
			on_event(evs[i].data.ptr, evs[i].events, now);
	}
	/* What is still open has run out of time. */
	g.failed += g.open;
	g.reason[R_TIMEOUT] += g.open;
	report(now);
	if (interrupted) {
		/* Die of the signal after reporting, so that a calling shell
		 * knows the user interrupted (and runs its trap). */
		signal(interrupted, SIG_DFL);
		raise(interrupted);
	}
	return 0;
}
