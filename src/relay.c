/*
 * relay — the event loop of chat_stream (see relay.h).
 *
 * A chunk's way: epoll reports the upstream socket readable →
 * curl_multi_socket_action() → curl's write callback (upstream.c) →
 * ndjson → on_content() below → sse_chunk() appends the event, framed as
 * an FCGI_STDOUT record, to the stream's `out` buffer → at the end of the
 * loop's turn, flush_dirty() sends each stream's buffer with one send():
 * lines that arrived together leave together, one write and one wakeup of
 * nginx instead of one per line.  What the socket does not take waits for
 * EPOLLOUT.
 *
 * A resumable stream's chunk is formatted once into relay.scratch, queued
 * to its journal (written with one write() at the end of the turn, like
 * `out`) and, while its client is there, to `out`.
 *
 * A stream's states, in order: STREAMING (its transfer is in the multi
 * handle), STORING (a store thread has it), CLOSING (its last bytes are
 * being written); a follower is FOLLOWING, then CLOSING.  The loop thread
 * owns a stream's socket side (fd, `out`, epoll) throughout; while STORING
 * a store thread owns its exchange, `tail` and journal (to_store() wrote
 * what was queued), and client_gone, which both read, is atomic.  Streams pass
 * between the threads through the queues guarded by relay.lock.
 *
 * History: the user message is stored before the stream reaches the
 * relay (exchange.c); every JARVAS_STREAM_SAVE_INTERVAL the loop copies
 * each reply as far as its client was sent it (`delivered`, from the
 * `marks` of the chunks still in `out`) into a save the store threads
 * write, all of one tick in one transaction; the end stores the rest.
 */
#include "relay.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "exchange.h"
#include "db.h"
#include "fcgi_wire.h"
#include "history.h"
#include "journal.h"
#include "limits.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "server.h"
#include "sse.h"
#include "upstream.h"

#define TICK_S 0.25		   /* pings, idle timeouts, shutdown checks */
#define PENDING_MAX (1u << 20)	   /* unsent bytes before a client counts as gone */
#define OUT_MAX (32u << 20)	   /* one event: a 4 MiB line, escaped */
#define MARKS_MAX (1u << 20)	   /* struct mark per chunk waiting in `out` */
#define CLOSE_GRACE_S 10.0	   /* to take the last event, then it is cut */
#define STORERS 2		   /* store threads */
#define IDLE_HANDLES 256	   /* curl handles kept for reuse */
#define EVENTS 256		   /* epoll events per wait */
#define DRAIN_MAX (256u << 10)	   /* client bytes read per event, then others' turn */
#define CURL_TAG (1ull << 63)	   /* epoll data of an upstream socket */
#define WAKE_TAG ((uint64_t)1)	   /* epoll data of the eventfd */
#define INOTIFY_TAG ((uint64_t)2)  /* epoll data of the inotify descriptor */
#define FOLLOW_BEHIND (256u << 10) /* a follower's unsent bytes before it waits */

/* STREAMING, STORING, CLOSING: a stream generating a reply.  FOLLOWING:
 * a client that reconnected, reading a journal (journal.h), then CLOSING. */
enum state { STREAMING, STORING, CLOSING, FOLLOWING };

struct mark {
	unsigned long long end; /* s->queued once the chunk's record is in `out` */
	size_t reply_len;	/* ex->reply.len with that chunk */
};

struct stream {
	struct stream *prev, *next;   /* relay.live: loop thread only */
	struct stream *qnext;	      /* in relay.incoming, .to_store or .settled */
	struct stream *dnext;	      /* in relay.dirty: loop thread only */
	struct stream *fprev, *fnext; /* in relay.finishing: loop thread only */
	int finishing;		      /* ... is in that list */
	int dirty;		      /* has bytes to send this turn */
	enum state state;
	int fd, request_id;
	int watched;	 /* fd is in the epoll set */
	int want_out;	 /* ... with EPOLLOUT */
	int in_multi;	 /* the transfer is in relay.multi */
	int client_gone; /* atomic: written by the loop, read by a store thread */
	int restarting;	 /* ended because the process stops */
	/* Resumable (the client asked for it, and its journal works): the
	 * client may leave, and the model goes on for config.detach_grace
	 * while nobody reads. */
	int resumable;
	double detached_at;	   /* the client left then, or 0 */
	int grace_expired;	   /* ... and nobody came back in time */
	int stop_requested;	   /* POST /api/chat/stop/ (journal.h) */
	struct journal_writer *jw; /* resumable: the journal written */
	/* A follower: the journal it reads, its inotify watch, its user slot. */
	struct journal_reader *jr;
	struct stream *lnext; /* in relay.followers */
	int wd, slot;
	char watched_path[64];
	long long user_id, message_id;
	struct exchange *ex; /* NULL for a follower */
	struct upstream_xfer x;
	struct buf out; /* bytes the socket has not taken yet */
	/* What the client was sent: `marks` holds, for each chunk still in
	 * `out`, where its record ends (in queued bytes) and the reply's
	 * length with it; `delivered` is that length of the last chunk the
	 * socket took whole.  History keeps no more than that of a stream
	 * whose client left. */
	struct buf marks; /* struct mark[], from marks_head on */
	size_t marks_head;
	unsigned long long queued, sent;
	size_t delivered;
	double saved_at; /* the reply went to history up to saved_len then */
	size_t saved_len;
	struct buf tail;  /* the last event and the end of the request */
	size_t tail_body; /* bytes of that event, for the log */
	int seq;
	double last_write, closing_since;

	/* The log line. */
	char *path;
	const char *method;
	double started_s;
	double first_chunk_ms;
	unsigned long long bytes;
	char note[128];
};

static struct {
	int epfd, evfd;
	CURLM *multi;
	double curl_deadline; /* < 0: curl wants no timeout */
	struct stream *live;  /* every stream the loop has taken in */
	struct stream *dirty; /* streams with new bytes in `out` this turn */
	/* Streams whose model sent its last line while the HTTP body is still
	 * open, oldest first: ended UPSTREAM_DONE_GRACE_S later if it stays. */
	struct stream *finishing, *finishing_tail;
	struct stream *followers; /* every FOLLOWING stream */
	int infd, streams_wd;	  /* inotify: stop requests, journals followed */
	struct buf scratch;	  /* an event formatted once for journal and client */
	pthread_t loop;
	pthread_t storers[STORERS];
	int nstorers;
	int quit; /* atomic: relay_stop() was called */
	int open; /* atomic: reserved places, submitted or not */

