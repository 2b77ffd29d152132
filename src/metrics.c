/*
 * metrics — per-process shared-memory counters, summed on read (see
 * metrics.h).
 *
 * Folding: a process that finds the file of a dead one adds its counters
 * to "retired", writes that, then removes the file, all while holding an
 * exclusive flock on "retired"; every reader holds it too while it sums.
 * So each file is counted exactly once, in a sum or in "retired", even
 * when two processes start at once.  "retired" remembers the id of the
 * last file folded in: a fold that stopped between its write and the
 * removal is finished by the next one without counting the file twice.
 */
#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "shm.h"

#define RETIRED "retired"

static const int status_codes[METRICS_NSTATUS - 1] = {200, 202, 204, 400, 401, 403, 404, 405,
						      409, 413, 415, 429, 500, 502, 503, 504};
#define NSTATUS METRICS_NSTATUS

static const char *const endpoint_names[METRICS_EP_COUNT] = {
	"token",
	"token_refresh",
	"token_verify",
	"chat",
	"chat_history",
	"health",
	"metrics",
	"chat_stream",
	"chat_stream_ticket",
	"chat_conversations",
	"chat_stop",
	"models",
	"usage",
	"other",
};
static const char *const upstream_error_names[METRICS_UE_COUNT] = {
	"connect", "http_status", "error_line", "malformed", "cut", "timeout", "other",
};

const char *metrics_upstream_error_name(enum metrics_upstream_error kind)
{
	return (unsigned)kind < METRICS_UE_COUNT ? upstream_error_names[kind] : "other";
}

/* Upper bounds in milliseconds; one more bucket for +Inf. */
static const double first_chunk_bounds[] = {1,	 2.5, 5,    10,	  25,	50,    100,
					    250, 500, 1000, 2000, 5000, 10000, 30000};
#define NFIRST (sizeof first_chunk_bounds / sizeof first_chunk_bounds[0])
static const double duration_bounds[] = {100,	500,   1000,   5000,   10000,
					 30000, 60000, 300000, 1800000};
#define NDURATION (sizeof duration_bounds / sizeof duration_bounds[0])

_Static_assert(NFIRST + 1 <= METRICS_NBUCKETS && NDURATION + 1 <= METRICS_NBUCKETS,
	       "histogram buckets");

/* The counters start here and are whole 64-bit words to the end. */
#define COUNTERS_AT offsetof(struct metrics_file, requests)
#define WORDS ((sizeof(struct metrics_file) - COUNTERS_AT) / 8)
#define GAUGE_WORD ((offsetof(struct metrics_file, active_streams) - COUNTERS_AT) / 8)
_Static_assert(COUNTERS_AT % 8 == 0 && sizeof(struct metrics_file) % 8 == 0, "word layout");

/* Mapped once in metrics_open() before threads start, then only touched
 * with atomic operations, so no lock; the address stays valid whatever
 * happens to the file (shm.h).  mine_lock is for the watcher, which
 * restores the file, and for metrics_open(). */
static struct metrics_file *mine;
static struct shm_file mine_file;
static uint64_t mine_id;
static pthread_mutex_t mine_lock = PTHREAD_MUTEX_INITIALIZER;

#define ADD(field, n) __atomic_fetch_add(&(field), (n), __ATOMIC_RELAXED)

int metrics_file_parse(const void *data, size_t n, struct metrics_file *out)
{
	if (n != sizeof *out)
		return -1;
	memcpy(out, data, sizeof *out);
	if (out->magic != METRICS_MAGIC || out->version != METRICS_VERSION ||
	    out->size != sizeof *out || out->pid < 0 || (out->pid > 0 && out->id == 0))
		return -1;
	return 0;
}

void metrics_file_add(struct metrics_file *sum, const struct metrics_file *f, int live)
{
	uint64_t a[WORDS], b[WORDS];

	/* Unsigned: garbage that passes the checks wraps, it never overflows. */
	memcpy(a, (const char *)sum + COUNTERS_AT, sizeof a);
	memcpy(b, (const char *)f + COUNTERS_AT, sizeof b);
	for (size_t i = 0; i < WORDS; i++)
		if (live || i != GAUGE_WORD)
			a[i] += b[i];
	memcpy((char *)sum + COUNTERS_AT, a, sizeof a);
}

static void header(struct metrics_file *f, int32_t pid, uint64_t id)
{
	f->magic = METRICS_MAGIC;
	f->version = METRICS_VERSION;
	f->pid = pid;
	f->size = sizeof *f;
	f->id = id;
	f->folded = 0;
}

