/*
 * metrics — counters shared across every responder process.
 *
 * Each process owns one small file in config.metrics_dir
 * (<responder>.<pid>) mapped with MAP_SHARED; the request path only does
 * relaxed atomic adds on it, which costs next to nothing.  /api/metrics
 * maps every file read-only and sums them, so the figures cover all
 * processes.  Counters of processes that have exited stay in the sum (they
 * are monotonic, as Prometheus expects); gauges count live processes only.
 */
#ifndef JARVAS_METRICS_H
#define JARVAS_METRICS_H

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
void metrics_client_abort(void);

/* Prometheus text exposition of the sum over all processes. */
int metrics_render(struct buf *out);

#endif