	pthread_mutex_t lock; /* guards the fields below */
	pthread_cond_t store_cond;
	struct stream *incoming, *to_store, *settled;
	struct save *to_save; /* replies in progress for history (tick()) */
	int storers_quit;
	CURL *idle[IDLE_HANDLES];
	int nidle;
} relay = {.epfd = -1,
	   .evfd = -1,
	   .infd = -1,
	   .lock = PTHREAD_MUTEX_INITIALIZER,
	   .store_cond = PTHREAD_COND_INITIALIZER};

static void wake_loop(void)
{
	uint64_t one = 1;
	ssize_t rc = write(relay.evfd, &one, sizeof one);

	(void)rc; /* the counter is already non-zero: the loop wakes anyway */
}

/* Append s to the queue at *head (relay.lock held).  Order does not
 * matter to anyone, so a stack will do. */
static void push(struct stream **head, struct stream *s)
{
	s->qnext = *head;
	*head = s;
}

static CURL *take_handle(void)
{
	CURL *c = NULL;

	pthread_mutex_lock(&relay.lock);
	if (relay.nidle > 0)
		c = relay.idle[--relay.nidle];
	pthread_mutex_unlock(&relay.lock);
	return c ? c : curl_easy_init();
}

static void give_handle(CURL *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&relay.lock);
	if (relay.nidle < IDLE_HANDLES) {
		relay.idle[relay.nidle++] = c;
		c = NULL;
	}
	pthread_mutex_unlock(&relay.lock);
	curl_easy_cleanup(c); /* NULL: kept */
}

/* --- the socket to nginx ------------------------------------------------ */

static void watch(struct stream *s, int want_out)
{
	struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = s};

	if (want_out)
		ev.events |= EPOLLOUT;
	if (epoll_ctl(relay.epfd, s->watched ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd, &ev) == 0) {
		s->watched = 1;
		s->want_out = want_out;
	}
}

static void unwatch(struct stream *s)
{
	if (s->watched)
		epoll_ctl(relay.epfd, EPOLL_CTL_DEL, s->fd, NULL);
	s->watched = s->want_out = 0;
}

/* The client is gone: no more writes, no more events from its socket. */
static void mark_gone(struct stream *s)
{
	__atomic_store_n(&s->client_gone, 1, __ATOMIC_RELEASE);
	unwatch(s);
	buf_free(&s->out);
}

static int gone(const struct stream *s)
{
	return __atomic_load_n(&s->client_gone, __ATOMIC_ACQUIRE);
}

static void mark_dirty(struct stream *s)
{
	if (s->dirty)
		return;
	s->dirty = 1;
	s->dnext = relay.dirty;
	relay.dirty = s;
}

/* The client stopped reading (PENDING_MAX bytes wait) or memory ran out. */
static void too_slow(struct stream *s)
{
	log_warn("stream of message %lld: the client stopped reading; dropping it", s->message_id);
	mark_gone(s);
}

/* Move `delivered` up to the last chunk whose record was sent whole. */
static void note_delivered(struct stream *s)
{
	const struct mark *m = (const struct mark *)(void *)s->marks.data;
	size_t n = s->marks.len / sizeof *m;

	while (s->marks_head < n && m[s->marks_head].end <= s->sent)
		s->delivered = m[s->marks_head++].reply_len;
	if (s->marks_head == n) { /* the usual case: all out, start over */
		buf_reset(&s->marks);
		s->marks_head = 0;
	}
}

/* Write what waits in `out`; keep the rest for EPOLLOUT.  0, or -1 when
 * the client is gone. */
static int flush_out(struct stream *s)
{
	ssize_t w;

	while (s->out.len > 0) {
		w = send(s->fd, s->out.data, s->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0 && (errno == EAGAIN || errno == EINTR))
			break;
		if (w < 0) {
			mark_gone(s);
			return -1;
		}
		buf_consume(&s->out, (size_t)w);
		s->sent += (unsigned long long)w;
	}
	note_delivered(s);
	if ((s->out.len > 0) != s->want_out)
		watch(s, s->out.len > 0);
	return 0;
}

/* A resumable stream's journal failed (logged): from here on it is as any
 * other, and what came before counts as its client's (no marks were
 * kept for it). */
static void journal_lost(struct stream *s)
{
	s->resumable = 0;
	s->delivered = s->ex->reply.len;
}

/* The end of a loop turn: send what every stream got during it. */
static void flush_dirty(void)
{
	struct stream *s;

	while ((s = relay.dirty) != NULL) {
		relay.dirty = s->dnext;
		s->dirty = 0;
		if (!gone(s))
			flush_out(s);
		if (s->jw && s->state == STREAMING && s->resumable && journal_flush(s->jw) < 0)
			journal_lost(s);
	}
}

/* Append body text to `out` as one FCGI_STDOUT record, sent at the end of
 * the turn.  format appends the body; 0, or -1 when the client is gone. */
static int queue_record(struct stream *s, int (*format)(struct buf *, const void *),
			const void *arg)
{
	long at;

	if (gone(s))
		return -1;
	if (s->out.len > PENDING_MAX) {
		too_slow(s);
		return -1;
	}
	at = fcgi_wire_stdout_begin(&s->out);
	if (at < 0 || format(&s->out, arg) < 0 ||
	    fcgi_wire_stdout_end(&s->out, at, s->request_id) < 0) {
		too_slow(s);
		return -1;
	}
	s->bytes += s->out.len - (size_t)at - FCGI_WIRE_HEADER;
	s->queued += s->out.len - (size_t)at;
	s->last_write = upstream_now();
	mark_dirty(s);
	return 0;
}

static int format_ping(struct buf *out, const void *arg)
{
	(void)arg;
	return buf_puts(out, SSE_PING) == BUF_OK ? 0 : -1;
}