/* The file's content: the counters as they are, under our header. */
static void mine_image(void *image, size_t size)
{
	memcpy(image, mine_file.map, size);
	header(image, (int32_t)getpid(), mine_id);
}

static int mine_intact(const void *map, size_t size)
{
	const struct metrics_file *m = map;

	(void)size;
	return m->magic == METRICS_MAGIC && m->version == METRICS_VERSION && m->size == sizeof *m &&
	       m->pid == (int32_t)getpid() && m->id == mine_id;
}

/* One pass over the directory: fold the files of dead processes into
 * "retired" and, when sum is set, add up everything. */
struct scan {
	int fd; /* "retired", locked; -1: it cannot be used, nothing is folded */
	struct metrics_file retired;
	struct metrics_file *sum;
	struct buf io;
};

static void scan_begin(struct scan *s, struct metrics_file *sum)
{
	struct buf path;
	ssize_t n;

	memset(s, 0, sizeof *s);
	s->sum = sum;
	buf_init(&s->io, sizeof s->retired + 1);
	buf_init(&path, 8192);
	s->fd = -1;
	if (buf_printf(&path, "%s/" RETIRED, config.metrics_dir) != BUF_OK)
		goto out;
	s->fd = open(buf_str(&path), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (s->fd < 0) {
		shm_skip(buf_str(&path), strerror(errno));
		goto out;
	}
	while (flock(s->fd, LOCK_EX) < 0)
		if (errno != EINTR) {
			shm_skip(buf_str(&path), strerror(errno));
			goto fail;
		}
	n = shm_read(s->fd, &s->io, sizeof s->retired + 1);
	if (n < 0)
		goto fail;
	if (n == 0 || metrics_file_parse(s->io.data, (size_t)n, &s->retired) < 0 ||
	    s->retired.pid != 0) {
		if (n > 0)
			shm_skip(buf_str(&path),
				 "not a retired-counters file of this layout; starting it anew");
		memset(&s->retired, 0, sizeof s->retired);
		header(&s->retired, 0, 0);
	}
	goto out;
fail:
	close(s->fd);
	s->fd = -1;
out:
	buf_free(&path);
}

static void scan_end(struct scan *s)
{
	if (s->sum && s->fd >= 0)
		metrics_file_add(s->sum, &s->retired, 0);
	if (s->fd >= 0)
		close(s->fd); /* and with it the lock */
	buf_free(&s->io);
}

/* Add f to "retired" and write it; 0, or -1 with nothing changed. */
static int fold(struct scan *s, const struct metrics_file *f)
{
	struct metrics_file before = s->retired;

	metrics_file_add(&s->retired, f, 0);
	s->retired.folded = f->id;
	if (ftruncate(s->fd, sizeof s->retired) == 0 &&
	    pwrite(s->fd, &s->retired, sizeof s->retired, 0) == (ssize_t)sizeof s->retired)
		return 0;
	log_warn("metrics: cannot write %s/" RETIRED ": %s", config.metrics_dir, strerror(errno));
	s->retired = before;
	return -1;
}

static const char other_layout[] = "a counter file of another layout";

/* Why the counter file at path cannot be read into *f, or NULL. */
static const char *read_counters(struct scan *s, const char *path, pid_t pid,
				 struct metrics_file *f)
{
	uint32_t head[4] = {0};
	const char *why = NULL;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return errno == ENOENT ? "" : strerror(errno); /* gone meanwhile: say nothing */
	n = shm_read(fd, &s->io, sizeof *f + 1); /* one more: a longer file is no counter file */
	if (n > 0)
		memcpy(head, s->io.data, (size_t)n < sizeof head ? (size_t)n : sizeof head);
	if (n < 0)
		why = strerror(errno);
	else if (metrics_file_parse(s->io.data, (size_t)n, f) == 0)
		why = f->pid == pid ? NULL : "the pid in its header is not the one in its name";
	else if (head[0] != METRICS_MAGIC)
		why = "not a counter file (wrong magic number)";
	else if (head[1] != METRICS_VERSION || head[3] != sizeof *f)
		why = other_layout;
	else
		why = "truncated, or not the size of a counter file";
	close(fd);
	return why;
}

static void visit(const char *path, const char *name, void *ctx)
{
	struct scan *s = ctx;
	struct metrics_file f;
	const char *why;
	pid_t pid;
	int live;

	if (strcmp(name, RETIRED) == 0)
		return;
	pid = shm_name_pid(name, NULL);
	if (!pid) {
		shm_skip(path, "not a <responder>.<pid> name");
		return;
	}
	why = read_counters(s, path, pid, &f);
	if (why == other_layout && !shm_pid_alive(pid)) {
		/* Left by an older or newer build: its counters cannot be added
		 * up with ours (a layout change is a reset), its process is gone. */
		unlink(path);
		shm_skip(path, "a counter file of another layout whose process is gone; removed");
		return;
	}
	if (why) {
		if (*why)
			shm_skip(path, why);
		return;
	}
	if (s->fd >= 0 && f.id == s->retired.folded) {
		unlink(path); /* folded already, only this was left to do */
		return;
	}
	live = shm_pid_alive(pid);
	if (!live && s->fd >= 0 && fold(s, &f) == 0) {
		unlink(path);
		return;
	}
	if (s->sum)
		metrics_file_add(s->sum, &f, live);
}

static uint64_t new_id(void)
{
	uint64_t id = 0;

	if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id)
		id = (uint64_t)time(NULL) << 32 ^ (uint64_t)getpid();
	return id ? id : 1;
}

