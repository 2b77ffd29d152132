/*
 * server — the runtime every responder shares: configuration, the
 * database pool, metrics, a pool of worker threads each looping on
 * FCGX_Accept_r, routing by path and method, and graceful shutdown on
 * SIGTERM.  Several processes of one responder are several instances
 * started by spawn/jarvasctl, each with its own socket.
 *
 * A responder's main() only declares its routes and calls server_main().
 * Per-thread state (the FastCGI request, the upstream handle) lives in
 * struct worker and is passed explicitly; nothing is shared by accident.
 */
#ifndef JARVAS_SERVER_H
#define JARVAS_SERVER_H

#include <fcgiapp.h>

#include "request.h"

struct upstream;

struct worker {
	int id;
	FCGX_Request fcgx;
	struct upstream *upstream; /* lazily created, freed at thread exit */
};

typedef void (*handler_fn)(struct request *r);

/* path: without trailing slash.  A path whose last segment is "*" stands
 * for any one non-empty segment there (the route of
 * "/api/chat/conversations" plus "/" and "*" serves
 * "/api/chat/conversations/abc"); the handler finds it in r->segment. */
struct route {
	const char *path;
	int endpoint; /* enum metrics_endpoint */
	handler_fn get, post, delete_, patch;
};

struct server_spec {
	const char *name; /* "token", "chat", "chat_stream" */
	const struct route *routes;
	int nroutes;
	int uses_passwords; /* initialise the password-hash limiter */
	int streams;	    /* runs relay.c and the per-user open-stream cap */
	int chats;	    /* the per-user cap on chats in progress */
};

int server_main(const struct server_spec *spec);

/* Set once SIGTERM arrived: long-running handlers end early. */
int server_stopping(void);

#endif
