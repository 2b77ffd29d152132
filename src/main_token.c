/*
 * token — the login responder: /api/token/, /api/token/refresh/,
 * /api/token/verify/.  Only wiring; the work is in tokens.c.
 */
#include "metrics.h"
#include "server.h"
#include "tokens.h"

static const struct route routes[] = {
	{"/api/token", METRICS_EP_TOKEN, NULL, tokens_obtain, NULL, NULL},
	{"/api/token/refresh", METRICS_EP_TOKEN_REFRESH, NULL, tokens_refresh, NULL, NULL},
	{"/api/token/verify", METRICS_EP_TOKEN_VERIFY, NULL, tokens_verify, NULL, NULL},
};

int main(void)
{
	static const struct server_spec spec = {
		.name = "token",
		.routes = routes,
		.nroutes = sizeof routes / sizeof routes[0],
		.uses_passwords = 1,
	};

	return server_main(&spec);
}