int metrics_open(void)
{
	struct scan s;
	struct buf path;
	int rc = -1;

	buf_init(&path, 8192);
	if (buf_printf(&path, "%s/%s.%d", config.metrics_dir, config.responder, (int)getpid()) !=
	    BUF_OK)
		goto out;
	/* Under the lock, so that nobody folds a file of our pid (a process
	 * that had it before us) while we take it over. */
	scan_begin(&s, NULL);
	shm_scan(config.metrics_dir, visit, &s);
	mine_file.what = "metrics";
	mine_file.image = mine_image;
	mine_file.intact = mine_intact;
	mine_file.lock = &mine_lock;
	pthread_mutex_lock(&mine_lock);
	/* keep: after a reload (same pid, same file) the counters go on. */
	if (shm_file_open(&mine_file, buf_str(&path), sizeof *mine, 1) == 0) {
		struct metrics_file *m = mine_file.map;

		/* Ours from before a reload, or reset; never one already folded
		 * (a process of our pid that died halfway through a fold). */
		if (m->magic != METRICS_MAGIC || m->version != METRICS_VERSION ||
		    m->size != sizeof *m || m->pid != (int32_t)getpid() || m->id == 0 ||
		    (s.fd >= 0 && m->id == s.retired.folded)) {
			memset(m, 0, sizeof *m);
			header(m, (int32_t)getpid(), new_id());
		}
		mine_id = m->id;
		m->active_streams = 0; /* no stream survives a reload */
		mine = m;
		rc = 0;
	}
	pthread_mutex_unlock(&mine_lock);
	scan_end(&s);
out:
	if (rc < 0)
		log_warn("metrics off in this process");
	buf_free(&path);
	return rc;
}

void metrics_close(void)
{
	shm_file_close(&mine_file, 0);
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

static void histogram_add(struct metrics_histogram *h, const double *bounds, size_t n, double ms)
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

_Static_assert(METRICS_NMODELS == CONFIG_MODELS_MAX, "a slot per model");

void metrics_tokens(int model, long long prompt, long long completion)
{
	if (!mine || model < 0 || model >= METRICS_NMODELS)
		return;
	if (prompt > 0)
		ADD(mine->tokens[model][0], (uint64_t)prompt);
	if (completion > 0)
		ADD(mine->tokens[model][1], (uint64_t)completion);
}

/* A label value: \, " and a line break escaped, as the exposition
 * format wants.  0 or -1. */
static int put_label(struct buf *out, const char *v)
{
	for (; *v; v++) {
		int rc = *v == '\\'   ? buf_puts(out, "\\\\")
			 : *v == '"'  ? buf_puts(out, "\\\"")
			 : *v == '\n' ? buf_puts(out, "\\n")
				      : buf_putc(out, *v);

		if (rc != BUF_OK)
			return -1;
	}
	return 0;
}

/* jarvas_tokens_total: the slots of the models configured now (a process
 * started with another JARVAS_MODELS counted under its own order). */
static int render_tokens(struct buf *out, const struct metrics_file *sum)
{
	static const char *const kinds[2] = {"prompt", "completion"};
	int m, k;

	if (buf_puts(out, "# HELP jarvas_tokens_total Tokens the upstream counted, by kind and "
			  "model.\n# TYPE jarvas_tokens_total counter\n") != BUF_OK)
		return -1;
	for (m = 0; m < config.nmodels && m < METRICS_NMODELS; m++)
		for (k = 0; k < 2; k++)
			if (buf_printf(out, "jarvas_tokens_total{kind=\"%s\",model=\"", kinds[k]) !=
				    BUF_OK ||
			    put_label(out, config.models[m]) < 0 ||
			    buf_printf(out, "\"} %llu\n", (unsigned long long)sum->tokens[m][k]) !=
				    BUF_OK)
				return -1;
	return 0;
}

static int render_histogram(struct buf *out, const char *name, const char *help,
			    const struct metrics_histogram *h, const double *bounds, size_t n)
{
	uint64_t cum = 0;
	size_t i;

	if (buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name) != BUF_OK)
		return -1;
	for (i = 0; i < n; i++) {
		cum += h->bucket[i];
		if (buf_printf(out, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i] / 1000.0,
			       (unsigned long long)cum) != BUF_OK)
			return -1;
	}
	cum += h->bucket[n];
	if (buf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum) !=
	    BUF_OK)
		return -1;
	if (buf_printf(out, "%s_sum %.6f\n%s_count %llu\n", name, (double)h->sum_us / 1e6, name,
		       (unsigned long long)h->count) != BUF_OK)
		return -1;
	return 0;
}

