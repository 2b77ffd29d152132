/*
 * server — worker threads, pre-forked processes, routing and shutdown
 * (see server.h).
 *
 * Accepting: a worker accepts a connection itself, in its turn, and only
 * then lets libfcgi read the request from it (accept_connection()), so a
 * peer that stalls mid-record holds one worker, for PEER_TIMEOUT_S at
 * most, and never the accept path.
 *
 * Shutdown: SIGTERM (stop) or SIGHUP (reload) sets `stopping`; the worker
 * blocked in accept() is woken with SIGUSR1 (installed without
 * SA_RESTART, so accept() fails with EINTR).  Busy
 * workers finish their request first; then relay_stop() ends the open
 * streams with an error event (they notice server_stopping()).
 *
 * Reload (SIGHUP, `jarvasctl restart`): after that drain the process
 * re-executes its binary, keeping the listening socket on fd 0 and its
 * pid.  Connections that arrive meanwhile wait in the socket's backlog,
 * so none is refused, and a new binary on disk takes over.  The signing
 * key travels to the new image in a memfd (config_secret_handover()), so
 * a secret.key removed meanwhile does not stop it from starting.
 */
#include "server.h"

#include <errno.h>
#include <fastcgi.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "db.h"
#include "generations.h"
#include "journal.h"
#include "limits.h"
#include "log.h"
#include "metrics.h"
#include "password.h"
#include "relay.h"
#include "response.h"
#include "upstream.h"

static volatile sig_atomic_t stopping;
static const struct server_spec *spec; /* set before threads start */

struct worker_slot {
	pthread_t thread;
	struct worker w;
	pthread_cond_t turn; /* signalled when this worker may accept */
	int idle;	     /* atomic: blocked (or about to block) in accept */
	int exited;	     /* atomic */
};

/* One worker at a time waits in accept(); the others wait on a stack, and
 * the one that finished its request last is the next to accept.  Plain
 * accept() would hand connections round-robin to every thread in turn, so
 * that each of hundreds of threads has its stack, heap and curl handle
 * cold; a stack keeps a few warm ones busy.  Guarded by turns.lock. */
static struct {
	pthread_mutex_t lock;
	int accepting;		      /* a worker is in accept() */
	struct worker_slot **waiting; /* stack, top at n - 1 */
	int n;
} turns = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Wait until it is this worker's turn to accept.  0, or -1 when stopping. */
static int take_turn(struct worker_slot *slot)
{
	pthread_mutex_lock(&turns.lock);
	while (turns.accepting && !stopping) {
		turns.waiting[turns.n++] = slot;
		pthread_cond_wait(&slot->turn, &turns.lock);
	}
	turns.accepting = !stopping;
	pthread_mutex_unlock(&turns.lock);
	return stopping ? -1 : 0;
}

/* Done accepting: wake the worker on top of the stack. */
static void pass_turn(void)
{
	pthread_mutex_lock(&turns.lock);
	turns.accepting = 0;
	if (turns.n > 0)
		pthread_cond_signal(&turns.waiting[--turns.n]->turn);
	pthread_mutex_unlock(&turns.lock);
}

/* Stopping: wake everybody waiting for a turn. */
static void wake_all(void)
{
	pthread_mutex_lock(&turns.lock);
	while (turns.n > 0)
		pthread_cond_signal(&turns.waiting[--turns.n]->turn);
	pthread_mutex_unlock(&turns.lock);
}

int server_stopping(void)
{
	return stopping;
}

static void on_wake(int sig)
{
	(void)sig; /* only interrupts accept() */
}

/* Does path match the route's (see struct route)?  *segment: what the
 * route's "*" segment matched, else NULL. */
static int route_matches(const char *route, const char *path, const char **segment)
{
	size_t n = strlen(route);
	const char *seg;

	*segment = NULL;
	if (n < 2 || route[n - 2] != '/' || route[n - 1] != '*')
		return strcmp(route, path) == 0;
	if (strncmp(route, path, n - 1) != 0)
		return 0;
	seg = path + n - 1;
	if (!*seg || strchr(seg, '/'))
		return 0;
	*segment = seg;
	return 1;
}

static void dispatch(struct request *r)
{
	const struct route *rt = NULL;
	handler_fn h = NULL;
	char allow[64];
	int i;

	for (i = 0; i < spec->nroutes; i++)
		if (route_matches(spec->routes[i].path, r->path, &r->segment)) {
			rt = &spec->routes[i];
			break;
		}
	if (!rt) {
		resp_not_found(r);
		return;
	}
	r->endpoint = rt->endpoint;
	if (strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0)
		h = rt->get;
	else if (strcmp(r->method, "POST") == 0)
		h = rt->post;
	else if (strcmp(r->method, "DELETE") == 0)
		h = rt->delete_;
	else if (strcmp(r->method, "PATCH") == 0)
		h = rt->patch;
	if (h) {
		h(r);
		return;
	}
	snprintf(allow, sizeof allow, "%s%s%s%sOPTIONS", rt->get ? "GET, HEAD, " : "",
		 rt->post ? "POST, " : "", rt->patch ? "PATCH, " : "",
		 rt->delete_ ? "DELETE, " : "");
	if (strcmp(r->method, "OPTIONS") == 0) {
		char headers[96];

		snprintf(headers, sizeof headers, "Allow: %s\r\n", allow);
		resp_json_text(r, 200,
			       "{\"renders\": [\"application/json\"], \"parses\": "
			       "[\"application/json\", \"application/x-www-form-urlencoded\"]}",
			       headers);
		return;
	}
	resp_method_not_allowed(r, allow);
}

