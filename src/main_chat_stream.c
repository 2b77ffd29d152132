/*
 * chat_stream — the streaming responder: /api/chat/stream/, its tickets
 * and /api/chat/stop/.  Only wiring; the work is in stream.c (setting a
 * stream up, or a reconnecting client's rest, in a worker thread),
 * relay.c (every open stream, in one event-loop thread), journal.c (what
 * a reconnecting client is sent from any process), stop.c and tickets.c
 * (the credentials EventSource can carry).
 */
#include "metrics.h"
#include "server.h"
#include "stop.h"
#include "stream.h"
#include "tickets.h"

static const struct route routes[] = {
	{"/api/chat/stream", METRICS_EP_STREAM, stream_get, stream_post, NULL, NULL},
	{"/api/chat/stream/ticket", METRICS_EP_STREAM_TICKET, NULL, tickets_post, NULL, NULL},
	{"/api/chat/stop", METRICS_EP_STOP, NULL, stop_post, NULL, NULL},
};

int main(void)
{
	static const struct server_spec spec = {
		.name = "chat_stream",
		.routes = routes,
		.nroutes = sizeof routes / sizeof routes[0],
		.streams = 1,
	};

	return server_main(&spec);
}