int metrics_render(struct buf *out)
{
	struct metrics_file sum;
	struct scan sc;
	size_t e, s;

	memset(&sum, 0, sizeof sum);
	scan_begin(&sc, &sum);
	shm_scan(config.metrics_dir, visit, &sc);
	scan_end(&sc);

	if (buf_puts(
		    out,
		    "# HELP jarvas_requests_total Requests answered, by endpoint and HTTP status.\n"
		    "# TYPE jarvas_requests_total counter\n") != BUF_OK)
		return -1;
	for (e = 0; e < METRICS_EP_COUNT; e++)
		for (s = 0; s < NSTATUS; s++) {
			if (!sum.requests[e][s])
				continue;
			if (s < NSTATUS - 1 ? buf_printf(out,
							 "jarvas_requests_total{endpoint=\"%s\","
							 "status=\"%d\"} %llu\n",
							 endpoint_names[e], status_codes[s],
							 (unsigned long long)sum.requests[e][s])
					    : buf_printf(out,
							 "jarvas_requests_total{endpoint=\"%s\","
							 "status=\"other\"} %llu\n",
							 endpoint_names[e],
							 (unsigned long long)sum.requests[e][s]))
				return -1;
		}
	if (render_histogram(out, "jarvas_first_chunk_seconds",
			     "Time from request to the first chunk written to the client.",
			     &sum.first_chunk, first_chunk_bounds, NFIRST) < 0)
		return -1;
	if (render_histogram(out, "jarvas_stream_duration_seconds",
			     "Duration of streamed exchanges.", &sum.stream_duration,
			     duration_bounds, NDURATION) < 0)
		return -1;
	if (buf_printf(out,
		       "# HELP jarvas_active_streams Streams open now.\n"
		       "# TYPE jarvas_active_streams gauge\njarvas_active_streams %lld\n",
		       (long long)(sum.active_streams < 0 ? 0 : sum.active_streams)) != BUF_OK)
		return -1;
	if (buf_printf(
		    out,
		    "# HELP jarvas_prompt_cache_hits_total System prompts served from the cache.\n"
		    "# TYPE jarvas_prompt_cache_hits_total counter\njarvas_prompt_cache_hits_total "
		    "%llu\n"
		    "# HELP jarvas_prompt_cache_misses_total System prompts built anew.\n"
		    "# TYPE jarvas_prompt_cache_misses_total "
		    "counter\njarvas_prompt_cache_misses_total %llu\n",
		    (unsigned long long)sum.cache_hits,
		    (unsigned long long)sum.cache_misses) != BUF_OK)
		return -1;
	if (buf_puts(out, "# HELP jarvas_upstream_errors_total Upstream failures, by kind.\n"
			  "# TYPE jarvas_upstream_errors_total counter\n") != BUF_OK)
		return -1;
	for (e = 0; e < METRICS_UE_COUNT; e++)
		if (buf_printf(out, "jarvas_upstream_errors_total{kind=\"%s\"} %llu\n",
			       upstream_error_names[e],
			       (unsigned long long)sum.upstream_errors[e]) != BUF_OK)
			return -1;
	if (render_tokens(out, &sum) < 0)
		return -1;
	return buf_printf(out,
			  "# HELP jarvas_client_aborts_total Streams whose client left before the "
			  "end.\n"
			  "# TYPE jarvas_client_aborts_total counter\njarvas_client_aborts_total "
			  "%llu\n",
			  (unsigned long long)sum.client_aborts) == BUF_OK
		       ? 0
		       : -1;
}
