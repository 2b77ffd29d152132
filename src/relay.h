/*
 * relay — every open stream of a chat_stream process, driven by one
 * event-loop thread.
 *
 * A worker thread sets a stream up (auth, input, history, prompt, the
 * response headers) and hands it over with relay_submit(); from then on
 * the stream holds no thread.  The loop thread waits in epoll on the
 * upstream sockets (curl's multi interface) and on the FastCGI
 * connections, turns each line from the model into an SSE event written
 * straight to nginx (fcgi_wire.c), sends pings, enforces the idle timeout
 * and notices a client that left.  When the model is done, or failed, or
 * the client left, a store thread writes the exchange to history (SQLite
 * may block; the loop must not) and the loop writes the last event and
 * ends the request.
 *
 * A resumable stream (the client asked) also writes every event to its
 * journal (journal.h); its client may leave and the model goes on while
 * someone reads the journal, or for config.detach_grace.  A client that
 * reconnects becomes a follower (relay_follow()): a stream without a
 * model, fed from the journal as it grows (inotify), in whichever process
 * nginx sent it to.  A stop request (a file in streams/, inotify) aborts
 * the generation it names, if it is this process's.
 *
 * Invariant: every stream accepted by relay_submit() ends with its
 * exchange stored as its client saw it (the user message already is; the
 * reply as far as it was sent, or all of it when resumable, saved every
 * few seconds while it grows; no text: nothing kept, unless stopped) and
 * its final status, its last event written (to the client if it is
 * still there, and to the journal), its request ended, logged and
 * counted, and its reservation released — also when the process stops
 * (the stream then ends with "The server is restarting").  A follower
 * ends with the journal's end, or an error when the journal was cut off.
 */
#ifndef JARVAS_RELAY_H
#define JARVAS_RELAY_H

struct request;
struct exchange;
struct journal_reader;

/* Start the loop and store threads.  0, or -1 (logged). */
int relay_start(void);
/* After the last relay_submit(): end every open stream (restarting), wait
 * until all are closed, stop the threads. */
void relay_stop(void);

/* Room for one more stream in this process (config.streams_max): 0 with
 * the place taken, or -1 when full.  A place not handed to relay_submit()
 * is given back with relay_unreserve(). */
int relay_reserve(void);
void relay_unreserve(void);

/* Hand over a stream whose headers are sent: the relay takes ex and the
 * request's FastCGI connection (the worker's FastCGI request is left
 * without one, and request_end() neither answers nor logs it).  0, or -1
 * with nothing taken: the caller still owns ex and the connection. */
int relay_submit(struct request *r, struct exchange *ex);

/* Hand over a client that reconnected to a resumable stream (stream.c):
 * its headers are sent, jr is open at the event after the last it saw,
 * slot is its place under the user's stream cap.  The relay sends the
 * journal's events as they come and ends the request with the stream's
 * end.  0 (the relay has jr, slot and the connection), or -1 with
 * nothing taken. */
int relay_follow(struct request *r, struct journal_reader *jr, long long user_id, int slot);

#endif
