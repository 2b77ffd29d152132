/*
 * metrics — per-process shared-memory counters, summed on read (see
 * metrics.h).  The file layout is a plain struct of 64-bit counters; a
 * reader ignores files whose magic or size does not match, so a layout
 * change never produces wrong sums, only a reset.
 */
#include "metrics.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

#define METRICS_MAGIC 0x6a617276u /* "jarv" */
#define METRICS_VERSION 2	  /* 2: the chat_stream_ticket endpoint */

static const int status_codes[] = {200, 204, 400, 401, 403, 404, 405,
				   413, 415, 429, 500, 502, 503, 504};
#define NSTATUS (sizeof status_codes / sizeof status_codes[0] + 1) /* + other */

static const char *const endpoint_names[METRICS_EP_COUNT] = {
	"token",   "token_refresh", "token_verify",	  "chat",  "chat_history", "health",
	"metrics", "chat_stream",   "chat_stream_ticket", "other",
};
static const char *const upstream_error_names[METRICS_UE_COUNT] = {
	"connect", "http_status", "error_line", "malformed", "cut", "timeout", "other",
};

/* Upper bounds in milliseconds; one more bucket for +Inf. */
static const double first_chunk_bounds[] = {1,	 2.5, 5,    10,	  25,	50,    100,
					    250, 500, 1000, 2000, 5000, 10000, 30000};
#define NFIRST (sizeof first_chunk_bounds / sizeof first_chunk_bounds[0])
static const double duration_bounds[] = {100,	500,   1000,   5000,   10000,
					 30000, 60000, 300000, 1800000};
#define NDURATION (sizeof duration_bounds / sizeof duration_bounds[0])

struct histogram_counts {
	uint64_t bucket[NFIRST + 1];
	uint64_t count;
	uint64_t sum_us;
};

struct metrics_file {
	uint32_t magic;
	uint32_t version;
	int32_t pid;
	uint32_t pad;
	uint64_t requests[METRICS_EP_COUNT][NSTATUS];
	struct histogram_counts first_chunk;
	struct histogram_counts stream_duration;
	int64_t active_streams;
	uint64_t cache_hits;
	uint64_t cache_misses;
	uint64_t upstream_errors[METRICS_UE_COUNT];
	uint64_t client_aborts;
};

/* Mapped once in metrics_open() before threads start; then only touched
 * with atomic operations, so no lock. */
static struct metrics_file *mine;

#define ADD(field, n) __atomic_fetch_add(&(field), (n), __ATOMIC_RELAXED)

int metrics_open(void)
{
	char path[4096];
	int fd, n;

	n = snprintf(path, sizeof path, "%s/%s.%d", config.metrics_dir, config.responder,
		     (int)getpid());
	if (n < 0 || (size_t)n >= sizeof path)
		return -1;
	/* No O_TRUNC: after a reload (same pid, same file) the counters go on. */
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		log_warn("metrics off: cannot create %s: %s", path, strerror(errno));
		return -1;
	}
	if (ftruncate(fd, sizeof *mine) < 0) {
		log_warn("metrics off: %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	mine = mmap(NULL, sizeof *mine, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (mine == MAP_FAILED) {
		mine = NULL;
		return -1;
	}
	if (mine->magic != METRICS_MAGIC || mine->version != METRICS_VERSION ||
	    mine->pid != (int32_t)getpid()) {
		memset(mine, 0, sizeof *mine);
		mine->pid = (int32_t)getpid();
		mine->version = METRICS_VERSION;
		__atomic_store_n(&mine->magic, METRICS_MAGIC, __ATOMIC_RELEASE);
	}
	mine->active_streams = 0; /* no stream survives a reload */
	return 0;
}

void metrics_close(void)
{
	if (mine)
		munmap(mine, sizeof *mine);
	mine = NULL;
}

void metrics_count_request(int endpoint, int status)
{
	size_t i;

	if (!mine)
		return;
	if (endpoint < 0 || endpoint >= METRICS_EP_COUNT)
		endpoint = METRICS_EP_OTHER;
	for (i = 0; i < NSTATUS - 1 && status_codes[i] != status; i++)
		;
	ADD(mine->requests[endpoint][i], 1);
}

static void histogram_add(struct histogram_counts *h, const double *bounds, size_t n, double ms)
{
	size_t i;

	for (i = 0; i < n && ms > bounds[i]; i++)
		;
	ADD(h->bucket[i], 1);
	ADD(h->count, 1);
	ADD(h->sum_us, (uint64_t)(ms * 1000.0));
}

void metrics_first_chunk(double ms)
{
	if (mine)
		histogram_add(&mine->first_chunk, first_chunk_bounds, NFIRST, ms);
}

void metrics_stream_duration(double ms)
{
	if (mine)
		histogram_add(&mine->stream_duration, duration_bounds, NDURATION, ms);
}

void metrics_active_streams(int delta)
{
	if (mine)
		ADD(mine->active_streams, delta);
}

void metrics_cache(int hit)
{
	if (mine)
		ADD(*(hit ? &mine->cache_hits : &mine->cache_misses), 1);
}

void metrics_upstream_error(enum metrics_upstream_error kind)
{
	if (mine && kind < METRICS_UE_COUNT)
		ADD(mine->upstream_errors[kind], 1);
}

