/*
 * config — read JARVAS_* variables into `config` (see config.h).
 * A malformed value is a startup error, never silently replaced by the
 * default: an operator who sets a number wants that number.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "log.h"
#include "wire/wire.h"

#define SECRET_FD_ENV "_JARVAS_SECRET_FD"

struct config config;

static const char *env_or(const char *name, const char *dflt)
{
	const char *v = getenv(name);

	return (v && *v) ? v : dflt;
}

static int env_int(const char *name, long dflt, long min, long max, long *out, char *err,
		   size_t errlen)
{
	const char *v = getenv(name);
	char *end;
	long n;

	if (!v || !*v) {
		*out = dflt;
		return 0;
	}
	errno = 0;
	n = strtol(v, &end, 10);
	if (errno || *end || n < min || n > max) {
		snprintf(err, errlen, "%s=%s: expected a whole number from %ld to %ld", name, v,
			 min, max);
		return -1;
	}
	*out = n;
	return 0;
}

static char *join_path(const char *dir, const char *name)
{
	struct buf b;

	buf_init(&b, 8192);
	if (buf_printf(&b, "%s/%s", dir, name) != BUF_OK) {
		buf_free(&b);
		return NULL;
	}
	return buf_steal(&b);
}

/* The key file holds 64 hex characters; the key is those characters
 * themselves, so every tool (and the tests) can use it as written.
 * *key is malloc'd (caller frees); 0, or -1 with the reason in err. */
static int read_key_file(unsigned char **key, size_t *len, char *err, size_t errlen)
{
	FILE *f = fopen(config.secret_path, "r");
	char line[256];
	size_t n;

	if (!f) {
		snprintf(err, errlen, "cannot read %s: %s", config.secret_path, strerror(errno));
		return -1;
	}
	if (!fgets(line, sizeof line, f))
		line[0] = '\0';
	fclose(f);
	n = strcspn(line, "\r\n");
	if (n < CONFIG_SECRET_MIN) {
		snprintf(err, errlen, "%s: key too short (at least %d characters)",
			 config.secret_path, CONFIG_SECRET_MIN);
		sodium_memzero(line, sizeof line);
		return -1;
	}
	*key = malloc(n);
	if (!*key) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	memcpy(*key, line, n);
	*len = n;
	sodium_memzero(line, sizeof line);
	return 0;
}

/* The key a reloading image handed over (config_secret_handover()): a
 * sealed memfd whose number is in _JARVAS_SECRET_FD.  Read, then closed
 * and the variable removed whatever it held, so neither outlives startup.
 * 1 with *key set (malloc'd), 0 when there is none usable. */
static int take_handover(unsigned char **key, size_t *len)
{
	const char *v = getenv(SECRET_FD_ENV);
	char *end;
	long fd;
	struct stat st;
	int seals, rc = 0;

	if (!v)
		return 0;
	errno = 0;
	fd = strtol(v, &end, 10);
	unsetenv(SECRET_FD_ENV);
	if (errno || end == v || *end || fd < 3 || fd > 0x7fffffffL)
		return 0;
	/* Only a sealed memfd is ours: never read a key from a stray fd. */
	seals = fcntl((int)fd, F_GET_SEALS);
	if (seals < 0 || !(seals & F_SEAL_WRITE) || fstat((int)fd, &st) < 0 ||
	    st.st_size < CONFIG_SECRET_MIN || st.st_size > 4096)
		goto out;
	*key = malloc((size_t)st.st_size);
	if (*key && pread((int)fd, *key, (size_t)st.st_size, 0) == st.st_size) {
		*len = (size_t)st.st_size;
		rc = 1;
	} else {
		free(*key);
		*key = NULL;
	}
out:
	if (seals >= 0)
		close((int)fd);
	return rc;
}

/* The key, in order: JARVAS_SECRET_KEY, the key file, the key handed
 * over by the image before a reload (the file was removed meanwhile:
 * loudly, every reload, and in /api/health/). */
