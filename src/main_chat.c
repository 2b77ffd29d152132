/*
 * chat — the non-streaming responder: /api/chat/, /api/chat/history/,
 * /api/chat/conversations/ and /api/chat/conversations/<id>/,
 * /api/models/, /api/usage/, /api/health/, /api/metrics, and the JSON 404 for every other path
 * nginx sends here.  Only wiring; the work is in chat.c, models.c, usage.c and ops.c.
 */
#include "chat.h"
#include "metrics.h"
#include "models.h"
#include "ops.h"
#include "server.h"
#include "usage.h"

static const struct route routes[] = {
	{"/api/chat", METRICS_EP_CHAT, NULL, chat_post, NULL, NULL},
	{"/api/chat/history", METRICS_EP_HISTORY, chat_history_get, NULL, chat_history_delete,
	 NULL},
	{"/api/chat/conversations", METRICS_EP_CONVERSATIONS, chat_conversations_get, NULL, NULL,
	 NULL},
	{"/api/chat/conversations/*", METRICS_EP_CONVERSATIONS, NULL, NULL,
	 chat_conversation_delete, chat_conversation_patch},
	{"/api/models", METRICS_EP_MODELS, models_get, NULL, NULL, NULL},
	{"/api/usage", METRICS_EP_USAGE, usage_get, NULL, NULL, NULL},
	{"/api/health", METRICS_EP_HEALTH, ops_health, NULL, NULL, NULL},
	{"/api/metrics", METRICS_EP_METRICS, ops_metrics, NULL, NULL, NULL},
};

int main(void)
{
	static const struct server_spec spec = {
		.name = "chat",
		.routes = routes,
		.nroutes = sizeof routes / sizeof routes[0],
		.chats = 1,
	};

	return server_main(&spec);
}