/* nginx sent something, or closed.  It sends nothing after the request
 * but the rest of FCGI_STDIN may still come (a GET stream's body, or the
 * empty record ending stdin when the parameters filled libfcgi's buffer):
 * dropped.  The socket is non-blocking (relay_submit()), and one event
 * reads at most DRAIN_MAX, so no client input can hold the loop. */
static void on_client_event(struct stream *s, uint32_t events)
{
	if (events & EPOLLOUT && !gone(s) && flush_out(s) < 0)
		return;
	if (events & EPOLLIN && fcgi_wire_drain(s->fd, DRAIN_MAX) < 0) {
		mark_gone(s);
		return;
	}
	if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		mark_gone(s);
}

/* --- curl ------------------------------------------------------------------ */

struct piece {
	const struct stream *s;
	const char *text;
	size_t n;
};

static int format_chunk(struct buf *out, const void *arg)
{
	const struct piece *p = arg;

	return sse_chunk(out, p->s->ex->message_id, p->s->seq, p->text, p->n);
}

static int format_bytes(struct buf *out, const void *arg)
{
	const struct buf *b = arg;

	return buf_append(out, b->data, b->len) == BUF_OK ? 0 : -1;
}

/* A resumable stream's chunk: formatted once, into the journal and, when
 * its client is there, to it.  0, or -1 to stop the model. */
static int journal_chunk(struct stream *s, const struct piece *p)
{
	buf_reset(&relay.scratch);
	if (format_chunk(&relay.scratch, p) < 0 ||
	    journal_add(s->jw, JOURNAL_EVENT, s->seq, relay.scratch.data, relay.scratch.len) < 0)
		journal_lost(s);
	mark_dirty(s); /* the journal is written at the end of the turn */
	if (!gone(s) && relay.scratch.len > 0 && !buf_error(&relay.scratch))
		queue_record(s, format_bytes, &relay.scratch); /* a client lost is no reason */
	return gone(s) && !s->resumable ? -1 : 0;
}

/* A piece of the model's reply: one SSE event, then into the reply that
 * history will hold (only once it is on its way to the client). */
static int on_content(void *ctx, const char *text, size_t n)
{
	struct stream *s = ctx;
	struct exchange *ex = s->ex;
	struct piece p = {s, text, n};
	struct mark mark;

	if (gone(s) && !s->resumable)
		return -1;
	if (s->first_chunk_ms < 0) {
		s->first_chunk_ms = (upstream_now() - s->started_s) * 1e3;
		metrics_first_chunk(s->first_chunk_ms);
	}
	s->seq++;
	if (s->resumable) /* history keeps all of it: no marks needed */
		return journal_chunk(s, &p) < 0 || exchange_append_reply(ex, text, n) < 0 ? -1 : 0;
	if (queue_record(s, format_chunk, &p) < 0 || exchange_append_reply(ex, text, n) < 0) {
		return -1;
	}
	mark.end = s->queued;
	mark.reply_len = ex->reply.len;
	if (buf_append(&s->marks, &mark, sizeof mark) != BUF_OK) {
		too_slow(s); /* as for `out` itself */
		return -1;
	}
	return 0;
}

/* The model's last line: the stream is finished.  Its transfer normally
 * ends in the same read (the end of the chunked body follows the line);
 * if the body stays open, end_finished() ends it shortly. */
static void on_done(void *ctx)
{
	struct stream *s = ctx;

	if (s->finishing)
		return;
	s->finishing = 1;
	s->fnext = NULL;
	s->fprev = relay.finishing_tail;
	if (relay.finishing_tail)
		relay.finishing_tail->fnext = s;
	else
		relay.finishing = s;
	relay.finishing_tail = s;
}

static int on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct epoll_event ev = {.data.u64 = CURL_TAG | (uint64_t)(unsigned)fd};

	(void)e, (void)userp, (void)socketp;
	if (what == CURL_POLL_REMOVE) {
		epoll_ctl(relay.epfd, EPOLL_CTL_DEL, fd, NULL);
		return 0;
	}
	ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
	if (epoll_ctl(relay.epfd, EPOLL_CTL_MOD, fd, &ev) < 0 && errno == ENOENT &&
	    epoll_ctl(relay.epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		log_error("epoll_ctl on an upstream socket: %s", strerror(errno));
		return -1;
	}
	return 0;
}

static int on_timer(CURLM *m, long timeout_ms, void *userp)
{
	(void)m, (void)userp;
	relay.curl_deadline = timeout_ms < 0 ? -1 : upstream_now() + (double)timeout_ms / 1e3;
	return 0;
}

/* --- a stream's end --------------------------------------------------------- */

static void unlink_finishing(struct stream *s)
{
	if (!s->finishing)
		return;
	if (s->fprev)
		s->fprev->fnext = s->fnext;
	else
		relay.finishing = s->fnext;
	if (s->fnext)
		s->fnext->fprev = s->fprev;
	else
		relay.finishing_tail = s->fprev;
	s->fprev = s->fnext = NULL;
	s->finishing = 0;
}

/* curl's multi calls fail only on a bug of ours (a handle or socket it
 * does not know, a call from inside a callback) or out of memory: say
 * which, as curl words it.  A socket curl closed earlier in the same
 * epoll batch is not worth a line. */
static int multi_ok(CURLMcode rc, const char *what)
{
	if (rc != CURLM_OK && rc != CURLM_BAD_SOCKET)
		log_error("%s: %s", what, curl_multi_strerror(rc));
	return rc == CURLM_OK;
}

/* The transfer is over (finished, failed or stopped): history next. */
static void to_store(struct stream *s, CURLcode cc)
{
	unlink_finishing(s);
	if (s->in_multi) {
		/* A handle the multi would not let go of is never reused:
		 * leaking it is safer than sharing it. */
		if (!multi_ok(curl_multi_remove_handle(relay.multi, s->x.curl),
			      "curl_multi_remove_handle"))
			s->x.curl = NULL;
		s->in_multi = 0;
	}
	upstream_xfer_finish(&s->x, cc);
	/* The client left: keep what it was sent, not what was queued for it.
	 * (A client still there gets the rest, and history all of it; so do
	 * the readers of a resumable stream's journal.) */
	if (s->jw && s->resumable && journal_flush(s->jw) < 0)
		journal_lost(s); /* the store thread owns the journal from here */
	if (gone(s) && !s->resumable && s->delivered < s->ex->reply.len)
		exchange_truncate_reply(s->ex, s->delivered);
	s->state = STORING;
	pthread_mutex_lock(&relay.lock);
	push(&relay.to_store, s);
	pthread_cond_signal(&relay.store_cond);
	pthread_mutex_unlock(&relay.lock);
}