static int load_secret(int need_secret, char *err, size_t errlen)
{
	const char *env = getenv("JARVAS_SECRET_KEY");
	unsigned char *handed = NULL;
	size_t handed_len = 0;
	char why[512];
	int have_handed = take_handover(&handed, &handed_len);

	if (env && *env) {
		free(handed);
		if (strlen(env) < CONFIG_SECRET_MIN) {
			snprintf(err, errlen,
				 "JARVAS_SECRET_KEY: too short (%zu bytes, at least %d)",
				 strlen(env), CONFIG_SECRET_MIN);
			return -1;
		}
		config.secret_len = strlen(env);
		config.secret = malloc(config.secret_len);
		if (!config.secret) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		memcpy(config.secret, env, config.secret_len);
		config.secret_origin = CONFIG_SECRET_ENV;
		return 0;
	}
	if (!need_secret) {
		free(handed);
		return 0;
	}
	if (read_key_file(&config.secret, &config.secret_len, why, sizeof why) == 0) {
		if (have_handed) {
			sodium_memzero(handed, handed_len);
			free(handed);
		}
		config.secret_origin = CONFIG_SECRET_FILE;
		return 0;
	}
	if (!have_handed) {
		snprintf(err, errlen, "%s (run jarvas-admin init)", why);
		return -1;
	}
	config.secret = handed;
	config.secret_len = handed_len;
	config.secret_origin = CONFIG_SECRET_MEMORY;
	log_error("SECRET KEY FILE MISSING: %s; serving with the key the previous image handed "
		  "over in memory. Restore the file, or make a new key on purpose with "
		  "`jarvasctl new-key` (every token then becomes invalid); a stop or crash "
		  "without the file loses the key.",
		  why);
	return 0;
}

int config_secret_handover(void)
{
	char num[16];
	int fd;

	if (config.secret_origin == CONFIG_SECRET_ENV || !config.secret)
		return 0; /* the environment survives exec by itself */
	/* Not close-on-exec: it must reach the new image; the fd number
	 * travels in the environment, the key never does. */
	fd = memfd_create("jarvas-secret", MFD_ALLOW_SEALING);
	if (fd < 0)
		return -1;
	if (write(fd, config.secret, config.secret_len) != (ssize_t)config.secret_len ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
		close(fd);
		return -1;
	}
	snprintf(num, sizeof num, "%d", fd);
	if (setenv(SECRET_FD_ENV, num, 1) < 0) {
		close(fd);
		return -1;
	}
	return 0;
}

int config_secret_check(char *msg, size_t msglen)
{
	unsigned char *key = NULL;
	size_t len = 0;
	char why[512];
	int rc = 0;

	if (config.secret_origin == CONFIG_SECRET_ENV)
		return 0;
	if (read_key_file(&key, &len, why, sizeof why) < 0) {
		snprintf(msg, msglen,
			 "missing: %s; serving with the key kept in memory across reloads. Restore "
			 "the file, or run `jarvasctl new-key` (every token then becomes invalid)",
			 why);
		return 1;
	}
	if (len != config.secret_len || sodium_memcmp(key, config.secret, len) != 0) {
		snprintf(msg, msglen,
			 "changed: %s holds another key than the one in use; `jarvasctl restart` "
			 "switches to it (every token then becomes invalid)",
			 config.secret_path);
		rc = 1;
	}
	sodium_memzero(key, len);
	free(key);
	return rc;
}

