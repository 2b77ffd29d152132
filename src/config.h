/*
 * config — the process-wide settings, read once from JARVAS_* environment
 * variables at startup (spawn/jarvasctl has already merged spawn/jarvas.env).
 *
 * Invariant: `config` is written only by config_load(), before any thread
 * starts, and is read-only afterwards, so it needs no lock.
 */
#ifndef JARVAS_CONFIG_H
#define JARVAS_CONFIG_H

#include <stddef.h>

#define CONFIG_SECRET_MIN 32 /* bytes of key, from the file or the environment */
#define CONFIG_MODELS_MAX 32 /* names in JARVAS_MODELS */
#define CONFIG_MODEL_MAX 200 /* bytes of one model name */

enum config_secret_origin {
	CONFIG_SECRET_NONE,
	CONFIG_SECRET_ENV,    /* JARVAS_SECRET_KEY */
	CONFIG_SECRET_FILE,   /* state_dir/secret.key */
	CONFIG_SECRET_MEMORY, /* handed over across a reload; the file is gone */
};

struct config {
	const char *responder; /* "token", "chat", "chat_stream", "admin" */
	char *state_dir;
	char *db_path;		  /* state_dir/jarvas.db */
	char *metrics_dir;	  /* state_dir/metrics */
	char *streams_dir;	  /* state_dir/streams: journals, stop requests */
	char *secret_path;	  /* state_dir/secret.key */
	char *upstream_url;	  /* without trailing slash */
	char *upstream_api;	  /* "ollama" or "openai" (wire/) */
	char *upstream_api_key;	  /* sent as a Bearer token, never logged; NULL: none */
	char *upstream_ca_file;	  /* CA bundle for an https upstream; NULL: the system's */
	char *model;		  /* the default of models */
	char **models;		  /* what a request may pick (JARVAS_MODELS) */
	int nmodels;		  /* 1 .. CONFIG_MODELS_MAX */
	long long tokens_per_day; /* per user, prompt + completion; 0: no quota */
	char *system_prompt_file; /* NULL: built-in prompt */
	unsigned char *secret;	  /* JWT HMAC key */
	size_t secret_len;
	enum config_secret_origin secret_origin;
	int history_limit;
	long access_lifetime; /* seconds */
	long refresh_lifetime;
	long stream_ticket_lifetime;  /* seconds, for an unused stream ticket */
	int workers;		      /* threads per process */
	int streams_max;	      /* open streams per chat_stream process */
	int db_pool;		      /* SQLite connections per process */
	size_t stack_size;	      /* worker thread stack, bytes */
	size_t body_max;	      /* request body cap (413 past it) */
	size_t message_max;	      /* message cap in bytes (400 past it) */
	int upstream_connect_timeout; /* seconds */
	int upstream_idle_timeout;    /* seconds of upstream silence */
	int upstream_total_timeout;   /* seconds for /api/chat/ */
	int ping_interval;	      /* seconds between ": ping" comments */
	int stream_save_interval;     /* seconds between saves of a growing reply */
	int detach_grace;	      /* seconds a resumable stream waits for its client */
	int prompt_cache_ttl;	      /* seconds */
	int max_streams_per_user;
	int max_chats_per_user;	     /* non-stream chats in progress, across processes */
	int hash_concurrency;	     /* concurrent password hashes */
	int login_failures_per_user; /* attempts per address and username ... */
	int login_failures_per_addr; /* ... per address ... */
	int login_username_ceiling;  /* ... per username (see throttle.h) ... */
	int login_window;	     /* ... within this many seconds */
	int dev_upstream;	     /* upstream is tests/fake_ollama */
};

extern struct config config;

/* Fill `config` for `responder`.  `need_secret`: fail when there is no
 * key.  Returns 0, or -1 with a reason in err. */
int config_load(const char *responder, int need_secret, char *err, size_t errlen);
void config_free(void);

/* The index in config.models of a model name, or -1. */
int config_model_index(const char *name);

/* Before a reload's execv: hand the key to the new image in a sealed
 * memfd (not close-on-exec) named by _JARVAS_SECRET_FD, so that a
 * removed secret.key does not stop the reload; the new image's
 * config_load() takes it only when the file cannot be read.  0 or -1. */
int config_secret_handover(void);

/* The key file as it is on disk now against the key in use: 0 fine
 * (or the key is from the environment), 1 missing or changed, with what
 * to do in msg (for /api/health/). */
int config_secret_check(char *msg, size_t msglen);

#endif