/* Stop a transfer from outside curl's callbacks. */
static void abort_transfer(struct stream *s)
{
	s->x.stopped = 1;
	to_store(s, CURLE_ABORTED_BY_CALLBACK);
}

static void free_stream(struct stream *s)
{
	if (s->ex) {
		exchange_end(s->ex);
		free(s->ex);
	}
	if (s->jw) {
		journal_remove(s->jw);
		free(s->jw);
	}
	if (s->jr) {
		journal_close(s->jr);
		free(s->jr);
	}
	if (s->slot >= 0)
		limits_leave(s->slot);
	give_handle(s->x.curl);
	upstream_xfer_free(&s->x);
	buf_free(&s->out);
	buf_free(&s->marks);
	buf_free(&s->tail);
	free(s->path);
	free(s);
}

/* A follower leaves relay.followers (and its inotify watch, unless
 * another follower shares it). */
static void unfollow(struct stream *s)
{
	struct stream **p;

	for (p = &relay.followers; *p; p = &(*p)->lnext)
		if (*p == s) {
			*p = s->lnext;
			break;
		}
	if (s->wd >= 0) {
		struct stream *f;

		for (f = relay.followers; f && f->wd != s->wd; f = f->lnext)
			;
		if (!f)
			inotify_rm_watch(relay.infd, s->wd);
		s->wd = -1;
	}
}

static void close_stream(struct stream *s)
{
	struct log_request_fields f = {
		.method = s->method,
		.path = s->path,
		.status = 200,
		.user_id = s->user_id,
		.first_chunk_ms = s->first_chunk_ms,
		.note = s->note,
	};
	double ms = (upstream_now() - s->started_s) * 1e3;

	if (s->dirty)
		flush_dirty(); /* not left behind in the list */
	unwatch(s);
	close(s->fd);
	if (s->prev)
		s->prev->next = s->next;
	else
		relay.live = s->next;
	if (s->next)
		s->next->prev = s->prev;
	if (s->jr)
		unfollow(s);
	if (gone(s))
		metrics_client_abort();
	metrics_stream_duration(ms);
	metrics_active_streams(-1);
	metrics_count_request(METRICS_EP_STREAM, 200);
	f.duration_ms = ms;
	f.bytes = s->bytes;
	log_request(&f);
	free_stream(s);
	relay_unreserve();
}

/* Stored: write the last event, then end the request. */
static void on_settled(struct stream *s)
{
	s->state = CLOSING;
	s->closing_since = upstream_now();
	if (!gone(s) && s->tail.len > 0) {
		if (buf_append(&s->out, s->tail.data, s->tail.len) != BUF_OK)
			too_slow(s);
		else if (flush_out(s) == 0)
			s->bytes += s->tail_body;
	}
	if (gone(s) || s->out.len == 0)
		close_stream(s);
}

/* How a generation ended: its stored status, the outcome in the log. */
static const char *final_status(const struct stream *s, const char **outcome)
{
	const struct exchange *ex = s->ex;

	if (ex->result.outcome == UPSTREAM_DONE)
		return *outcome = "done", "done";
	if (s->stop_requested)
		return *outcome = "stopped", "stopped";
	if (s->restarting)
		return *outcome = "restarting", "interrupted";
	if (ex->result.outcome == UPSTREAM_FAILED)
		return *outcome = "upstream_error", "failed";
	if (s->grace_expired)
		return *outcome = "detach_grace_expired", "interrupted";
	if (gone(s))
		return *outcome = "client_gone", "interrupted";
	return *outcome = "too_long", "failed"; /* stopped by us: the reply outgrew its buffer */
}

/* The event that ends a generation, for its client and its journal's
 * readers: done, or error with the reason.  0 or -1. */
static int final_event(struct buf *ev, const struct stream *s, const char *status, int stored)
{
	const struct exchange *ex = s->ex;
	long long id = ex->message_id;
	int seq = s->seq + 1; /* the last event's id follows the chunks' */

	if (!stored)
		return sse_error(ev, id, seq, "The reply could not be saved; please retry.");
	if (strcmp(status, "done") == 0 || strcmp(status, "stopped") == 0)
		return sse_done(ev, id, seq, ex->conversation, ex->model, &ex->result,
				strcmp(status, "stopped") == 0);
	if (s->restarting)
		return sse_error(ev, id, seq,
				 "The server is restarting; please retry in a moment.");
	if (ex->result.outcome == UPSTREAM_FAILED)
		return sse_error(ev, id, seq, ex->result.error);
	if (strcmp(status, "interrupted") == 0)
		return sse_error(ev, id, seq, SSE_INTERRUPTED);
	/* Never end a stream without done or error. */
	return sse_error(ev, id, seq, "The reply was too long and was stopped.");
}

/* A store thread's part: history, then the bytes that end the stream. */
static void settle(struct stream *s)
{
	struct exchange *ex = s->ex;
	const char *outcome, *status = final_status(s, &outcome);
	struct buf ev;
	int stored;
	long at;

	stored = exchange_store(ex, status,
				strcmp(status, "failed") == 0
					? (ex->result.outcome == UPSTREAM_FAILED
						   ? ex->result.error
						   : "The reply was too long and was stopped.")
					: NULL) == 0;
	/* The user's stream slot is free before the end reaches the client:
	 * one who opens the next stream on `done` must find it free. */
	exchange_release_slot(ex);
	buf_init(&ev, 64u << 10);
	if (final_event(&ev, s, status, stored) < 0)
		buf_reset(&ev); /* out of memory: the request still ends */
	if (s->jw) {		/* its readers get the end too, then the journal goes */
		if (ev.len > 0 && journal_add(s->jw, JOURNAL_END, s->seq + 1, ev.data, ev.len) == 0)
			journal_flush(s->jw);
		journal_remove(s->jw);
		free(s->jw);
		s->jw = NULL;
	}
	if (s->stop_requested)
		journal_clear_stop(ex->message_id);
	if (!gone(s) && ev.len > 0) {
		at = fcgi_wire_stdout_begin(&s->tail);
		if (at < 0 || buf_append(&s->tail, ev.data, ev.len) != BUF_OK ||
		    fcgi_wire_stdout_end(&s->tail, at, s->request_id) < 0)
			buf_reset(&s->tail);
		else
			s->tail_body = ev.len;
	}
	buf_free(&ev);
	if (fcgi_wire_end(&s->tail, s->request_id) < 0)
		buf_reset(&s->tail);
	snprintf(s->note, sizeof s->note, "outcome=%s%s%s message_id=%lld%s", outcome,
		 ex->result.outcome == UPSTREAM_FAILED ? " upstream_error=" : "",
		 ex->result.outcome == UPSTREAM_FAILED
			 ? metrics_upstream_error_name(ex->result.kind)
			 : "",
		 ex->message_id, s->resumable ? " resumable=1" : "");
}