/* How long a FastCGI peer may take to send a request's records, or to
 * take a response's bytes, before the worker gives up on it.  nginx sends
 * a request's records at once and reads as it goes; only a stalled peer
 * ever waits this long, and it holds one worker, never the accept path. */
#define PEER_TIMEOUT_S 10

/* Wait for this worker's turn, then accept one connection.  The fd, or -1
 * when stopping.  Only accept() runs in the turn: libfcgi's own
 * FCGX_Accept_r also reads the request's records there, so one peer that
 * connected and stalled would stop the whole responder. */
static int accept_connection(struct worker_slot *slot)
{
	int fd = -1;

	while (fd < 0) {
		if (take_turn(slot) < 0)
			return -1;
		__atomic_store_n(&slot->idle, 1, __ATOMIC_SEQ_CST);
		fd = stopping ? -1 : accept4(FCGI_LISTENSOCK_FILENO, NULL, NULL, SOCK_CLOEXEC);
		__atomic_store_n(&slot->idle, 0, __ATOMIC_SEQ_CST);
		pass_turn();
		if (fd < 0 && !stopping && errno != EINTR && errno != ECONNABORTED &&
		    errno != EAGAIN) {
			struct timespec pause = {0, 100 * 1000 * 1000};

			/* Out of descriptors or memory: let requests in flight end. */
			log_warn("accept: %s", strerror(errno));
			nanosleep(&pause, NULL);
		}
		if (stopping) {
			if (fd >= 0)
				close(fd);
			return -1;
		}
	}
	return fd;
}