/* Per-responder thread count: JARVAS_WORKERS_<NAME>, upper-cased. */
static int responder_int(const char *prefix, const char *responder, long dflt, long max, long *out,
			 char *err, size_t errlen)
{
	char name[64];
	size_t i, p = strlen(prefix);

	if (p + strlen(responder) + 1 > sizeof name)
		return env_int(prefix, dflt, 1, max, out, err, errlen);
	memcpy(name, prefix, p);
	for (i = 0; responder[i]; i++) {
		char c = responder[i];
		name[p + i] = (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
	}
	name[p + i] = '\0';
	return env_int(name, dflt, 1, max, out, err, errlen);
}

/* Open streams one process can hold: each takes two descriptors (the
 * FastCGI connection and the upstream one); keep room for the workers'
 * connections, the database and the logs. */
static long streams_default(int workers)
{
	struct rlimit rl;
	long n;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return 10000;
	n = ((long)rl.rlim_cur - 2L * workers - 64) / 2;
	return n < 1 ? 1 : n > 100000 ? 100000 : n;
}

/* One name of JARVAS_MODELS, as it goes upstream: 1-200 bytes of
 * printable ASCII without spaces or commas. */
static int model_name_ok(const char *s, size_t n)
{
	size_t i;

	if (n == 0 || n > CONFIG_MODEL_MAX)
		return 0;
	for (i = 0; i < n; i++)
		if (s[i] <= ' ' || s[i] > '~' || s[i] == ',')
			return 0;
	return 1;
}

static int add_model(const char *s, size_t n, char *err, size_t errlen)
{
	char **grown;
	int i;

	if (!model_name_ok(s, n)) {
		snprintf(err, errlen,
			 "JARVAS_MODELS: \"%.*s\" is not a model name (1-%d printable characters, "
			 "no spaces)",
			 (int)(n > 64 ? 64 : n), s, CONFIG_MODEL_MAX);
		return -1;
	}
	for (i = 0; i < config.nmodels; i++)
		if (strlen(config.models[i]) == n && memcmp(config.models[i], s, n) == 0)
			return 0; /* named twice: once is enough */
	if (config.nmodels == CONFIG_MODELS_MAX) {
		snprintf(err, errlen, "JARVAS_MODELS: at most %d models", CONFIG_MODELS_MAX);
		return -1;
	}
	grown = realloc(config.models, (size_t)(config.nmodels + 1) * sizeof *grown);
	if (!grown || !(grown[config.nmodels] = strndup(s, n))) {
		if (grown)
			config.models = grown;
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	config.models = grown;
	config.nmodels++;
	return 0;
}

/* JARVAS_MODELS (comma list, spaces around names ignored) and the
 * default, JARVAS_MODEL: without JARVAS_MODELS the default alone; without
 * JARVAS_MODEL the first of the list.  0 or -1. */
static int load_models(char *err, size_t errlen)
{
	const char *list = env_or("JARVAS_MODELS", NULL), *one = env_or("JARVAS_MODEL", NULL);
	const char *p = list;

	while (p && *p) {
		const char *end = strchr(p, ','), *a = p, *b;

		b = end ? end : p + strlen(p);
		while (a < b && (*a == ' ' || *a == '\t'))
			a++;
		while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
			b--;
		if (b > a && add_model(a, (size_t)(b - a), err, errlen) < 0)
			return -1;
		p = end ? end + 1 : b + strlen(b);
	}
	if (!one)
		one = config.nmodels ? config.models[0] : "llama3.2";
	if (!model_name_ok(one, strlen(one))) {
		snprintf(err, errlen,
			 "JARVAS_MODEL: not a model name (1-%d printable characters, "
			 "no spaces or commas)",
			 CONFIG_MODEL_MAX);
		return -1;
	}
	if (list && config_model_index(one) < 0) {
		snprintf(err, errlen, "JARVAS_MODEL=%s is not one of JARVAS_MODELS", one);
		return -1;
	}
	if (!list && add_model(one, strlen(one), err, errlen) < 0)
		return -1;
	config.model = config.models[config_model_index(one)];
	return 0;
}

int config_model_index(const char *name)
{
	int i;

	for (i = 0; i < config.nmodels; i++)
		if (strcmp(config.models[i], name) == 0)
			return i;
	return -1;
}

/* JARVAS_UPSTREAM_API, _API_KEY, _CA_FILE.  0 or -1. */
static int load_upstream(char *err, size_t errlen)
{
	const char *api = env_or("JARVAS_UPSTREAM_API", "ollama");
	const char *key = env_or("JARVAS_UPSTREAM_API_KEY", NULL);
	const char *ca = env_or("JARVAS_UPSTREAM_CA_FILE", NULL);
	size_t i;

	if (!wire_find(api)) {
		snprintf(err, errlen, "JARVAS_UPSTREAM_API=%s: expected ollama or openai", api);
		return -1;
	}
	/* The key goes into a header line: no line breaks or controls. */
	for (i = 0; key && key[i]; i++)
		if ((unsigned char)key[i] < ' ' || key[i] == 0x7f) {
			snprintf(err, errlen, "JARVAS_UPSTREAM_API_KEY: holds a control character");
			return -1;
		}
	config.upstream_api = strdup(api);
	config.upstream_api_key = key ? strdup(key) : NULL;
	config.upstream_ca_file = ca ? strdup(ca) : NULL;
	if (!config.upstream_api || (key && !config.upstream_api_key) ||
	    (ca && !config.upstream_ca_file)) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	return 0;
}

int config_load(const char *responder, int need_secret, char *err, size_t errlen)
{
	const char *state, *url, *prompt;
	long n, workers_default;
	size_t ulen;

	memset(&config, 0, sizeof config);
	config.responder = responder;

	state = env_or("JARVAS_STATE_DIR", "var");
	config.state_dir = strdup(state);
	url = env_or("JARVAS_UPSTREAM_URL", "http://127.0.0.1:11434");
	config.upstream_url = strdup(url);
	if (load_upstream(err, errlen) < 0 || load_models(err, errlen) < 0)
		return -1;
	prompt = env_or("JARVAS_SYSTEM_PROMPT_FILE", NULL);
	config.system_prompt_file = prompt ? strdup(prompt) : NULL;
	config.db_path = join_path(state, "jarvas.db");
	config.metrics_dir = join_path(state, "metrics");
	config.streams_dir = join_path(state, "streams");
	config.secret_path = join_path(state, "secret.key");
	if (!config.state_dir || !config.upstream_url || (prompt && !config.system_prompt_file) ||
	    !config.db_path || !config.metrics_dir || !config.streams_dir || !config.secret_path) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	ulen = strlen(config.upstream_url);
	while (ulen > 0 && config.upstream_url[ulen - 1] == '/')
		config.upstream_url[--ulen] = '\0';

#define INT_SETTING(var, name, dflt, min, max)                                                     \
	do {                                                                                       \
		if (env_int(name, dflt, min, max, &n, err, errlen) < 0)                            \
			return -1;                                                                 \
		var = n;                                                                           \
	} while (0)

	INT_SETTING(config.history_limit, "JARVAS_HISTORY_LIMIT", 12, 0, 1000);
	INT_SETTING(config.access_lifetime, "JARVAS_ACCESS_LIFETIME", 300, 1, 365L * 86400);
	INT_SETTING(config.refresh_lifetime, "JARVAS_REFRESH_LIFETIME", 86400, 1, 3650L * 86400);
	INT_SETTING(config.stream_ticket_lifetime, "JARVAS_STREAM_TICKET_LIFETIME", 60, 1, 3600);
	INT_SETTING(config.db_pool, "JARVAS_DB_POOL", 16, 1, 256);
	INT_SETTING(config.stack_size, "JARVAS_STACK_KIB", 256, 64, 65536);
	config.stack_size *= 1024;
	INT_SETTING(config.body_max, "JARVAS_BODY_MAX", 1024 * 1024, 1024, 64L * 1024 * 1024);
	INT_SETTING(config.message_max, "JARVAS_MESSAGE_MAX", 16 * 1024, 1, 16L * 1024 * 1024);
	INT_SETTING(config.upstream_connect_timeout, "JARVAS_UPSTREAM_CONNECT_TIMEOUT", 5, 1, 600);
	INT_SETTING(config.upstream_idle_timeout, "JARVAS_UPSTREAM_IDLE_TIMEOUT", 120, 1, 86400);
	INT_SETTING(config.upstream_total_timeout, "JARVAS_UPSTREAM_TOTAL_TIMEOUT", 600, 1, 86400);
	INT_SETTING(config.ping_interval, "JARVAS_PING_INTERVAL", 15, 1, 3600);
	INT_SETTING(config.stream_save_interval, "JARVAS_STREAM_SAVE_INTERVAL", 3, 1, 3600);
	INT_SETTING(config.detach_grace, "JARVAS_DETACH_GRACE", 60, 0, 3600);
	INT_SETTING(config.prompt_cache_ttl, "JARVAS_PROMPT_CACHE_TTL", 3600, 1, 365L * 86400);
	INT_SETTING(config.max_streams_per_user, "JARVAS_MAX_STREAMS_PER_USER", 4, 1, 100000);
	INT_SETTING(config.max_chats_per_user, "JARVAS_MAX_CHATS_PER_USER", 4, 1, 100000);
	INT_SETTING(config.hash_concurrency, "JARVAS_HASH_CONCURRENCY", 2, 1, 64);
	INT_SETTING(config.login_failures_per_user, "JARVAS_LOGIN_FAILURES_PER_USER", 10, 1,
		    1000000);
	INT_SETTING(config.login_failures_per_addr, "JARVAS_LOGIN_FAILURES_PER_ADDR", 50, 1,
		    1000000);
	/* Ten addresses' worth of the per-address-and-username limit. */
	INT_SETTING(config.login_username_ceiling, "JARVAS_LOGIN_USERNAME_CEILING",
		    10L * config.login_failures_per_user, 1, 10000000);
	INT_SETTING(config.login_window, "JARVAS_LOGIN_WINDOW", 900, 1, 86400);
	INT_SETTING(config.dev_upstream, "JARVAS_DEV_UPSTREAM", 0, 0, 1);
	INT_SETTING(config.tokens_per_day, "JARVAS_TOKENS_PER_DAY", 0, 0, 1000000000000L);
#undef INT_SETTING

	/* A stream holds a thread only while it is set up (relay.c). */
	workers_default = strcmp(responder, "chat_stream") == 0 ? 16
			  : strcmp(responder, "chat") == 0	? 16
								: 8;
	if (responder_int("JARVAS_WORKERS_", responder, workers_default, 100000, &n, err, errlen) <
	    0)
		return -1;
	config.workers = (int)n;
	if (env_int("JARVAS_STREAMS_MAX", streams_default(config.workers), 1, 1000000, &n, err,
		    errlen) < 0)
		return -1;
	config.streams_max = (int)n;

	return load_secret(need_secret, err, errlen);
}

void config_free(void)
{
	free(config.state_dir);
	free(config.db_path);
	free(config.metrics_dir);
	free(config.streams_dir);
	free(config.secret_path);
	free(config.upstream_url);
	free(config.upstream_api);
	if (config.upstream_api_key)
		sodium_memzero(config.upstream_api_key, strlen(config.upstream_api_key));
	free(config.upstream_api_key);
	free(config.upstream_ca_file);
	while (config.nmodels > 0)
		free(config.models[--config.nmodels]);
	free(config.models); /* config.model is one of them */
	free(config.system_prompt_file);
	if (config.secret)
		sodium_memzero(config.secret, config.secret_len);
	free(config.secret);
	memset(&config, 0, sizeof config);
}