/* A reply as far as its client has been sent it, for history while the
 * stream goes on (a copy: the loop keeps appending to the reply). */
struct save {
	struct save *next;
	long long user_msg_id, message_id, user_id;
	char conversation[CONVERSATION_ID_MAX + 1];
	size_t len;
	char text[];
};

static void free_saves(struct save *v)
{
	struct save *next;

	for (; v; v = next) {
		next = v->next;
		free(v);
	}
}

/* Every save of one tick in one write transaction.  A failure is only
 * logged: the final store still comes. */
static void write_saves(struct save *v)
{
	struct db *d = db_acquire();
	struct save *w;
	int rc = d && db_begin(d) == 0 ? 0 : -1;

	for (w = v; w && rc == 0; w = w->next) {
		struct history_reply rep = {.text = w->text, .len = w->len};

		rc = history_save_reply(d, w->user_msg_id, w->message_id, w->user_id,
					w->conversation, &rep, 1);
	}
	if (rc < 0 || db_commit(d) < 0)
		log_warn("saving replies in progress failed: %s", db_errmsg(d));
	db_release(d);
	free_saves(v);
}

static void *storer_main(void *arg)
{
	struct stream *s;
	struct save *v;

	(void)arg;
	for (;;) {
		pthread_mutex_lock(&relay.lock);
		while (!relay.to_store && !relay.to_save && !relay.storers_quit)
			pthread_cond_wait(&relay.store_cond, &relay.lock);
		v = relay.to_save;
		relay.to_save = NULL;
		s = v ? NULL : relay.to_store;
		if (s)
			relay.to_store = s->qnext;
		pthread_mutex_unlock(&relay.lock);
		if (v) {
			write_saves(v);
			continue;
		}
		if (!s)
			return NULL;
		settle(s);
		pthread_mutex_lock(&relay.lock);
		push(&relay.settled, s);
		pthread_mutex_unlock(&relay.lock);
		wake_loop();
	}
}

/* --- followers: clients that reconnected to a resumable stream -------------- */

/* Watch the segment s reads (inotify tells when it grows).  Without a
 * watch the tick still reads every TICK_S. */
static void watch_journal(struct stream *s)
{
	const char *rel = journal_reader_path(s->jr);
	char path[4096];
	struct stream *f;

	if (s->wd >= 0 && strcmp(rel, s->watched_path) == 0)
		return;
	if (s->wd >= 0) { /* one inode, one watch: shared by every follower of it */
		for (f = relay.followers; f && (f == s || f->wd != s->wd); f = f->lnext)
			;
		if (!f)
			inotify_rm_watch(relay.infd, s->wd);
		s->wd = -1;
	}
	if (relay.infd < 0 ||
	    snprintf(path, sizeof path, "%s/%s", config.streams_dir, rel) >= (int)sizeof path)
		return;
	s->wd = inotify_add_watch(relay.infd, path, IN_MODIFY);
	snprintf(s->watched_path, sizeof s->watched_path, "%s", rel);
}

static int format_gap(struct buf *out, const void *arg)
{
	const int *g = arg;

	return buf_printf(out,
			  "event: gap\ndata: {\"type\": \"gap\", \"from\": %d, \"to\": %d}\n\n",
			  g[0], g[1]) == BUF_OK
		       ? 0
		       : -1;
}

/* One record of the journal, for the follower's client. */
static int follow_record(void *ctx, int type, int seq, const char *bytes, size_t n)
{
	struct stream *s = ctx;
	struct buf b = {.data = (char *)bytes, .len = n};
	int gap[2];

	if (gone(s) || s->out.len > FOLLOW_BEHIND)
		return -1; /* EPOLLOUT reads on */
	if (type == 0) {
		gap[0] = seq;
		gap[1] = seq + (int)n - 1;
		return queue_record(s, format_gap, gap);
	}
	if (s->first_chunk_ms < 0)
		s->first_chunk_ms = (upstream_now() - s->started_s) * 1e3;
	return queue_record(s, format_bytes, &b);
}

struct ending {
	long long message_id;
	int seq;
	const char *message;
};

static int format_error(struct buf *out, const void *arg)
{
	const struct ending *e = arg;

	return sse_error(out, e->message_id, e->seq, e->message);
}

/* The follower's end: a last event (error text; NULL: the journal's END
 * was sent), then the end of the request once it is written. */
static void end_follower(struct stream *s, const char *error)
{
	struct ending e = {s->message_id, s->jr->after + 1, error};

	if (!gone(s) && error)
		queue_record(s, format_error, &e);
	snprintf(s->note, sizeof s->note, "outcome=%s message_id=%lld resumed=1",
		 error ? "journal_cut" : "done", s->message_id);
	unfollow(s);
	s->state = CLOSING;
	s->closing_since = upstream_now();
	if (!gone(s) && fcgi_wire_end(&s->out, s->request_id) < 0)
		too_slow(s);
	if (!gone(s))
		flush_out(s);
	if (gone(s) || s->out.len == 0)
		close_stream(s); /* else when EPOLLOUT has taken the rest */
}

