/*
 * chat_stream — the streaming responder: /api/chat/stream/.  Only wiring;
 * the work is in stream.c (setting a stream up, in a worker thread) and
 * relay.c (every open stream, in one event-loop thread).
 */
#include "metrics.h"
#include "server.h"
#include "stream.h"

static const struct route routes[] = {
	{"/api/chat/stream", METRICS_EP_STREAM, stream_get, stream_post, NULL},
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
