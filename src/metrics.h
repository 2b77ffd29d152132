/*
 * metrics — counters shared across every responder process.
 *
 * Each process owns one small file in config.metrics_dir
 * (<responder>.<pid>) mapped with MAP_SHARED; the request path only does
 * relaxed atomic adds on it, which costs next to nothing.  /api/metrics
 * reads every file (never maps it: see shm.h), checks it and sums, so the
 * figures cover all processes; a file that is not one of ours is skipped
 * and logged.  Counters are monotonic, as Prometheus expects, and the
 * files stay bounded: the counters of a process that has exited are
 * folded into one file, "retired", and its own file removed (at the next
 * scrape or process start).  Gauges count live processes only.
 */
#ifndef JARVAS_METRICS_H
#define JARVAS_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

enum metrics_endpoint {
	METRICS_EP_TOKEN,
	METRICS_EP_TOKEN_REFRESH,
	METRICS_EP_TOKEN_VERIFY,
	METRICS_EP_CHAT,
	METRICS_EP_HISTORY,
	METRICS_EP_HEALTH,
	METRICS_EP_METRICS,
	METRICS_EP_STREAM,
	METRICS_EP_STREAM_TICKET,
	METRICS_EP_CONVERSATIONS,
	METRICS_EP_STOP,
	METRICS_EP_MODELS,
	METRICS_EP_USAGE,
	METRICS_EP_OTHER,
	METRICS_EP_COUNT
};

enum metrics_upstream_error {
	METRICS_UE_CONNECT,    /* refused, DNS, connect timeout */
	METRICS_UE_HTTP,       /* non-2xx status */
	METRICS_UE_ERROR_LINE, /* {"error": ...} inside the stream */
	METRICS_UE_MALFORMED,  /* a line that is not the expected JSON */
	METRICS_UE_CUT,	       /* ended without done */
	METRICS_UE_TIMEOUT,    /* silent past the idle timeout */
	METRICS_UE_OTHER,
	METRICS_UE_COUNT
};

/* The status codes counted one by one, and one more for the others. */
#define METRICS_NSTATUS 17
/* Buckets of the longest histogram, +Inf included. */
#define METRICS_NBUCKETS 15

struct metrics_histogram {
	uint64_t bucket[METRICS_NBUCKETS];
	uint64_t count;
	uint64_t sum_us;
};

#define METRICS_MAGIC 0x6a617276u /* "jarv" */
#define METRICS_VERSION 6	  /* 6: tokens by model */
/* Models counted apart: the slots follow config.models (CONFIG_MODELS_MAX). */
#define METRICS_NMODELS 32

/* A counter file as it is on disk (native byte order: it never leaves
 * the machine).  A reader takes a file only when its size, magic, version
 * and size field match, so a layout change gives a reset, never wrong
 * sums. */
struct metrics_file {
	uint32_t magic;
	uint32_t version;
	int32_t pid;	 /* its process; 0 in "retired" */
	uint32_t size;	 /* sizeof(struct metrics_file) when it was written */
	uint64_t id;	 /* random, never 0: tells a file from a later one of the same name */
	uint64_t folded; /* "retired": the id of the last file folded in */
	/* From here on only 64-bit counters; a sum adds them word by word. */
	uint64_t requests[METRICS_EP_COUNT][METRICS_NSTATUS];
	struct metrics_histogram first_chunk;
	struct metrics_histogram stream_duration;
	int64_t active_streams; /* the one gauge */
	uint64_t cache_hits;
	uint64_t cache_misses;
	uint64_t upstream_errors[METRICS_UE_COUNT];
	uint64_t client_aborts;
	uint64_t tokens[METRICS_NMODELS][2]; /* [model][0 prompt, 1 completion] */
};

/* What a reader makes of the n bytes of a file: 0 with a copy in *out
 * when they are a counter file of this layout, else -1. */
int metrics_file_parse(const void *data, size_t n, struct metrics_file *out);
/* Add f's counters into sum, its gauge too when live. */
void metrics_file_add(struct metrics_file *sum, const struct metrics_file *f, int live);

/* Open this process's counter file.  0, or -1 (metrics are then off: the
 * service runs without them rather than not at all). */
int metrics_open(void);
void metrics_close(void);

void metrics_count_request(int endpoint, int status);
void metrics_first_chunk(double ms);
void metrics_stream_duration(double ms);
void metrics_active_streams(int delta);
void metrics_cache(int hit);
void metrics_upstream_error(enum metrics_upstream_error kind);
/* Its label ("connect", "timeout", ...), also for log lines. */
const char *metrics_upstream_error_name(enum metrics_upstream_error kind);
void metrics_client_abort(void);
/* Tokens a reply of config.models[model] cost (negative: not known). */
void metrics_tokens(int model, long long prompt, long long completion);

/* Prometheus text exposition of the sum over all processes. */
int metrics_render(struct buf *out);

#endif