/* Read what is new in the follower's journal. */
static void pump(struct stream *s)
{
	int rc;

	if (s->state != FOLLOWING)
		return;
	if (gone(s)) {
		close_stream(s);
		return;
	}
	rc = journal_read(s->jr, follow_record, s);
	if (rc == 1)
		end_follower(s, NULL);
	else if (rc < 0)
		end_follower(s, SSE_INTERRUPTED);
	else
		watch_journal(s); /* the segment may have changed */
}

/* inotify: a stop request (a name in streams/), or a journal followed grew. */
static void on_inotify(void)
{
	char events[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
	ssize_t n;

	while ((n = read(relay.infd, events, sizeof events)) > 0) {
		const char *p = events;

		while (p < events + n) {
			const struct inotify_event *e = (const void *)p;
			struct stream *f, *fnext;

			p += sizeof *e + e->len;
			if (e->wd == relay.streams_wd && e->len > 0) {
				long long id = journal_stop_name(e->name);

				for (f = id ? relay.live : NULL; f; f = f->next)
					if (f->state == STREAMING && f->ex->message_id == id) {
						f->stop_requested = 1;
						abort_transfer(f);
						break;
					}
				continue;
			}
			for (f = relay.followers; f; f = fnext) {
				fnext = f->lnext;
				if (f->wd != e->wd)
					continue;
				/* The file went (IN_IGNORED follows): the kernel may
				 * give its watch's number to another file. */
				if (e->mask & IN_IGNORED)
					f->wd = -1;
				pump(f);
			}
		}
	}
}

/* --- the loop ---------------------------------------------------------------- */

static void take_in(struct stream *s)
{
	s->next = relay.live;
	s->prev = NULL;
	if (relay.live)
		relay.live->prev = s;
	relay.live = s;
	s->last_write = upstream_now();
	watch(s, 0);
	if (!s->watched) {
		log_error("epoll_ctl on a FastCGI connection: %s", strerror(errno));
		mark_gone(s);
	}
	if (s->state == FOLLOWING) {
		s->lnext = relay.followers;
		relay.followers = s;
		if (server_stopping())
			end_follower(s, "The server is restarting; please retry in a moment.");
		else
			pump(s);
		return;
	}
	if (curl_multi_add_handle(relay.multi, s->x.curl) != CURLM_OK) {
		s->x.failed = 1;
		s->ex->result.kind = METRICS_UE_OTHER;
		snprintf(s->ex->result.error, sizeof s->ex->result.error,
			 "Out of memory starting the upstream request.");
		to_store(s, CURLE_OUT_OF_MEMORY);
		return;
	}
	s->in_multi = 1;
	if (server_stopping()) {
		s->restarting = 1;
		abort_transfer(s);
	} else if (journal_stop_requested(s->message_id)) {
		/* Asked before the relay watched for it. */
		s->stop_requested = 1;
		abort_transfer(s);
	}
}

/* The queues the other threads fill. */
static void drain_queues(void)
{
	struct stream *in, *done, *next;
	uint64_t n;
	ssize_t rc = read(relay.evfd, &n, sizeof n);

	(void)rc;
	pthread_mutex_lock(&relay.lock);
	in = relay.incoming;
	done = relay.settled;
	relay.incoming = relay.settled = NULL;
	pthread_mutex_unlock(&relay.lock);
	for (; in; in = next) {
		next = in->qnext;
		take_in(in);
	}
	for (; done; done = next) {
		next = done->qnext;
		on_settled(done);
	}
}

static void read_curl_messages(void)
{
	CURLMsg *m;
	int left;

	while ((m = curl_multi_info_read(relay.multi, &left)) != NULL) {
		struct upstream_xfer *x = NULL;

		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
		if (x) {
			struct stream *s =
				(struct stream *)((char *)x - offsetof(struct stream, x));

			if (s->state == STREAMING && s->in_multi)
				to_store(s, m->data.result);
		}
	}
}

/* Finished streams whose body did not end within the grace: done now. */
static void end_finished(double now)
{
	struct stream *s;

	while ((s = relay.finishing) != NULL && now - s->x.done_at >= UPSTREAM_DONE_GRACE_S)
		to_store(s, CURLE_OK); /* unlinks it */
}

/* A save of s's reply as its client has been sent it, when that grew
 * since the last one config.stream_save_interval ago; NULL otherwise. */
static struct save *save_of(struct stream *s, double now)
{
	struct save *v;

	size_t len = s->resumable ? s->ex->reply.len : s->delivered;

	if (now - s->saved_at < config.stream_save_interval || len <= s->saved_len)
		return NULL;
	v = malloc(sizeof *v + len + 1);
	if (!v)
		return NULL; /* the next tick tries again */
	v->user_msg_id = s->ex->user_msg_id;
	v->message_id = s->ex->message_id;
	v->user_id = s->ex->user.id;
	memcpy(v->conversation, s->ex->conversation, sizeof v->conversation);
	v->len = len;
	memcpy(v->text, s->ex->reply.data, v->len);
	v->text[v->len] = '\0';
	s->saved_at = now;
	s->saved_len = len;
	return v;
}

/* A resumable stream without its client: has nobody read its journal
 * for config.detach_grace? */
static int detach_over(struct stream *s, double now)
{
	if (journal_has_readers(s->jw) || s->detached_at == 0)
		s->detached_at = now; /* the grace runs while nobody reads */
	return now - s->detached_at >= config.detach_grace;
}

/* Every TICK_S: pings, idle upstreams, clients gone while nothing was
 * written, streams that will not take their last bytes, saves of replies
 * in progress, shutdown. */
static void tick(double now)
{
	int stopping = server_stopping();
	struct stream *s, *next;
	struct save *saves = NULL, *v;

	for (s = relay.live; s; s = next) {
		next = s->next;
		if (s->state == CLOSING) {
			if (now - s->closing_since > CLOSE_GRACE_S)
				close_stream(s);
			continue;
		}
		if (s->state == FOLLOWING) {
			if (stopping) {
				end_follower(s,
					     "The server is restarting; please retry in a moment.");
				continue;
			}
			if (!gone(s) && now - s->last_write >= config.ping_interval)
				queue_record(s, format_ping, NULL);
			pump(s); /* also when inotify could not watch */
			continue;
		}
		if (s->state != STREAMING)
			continue;
		if (stopping) {
			s->restarting = 1;
			abort_transfer(s);
		} else if (gone(s) && !s->resumable) {
			abort_transfer(s);
		} else if (gone(s) && detach_over(s, now)) {
			s->grace_expired = 1;
			abort_transfer(s);
		} else if (upstream_xfer_idle(&s->x, now)) {
			to_store(s, CURLE_OK);
		} else {
			if (!gone(s) && now - s->last_write >= config.ping_interval)
				queue_record(s, format_ping, NULL);
			if ((v = save_of(s, now)) != NULL) {
				v->next = saves;
				saves = v;
			}
		}
	}
	if (saves) {
		pthread_mutex_lock(&relay.lock);
		for (v = saves; v->next; v = v->next)
			;
		v->next = relay.to_save; /* a slow database: batches pile up, in order */
		relay.to_save = saves;
		pthread_cond_signal(&relay.store_cond);
		pthread_mutex_unlock(&relay.lock);
	}
}

static void *loop_main(void *arg)
{
	struct epoll_event ev[EVENTS];
	double next_tick = upstream_now() + TICK_S;
	int running;

	(void)arg;
	for (;;) {
		double now = upstream_now(), wait_s = next_tick - now;
		int n, i, timeout_ms, woken = 0, noticed = 0;

		if (relay.curl_deadline >= 0 && relay.curl_deadline - now < wait_s)
			wait_s = relay.curl_deadline - now;
		if (relay.finishing &&
		    relay.finishing->x.done_at + UPSTREAM_DONE_GRACE_S - now < wait_s)
			wait_s = relay.finishing->x.done_at + UPSTREAM_DONE_GRACE_S - now;
		timeout_ms = wait_s <= 0 ? 0 : (int)(wait_s * 1e3) + 1;
		n = epoll_wait(relay.epfd, ev, EVENTS, timeout_ms);
		if (n < 0 && errno != EINTR) {
			log_error("epoll_wait: %s", strerror(errno));
			n = 0;
		}
		for (i = 0; i < n; i++) {
			uint64_t tag = ev[i].data.u64;

			if (tag == WAKE_TAG) {
				woken = 1;
			} else if (tag == INOTIFY_TAG) {
				noticed = 1;
			} else if (tag & CURL_TAG) {
				int flags = (ev[i].events & EPOLLIN ? CURL_CSELECT_IN : 0) |
					    (ev[i].events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
					    (ev[i].events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR
										  : 0);

				multi_ok(curl_multi_socket_action(
						 relay.multi, (curl_socket_t)(tag & 0xffffffffu),
						 flags, &running),
					 "curl_multi_socket_action");
			} else {
				struct stream *s = ev[i].data.ptr;

				on_client_event(s, ev[i].events);
				/* Noticed now, while the model may be silent: stop it. */
				if (gone(s) && s->state == STREAMING && !s->resumable)
					abort_transfer(s);
				else if (s->state == FOLLOWING)
					pump(s); /* gone: closed; room again: reads on */
				else if (s->state == CLOSING && (gone(s) || s->out.len == 0))
					close_stream(s);
			}
		}
		/* After the batch: settling may close streams, and a closed
		 * stream's own event may still be further down the batch. */
		if (woken)
			drain_queues();
		if (noticed)
			on_inotify(); /* after the batch too: it may close followers */
		now = upstream_now();
		if (relay.curl_deadline >= 0 && now >= relay.curl_deadline) {
			relay.curl_deadline = -1;
			multi_ok(curl_multi_socket_action(relay.multi, CURL_SOCKET_TIMEOUT, 0,
							  &running),
				 "curl_multi_socket_action (timeout)");
		}
		read_curl_messages();
		end_finished(now);
		if (now >= next_tick) {
			tick(now);
			next_tick = now + TICK_S;
		}
		flush_dirty();
		if (__atomic_load_n(&relay.quit, __ATOMIC_ACQUIRE) &&
		    __atomic_load_n(&relay.open, __ATOMIC_ACQUIRE) == 0)
			return NULL;
	}
}

/* --- the workers' side --------------------------------------------------------- */

int relay_reserve(void)
{
	if (__atomic_add_fetch(&relay.open, 1, __ATOMIC_ACQ_REL) <= config.streams_max)
		return 0;
	relay_unreserve();
	return -1;
}

void relay_unreserve(void)
{
	__atomic_sub_fetch(&relay.open, 1, __ATOMIC_ACQ_REL);
}

static struct stream *new_stream(struct request *r)
{
	struct stream *s = calloc(1, sizeof *s);

	if (!s)
		return NULL;
	upstream_xfer_init(&s->x);
	buf_init(&s->out, OUT_MAX);
	buf_init(&s->marks, MARKS_MAX);
	buf_init(&s->tail, 64u << 10);
	s->slot = s->wd = -1;
	s->method = strcmp(r->method, "POST") == 0 ? "POST" : "GET";
	s->started_s = (double)r->started.tv_sec + (double)r->started.tv_nsec / 1e9;
	s->first_chunk_ms = -1;
	s->path = strdup(r->path ? r->path : "-");
	if (!s->path) {
		free_stream(s);
		return NULL;
	}
	return s;
}

/* Hand s, set up, and the request's connection to the loop, which must
 * never block on it, whatever nginx sends.  0, or -1 with nothing taken. */
static int take_connection(struct stream *s, struct request *r)
{
	int flags = fcntl(r->fcgx->ipcFd, F_GETFL);

	if (flags < 0 || fcntl(r->fcgx->ipcFd, F_SETFL, flags | O_NONBLOCK) < 0)
		return -1;
	s->fd = r->fcgx->ipcFd;
	s->request_id = r->fcgx->requestId;
	/* From here on the connection is the relay's: libfcgi must not write
	 * its end records nor close it when the worker finishes. */
	r->fcgx->ipcFd = -1;
	r->handed_off = 1;
	metrics_active_streams(1);
	pthread_mutex_lock(&relay.lock);
	push(&relay.incoming, s);
	pthread_mutex_unlock(&relay.lock);
	wake_loop();
	return 0;
}

int relay_submit(struct request *r, struct exchange *ex)
{
	struct wire_message *msgs = NULL;
	struct upstream_call call = {0};
	struct stream *s = new_stream(r);
	int n;

	if (!s)
		return -1;
	s->x.curl = take_handle();
	if (!s->x.curl || exchange_messages(ex, &msgs, &n) < 0)
		goto fail;
	call.model = ex->model;
	call.messages = msgs;
	call.nmessages = n;
	call.on_content = on_content;
	call.on_done = on_done;
	call.ctx = s;
	call.idle_timeout = config.upstream_idle_timeout;
	call.client_fd = -1; /* the loop watches the connection itself */
	if (upstream_xfer_prepare(&s->x, &call, &ex->result, 0) < 0)
		goto fail;
	free(msgs);
	msgs = NULL;
	if (ex->resumable) {
		s->jw = malloc(sizeof *s->jw);
		if (s->jw && journal_create(s->jw, ex->message_id) == 0) {
			s->resumable = 1;
		} else { /* logged: the stream goes on as one that is not */
			free(s->jw);
			s->jw = NULL;
		}
	}
	s->user_id = ex->user.id;
	s->message_id = ex->message_id;
	s->state = STREAMING;
	s->saved_at = s->started_s;
	s->ex = ex;
	exchange_release_context(ex); /* in the request body now */
	if (take_connection(s, r) < 0) {
		s->ex = NULL; /* still the caller's */
		goto fail;
	}
	return 0;
fail:
	free(msgs);
	free_stream(s); /* s->ex is still NULL: ex stays the caller's */
	return -1;
}

int relay_follow(struct request *r, struct journal_reader *jr, long long user_id, int slot)
{
	struct stream *s = new_stream(r);

	if (!s)
		return -1;
	s->jr = jr;
	s->user_id = user_id;
	s->message_id = jr->message_id;
	s->state = FOLLOWING;
	s->slot = slot;
	if (take_connection(s, r) < 0) {
		s->jr = NULL; /* still the caller's, like the slot */
		s->slot = -1;
		free_stream(s);
		return -1;
	}
	return 0;
}

/* --- start and stop ---------------------------------------------------------- */

/* Stop requests and journals (journal.h) through inotify.  Without it
 * (logged) streams still resume, only a tick later, and stops are still
 * seen when a stream starts. */
static void watch_streams_dir(void)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = INOTIFY_TAG};

	if (journal_init() < 0)
		return;
	relay.infd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (relay.infd < 0 ||
	    (relay.streams_wd = inotify_add_watch(relay.infd, config.streams_dir,
						  IN_CREATE | IN_MOVED_TO | IN_ONLYDIR)) < 0 ||
	    epoll_ctl(relay.epfd, EPOLL_CTL_ADD, relay.infd, &ev) < 0) {
		log_error("inotify on %s: %s; stop requests are seen late", config.streams_dir,
			  strerror(errno));
		if (relay.infd >= 0)
			close(relay.infd);
		relay.infd = -1;
	}
}