void metrics_client_abort(void)
{
	if (mine)
		ADD(mine->client_aborts, 1);
}

static int process_alive(pid_t pid)
{
	return kill(pid, 0) == 0 || errno == EPERM;
}

/* Add one file's counters into sum.  Gauges only for live processes. */
static void sum_file(struct metrics_file *sum, const char *path)
{
	const struct metrics_file *m;
	struct stat st;
	const uint64_t *src;
	uint64_t *dst;
	size_t i, words;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (fstat(fd, &st) < 0 || (size_t)st.st_size != sizeof *m) {
		close(fd);
		return;
	}
	m = mmap(NULL, sizeof *m, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return;
	if (__atomic_load_n(&m->magic, __ATOMIC_ACQUIRE) == METRICS_MAGIC &&
	    m->version == METRICS_VERSION) {
		/* Everything after the header is 64-bit counters. */
		src = (const uint64_t *)&m->requests;
		dst = (uint64_t *)&sum->requests;
		words = (sizeof *m - offsetof(struct metrics_file, requests)) / 8;
		for (i = 0; i < words; i++)
			dst[i] += __atomic_load_n(&src[i], __ATOMIC_RELAXED);
		if (!process_alive(m->pid))
			sum->active_streams -= m->active_streams;
	}
	munmap((void *)m, sizeof *m);
}

static void render_histogram(struct buf *out, const char *name, const char *help,
			     const struct histogram_counts *h, const double *bounds, size_t n)
{
	uint64_t cum = 0;
	size_t i;

	buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (i = 0; i < n; i++) {
		cum += h->bucket[i];
		buf_printf(out, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i] / 1000.0,
			   (unsigned long long)cum);
	}
	cum += h->bucket[n];
	buf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
	buf_printf(out, "%s_sum %.6f\n%s_count %llu\n", name, (double)h->sum_us / 1e6, name,
		   (unsigned long long)h->count);
}

int metrics_render(struct buf *out)
{
	struct metrics_file sum;
	struct dirent *de;
	DIR *dir;
	size_t e, s;

	memset(&sum, 0, sizeof sum);
	dir = opendir(config.metrics_dir);
	if (dir) {
		char path[4096];

		while ((de = readdir(dir)) != NULL) {
			int n;

			if (de->d_name[0] == '.')
				continue;
			n = snprintf(path, sizeof path, "%s/%s", config.metrics_dir, de->d_name);
			if (n > 0 && (size_t)n < sizeof path)
				sum_file(&sum, path);
		}
		closedir(dir);
	}

	buf_puts(out,
		 "# HELP jarvas_requests_total Requests answered, by endpoint and HTTP status.\n"
		 "# TYPE jarvas_requests_total counter\n");
	for (e = 0; e < METRICS_EP_COUNT; e++)
		for (s = 0; s < NSTATUS; s++) {
			if (!sum.requests[e][s])
				continue;
			if (s < NSTATUS - 1)
				buf_printf(out,
					   "jarvas_requests_total{endpoint=\"%s\",status=\"%d\"} "
					   "%llu\n",
					   endpoint_names[e], status_codes[s],
					   (unsigned long long)sum.requests[e][s]);
			else
				buf_printf(out,
					   "jarvas_requests_total{endpoint=\"%s\",status=\"other\"}"
					   " %llu\n",
					   endpoint_names[e],
					   (unsigned long long)sum.requests[e][s]);
		}
	render_histogram(out, "jarvas_first_chunk_seconds",
			 "Time from request to the first chunk written to the client.",
			 &sum.first_chunk, first_chunk_bounds, NFIRST);
	render_histogram(out, "jarvas_stream_duration_seconds", "Duration of streamed exchanges.",
			 &sum.stream_duration, duration_bounds, NDURATION);
	buf_printf(out,
		   "# HELP jarvas_active_streams Streams open now.\n"
		   "# TYPE jarvas_active_streams gauge\njarvas_active_streams %lld\n",
		   (long long)(sum.active_streams < 0 ? 0 : sum.active_streams));
	buf_printf(out,
		   "# HELP jarvas_prompt_cache_hits_total System prompts served from the cache.\n"
		   "# TYPE jarvas_prompt_cache_hits_total counter\njarvas_prompt_cache_hits_total "
		   "%llu\n"
		   "# HELP jarvas_prompt_cache_misses_total System prompts built anew.\n"
		   "# TYPE jarvas_prompt_cache_misses_total "
		   "counter\njarvas_prompt_cache_misses_total %llu\n",
		   (unsigned long long)sum.cache_hits, (unsigned long long)sum.cache_misses);
	buf_puts(out, "# HELP jarvas_upstream_errors_total Upstream failures, by kind.\n"
		      "# TYPE jarvas_upstream_errors_total counter\n");
	for (e = 0; e < METRICS_UE_COUNT; e++)
		buf_printf(out, "jarvas_upstream_errors_total{kind=\"%s\"} %llu\n",
			   upstream_error_names[e], (unsigned long long)sum.upstream_errors[e]);
	return buf_printf(out,
			  "# HELP jarvas_client_aborts_total Streams whose client left before the "
			  "end.\n"
			  "# TYPE jarvas_client_aborts_total counter\njarvas_client_aborts_total "
			  "%llu\n",
			  (unsigned long long)sum.client_aborts) == BUF_OK
		       ? 0
		       : -1;
}