static void *worker_main(void *arg)
{
	struct worker_slot *slot = arg;
	struct worker *w = &slot->w;
	struct request r;

	/* No listening socket of its own: accept_connection() hands each
	 * connection in, so libfcgi never accepts (or waits) by itself. */
	if (FCGX_InitRequest(&w->fcgx, -1, 0) != 0) {
		log_error("FCGX_InitRequest failed");
		goto out;
	}
	while (!stopping) {
		int fd = -1;

		/* A connection nginx asked to keep open carries the next request. */
		if (w->fcgx.ipcFd < 0 && (fd = accept_connection(slot)) < 0)
			break;
		if (request_accept(&w->fcgx, fd, PEER_TIMEOUT_S * 1000) < 0)
			continue;
		request_begin(&r, &w->fcgx, w);
		dispatch(&r);
		request_end(&r);
		FCGX_Finish_r(&w->fcgx);
	}
	FCGX_Free(&w->fcgx, 1);
out:
	upstream_free(w->upstream);
	w->upstream = NULL;
	__atomic_store_n(&slot->exited, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

/* Run the worker threads of one process until SIGTERM or SIGHUP; 0 or -1.
 * *reload: the signal was SIGHUP. */
static int run_workers(int *reload)
{
	struct worker_slot *slots;
	pthread_attr_t attr;
	sigset_t set;
	int i, started = 0, sig, rc = 0;

	slots = calloc((size_t)config.workers, sizeof *slots);
	turns.waiting = calloc((size_t)config.workers, sizeof *turns.waiting);
	if (!slots || !turns.waiting) {
		free(slots);
		free(turns.waiting);
		return -1;
	}
	/* Workers inherit this mask: only the main thread takes SIGTERM. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, config.stack_size);
	for (i = 0; i < config.workers; i++) {
		slots[i].w.id = i;
		pthread_cond_init(&slots[i].turn, NULL);
		if (pthread_create(&slots[i].thread, &attr, worker_main, &slots[i]) != 0) {
			log_error("cannot start worker %d: %s", i, strerror(errno));
			rc = -1;
			break;
		}
		started++;
	}
	pthread_attr_destroy(&attr);
	log_info("ready: %d workers, pid %d", started, (int)getpid());

	sig = SIGTERM;
	if (started > 0)
		while (sigwait(&set, &sig) != 0)
			;
	*reload = sig == SIGHUP;
	stopping = 1;
	FCGX_ShutdownPending();
	log_info("%s: waiting for requests in progress", *reload ? "reloading" : "stopping");
	for (;;) {
		int left = 0;
		struct timespec tick = {0, 50 * 1000 * 1000};

		wake_all();
		for (i = 0; i < started; i++) {
			if (__atomic_load_n(&slots[i].exited, __ATOMIC_SEQ_CST))
				continue;
			left++;
			if (__atomic_load_n(&slots[i].idle, __ATOMIC_SEQ_CST))
				pthread_kill(slots[i].thread, SIGUSR1);
		}
		if (!left)
			break;
		nanosleep(&tick, NULL);
	}
	for (i = 0; i < started; i++)
		pthread_join(slots[i].thread, NULL);
	for (i = 0; i < config.workers; i++)
		pthread_cond_destroy(&slots[i].turn);
	free(slots);
	free(turns.waiting);
	turns.waiting = NULL;
	turns.n = turns.accepting = 0;
	return rc;
}

/* Re-execute this program in place (see the top of this file).  Returns
 * only on failure. */
static void reexec(const char *self)
{
	sigset_t stop;
	char *const argv[] = {(char *)self, NULL};

	/* The new image starts with only the stop and reload signals blocked,
	 * as run_workers() wants them: one that arrives while it starts up
	 * (hashing the dummy password takes a while) stays pending for its
	 * sigwait() instead of killing it by its default action.  A mask and
	 * pending signals survive execv. */
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGHUP);
	sigprocmask(SIG_SETMASK, &stop, NULL);
	log_info("reloading: exec %s", self);
	execv(self, argv);
	log_error("reload failed: exec %s: %s", self, strerror(errno));
}

/* Replies left 'streaming' by a process that died (a restart after a
 * crash): interrupted, their conversations free again.  0 or -1. */
static int sweep_generations(void)
{
	struct db *d = db_acquire();
	int n = d ? generations_sweep(d) : -1;

	db_release(d);
	if (n > 0)
		log_info("%d generations of processes that died were marked interrupted", n);
	return n < 0 ? -1 : 0;
}

int server_main(const struct server_spec *s)
{
	struct sigaction sa;
	char err[512], self[4096];
	ssize_t n;
	int rc, reload = 0;

	spec = s;
	/* Keep freed memory in the process: glibc's default gives the top of
	 * each thread arena back after every request and faults it in again
	 * on the next (page faults and cross-CPU TLB flushes on the hot path).
	 * Bounded: only what a burst of requests used at once is kept. */
	mallopt(M_TRIM_THRESHOLD, 64 << 20);
	mallopt(M_MMAP_THRESHOLD, 4 << 20);
	/* The path, not /proc/self/exe, so a reload runs the binary now on disk. */
	n = readlink("/proc/self/exe", self, sizeof self - 1);
	self[n > 0 ? n : 0] = '\0';
	signal(SIGPIPE, SIG_IGN); /* a client gone is a failed write, not a death */
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_wake; /* no SA_RESTART: accept() must fail with EINTR */
	sigaction(SIGUSR1, &sa, NULL);

	if (config_load(s->name, 1, err, sizeof err) < 0) {
		fprintf(stderr, "%s: configuration: %s\n", s->name, err);
		return 1;
	}
	if (FCGX_Init() != 0) {
		log_error("FCGX_Init failed");
		return 1;
	}
	if (db_pool_init(config.db_path, config.db_pool) < 0 || upstream_global_init() < 0) {
		log_error("out of memory at startup");
		return 1;
	}
	if (s->uses_passwords && password_init(config.hash_concurrency) < 0) {
		log_error("libsodium initialisation failed");
		return 1;
	}
	if (metrics_open() < 0)
		log_warn("metrics unavailable in this process");
	if (db_checkpointer_start() < 0)
		log_warn("no checkpointer thread: the WAL is checkpointed by jarvas-admin init "
			 "only");
	if (s->streams)
		limits_open("streams", config.streams_max, config.max_streams_per_user);
	else if (s->chats) /* a chat holds a worker thread: one slot each */
		limits_open("chats", config.workers, config.max_chats_per_user);
	if (s->chats && journal_init() < 0) /* stop requests (relay.c does it for streams) */
		log_warn("POST /api/chat/stop/ cannot reach this process's chats");
	if ((s->streams || s->chats) && sweep_generations() < 0)
		log_warn("could not clear the generations of processes that died");
	if (s->streams && relay_start() < 0)
		return 1;
	rc = run_workers(&reload);
	if (s->streams)
		relay_stop(); /* after the workers: nothing submits any more */
	db_checkpointer_stop();
	limits_close();
	metrics_close();
	db_pool_free();
	upstream_global_cleanup();
	/* The key survives the reload even when secret.key is gone by now. */
	if (reload && rc == 0 && self[0] && config_secret_handover() < 0)
		log_error("reload: cannot hand the key over in memory (%s); the new image needs "
			  "%s",
			  strerror(errno), config.secret_path);
	config_free();
	if (reload && rc == 0 && self[0])
		reexec(self); /* returns only on failure */
	return rc == 0 && !reload ? 0 : 1;
}