int relay_start(void)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_TAG};
	int i;

	relay.curl_deadline = -1;
	relay.epfd = epoll_create1(EPOLL_CLOEXEC);
	relay.evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	relay.multi = curl_multi_init();
	if (relay.epfd < 0 || relay.evfd < 0 || !relay.multi ||
	    epoll_ctl(relay.epfd, EPOLL_CTL_ADD, relay.evfd, &ev) < 0)
		goto fail;
	buf_init(&relay.scratch, OUT_MAX);
	watch_streams_dir();
	/* Idle connections to the model server kept for the next streams. */
	if (!multi_ok(curl_multi_setopt(relay.multi, CURLMOPT_SOCKETFUNCTION, on_socket),
		      "CURLMOPT_SOCKETFUNCTION") ||
	    !multi_ok(curl_multi_setopt(relay.multi, CURLMOPT_TIMERFUNCTION, on_timer),
		      "CURLMOPT_TIMERFUNCTION") ||
	    !multi_ok(curl_multi_setopt(relay.multi, CURLMOPT_MAXCONNECTS, 256L),
		      "CURLMOPT_MAXCONNECTS") ||
	    pthread_create(&relay.loop, NULL, loop_main, NULL) != 0)
		goto fail;
	for (i = 0; i < STORERS; i++) {
		if (pthread_create(&relay.storers[i], NULL, storer_main, NULL) != 0)
			break;
		relay.nstorers++;
	}
	if (relay.nstorers == 0) {
		log_error("cannot start a store thread");
		__atomic_store_n(&relay.quit, 1, __ATOMIC_RELEASE);
		wake_loop();
		pthread_join(relay.loop, NULL);
		goto fail;
	}
	return 0;
fail:
	log_error("cannot start the stream relay: %s", strerror(errno));
	if (relay.multi)
		multi_ok(curl_multi_cleanup(relay.multi), "curl_multi_cleanup");
	if (relay.epfd >= 0)
		close(relay.epfd);
	if (relay.evfd >= 0)
		close(relay.evfd);
	relay.multi = NULL;
	relay.epfd = relay.evfd = -1;
	return -1;
}

void relay_stop(void)
{
	int i;

	if (!relay.multi)
		return;
	/* server_stopping() is set: the next tick ends every stream. */
	__atomic_store_n(&relay.quit, 1, __ATOMIC_RELEASE);
	wake_loop();
	pthread_join(relay.loop, NULL);
	pthread_mutex_lock(&relay.lock);
	relay.storers_quit = 1;
	pthread_cond_broadcast(&relay.store_cond);
	pthread_mutex_unlock(&relay.lock);
	for (i = 0; i < relay.nstorers; i++)
		pthread_join(relay.storers[i], NULL);
	relay.nstorers = 0;
	free_saves(relay.to_save); /* superseded: every stream was stored since */
	relay.to_save = NULL;
	while (relay.nidle > 0)
		curl_easy_cleanup(relay.idle[--relay.nidle]);
	multi_ok(curl_multi_cleanup(relay.multi), "curl_multi_cleanup");
	relay.multi = NULL;
	close(relay.epfd);
	close(relay.evfd);
	if (relay.infd >= 0)
		close(relay.infd);
	relay.epfd = relay.evfd = relay.infd = -1;
	buf_free(&relay.scratch);
}
