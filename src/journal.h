/*
 * journal — the events of a resumable stream, kept where any chat_stream
 * process can follow them: a client that reconnects, to whichever
 * process nginx picks, gets every event after the last one it saw.
 *
 * A generation's journal is the directory streams/<message_id>/ in the
 * state directory: a file `lock` and segments named 0, 1, 2, ... Each
 * segment is a run of records, a struct journal_rec header and the SSE
 * bytes of one event exactly as the first client was sent them.  The
 * writer (the stream generating the reply, relay.c) appends; once a
 * segment is past JOURNAL_SEGMENT_MAX it ends it with a NEXT record, goes
 * on in the next one and removes the one before the previous, so about
 * 1 MiB stays.  A reader further behind than that finds its next segment
 * gone and is told of the gap.  The last record is END, holding the
 * final event (done or error); then the writer removes the directory.
 * Readers that still have a segment open read on (an unlinked file lives
 * while it is open), and one that comes later finds the reply stored.
 *
 * Who is there is told by open-file-description locks on `lock`, which
 * the kernel drops with a process that dies: the writer holds a write
 * lock on byte 0 for its whole life, each reader a read lock on byte 1.
 * So the writer knows whether anybody reads (its detach grace runs only
 * while nobody does), and a reader whether the writer still lives.
 *
 * A stop request for any generation, resumable or not, is a file
 * streams/<message_id>.stop; every chat_stream watches the directory
 * with inotify, and the one generating that reply stops it.
 *
 * Plain files, not shared memory: they survive nothing (a restart ends
 * every generation), but they need no sizing, any process can open them
 * by name, and inotify tells a reader when one grows.  Put the state
 * directory's streams/ on a tmpfs to keep them off the disk entirely.
 */
#ifndef JARVAS_JOURNAL_H
#define JARVAS_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define JOURNAL_SEGMENT_MAX (512u << 10)

enum journal_type {
	JOURNAL_EVENT = 1, /* a chunk's event, with its seq */
	JOURNAL_NEXT = 2,  /* go on in the next segment */
	JOURNAL_END = 3,   /* the final event; nothing follows */
};

struct journal_rec {
	uint32_t len;  /* bytes after the header */
	uint32_t seq;  /* the event's id is "<message_id>:<seq>" */
	uint32_t type; /* enum journal_type */
};

/* The streams/ directory: created if absent.  0 or -1 (logged). */
int journal_init(void);

struct journal_writer {
	long long message_id;
	int lock_fd, seg_fd;
	unsigned seg;	  /* the segment written */
	size_t seg_bytes; /* written to it so far */
	struct buf pending; /* records not written yet (journal_flush) */
	int broken;	    /* a write failed: readers are cut off */
};

/* Create the journal of message_id (visible to readers only once it is
 * complete).  0, or -1 (logged). */
int journal_create(struct journal_writer *w, long long message_id);
/* Queue a record (the bytes of one event).  0, or -1 when the journal is
 * broken (logged once). */
int journal_add(struct journal_writer *w, enum journal_type type, int seq, const void *bytes,
		size_t n);
/* Write what is queued.  0 or -1 (then broken). */
int journal_flush(struct journal_writer *w);
/* 1 when a reader is attached, else 0. */
int journal_has_readers(const struct journal_writer *w);
/* Remove the journal (after END, or to give up) and free w. */
void journal_remove(struct journal_writer *w);

struct journal_reader {
	long long message_id;
	int lock_fd, seg_fd;
	unsigned seg;
	struct buf in;	 /* bytes read, not yet a whole record */
	int after;	 /* the last seq handed on */
	int ended;	 /* END was handed on */
	char path[64]; /* of the segment read, relative to streams/ */
};

/* Follow message_id's journal from the event after seq `after`.  0; 1 when
 * it has no journal (finished, or not resumable); -1 on an error. */
int journal_open(struct journal_reader *rd, long long message_id, int after);

/* Hand every whole record that arrived to fn, in order: events after
 * `after`, a gap (type 0, seq = first lost, n = number lost) when some
 * were dropped, and END.  fn returns 0, or -1 to stop reading for now.
 * Returns 0 (more may come), 1 once END was handed on, -1 when the
 * journal was cut off without an end (its writer died or gave up). */
int journal_read(struct journal_reader *rd,
		 int (*fn)(void *ctx, int type, int seq, const char *bytes, size_t n), void *ctx);
/* The inotify watch of the segment read: its path under streams/. */
const char *journal_reader_path(const struct journal_reader *rd);
void journal_close(struct journal_reader *rd);

/* The stop request of message_id: made (0 or -1), or removed. */
int journal_request_stop(long long message_id);
void journal_clear_stop(long long message_id);
int journal_stop_requested(long long message_id); /* 1 or 0 */
/* The message id a streams/ entry name asks to stop, or 0. */
long long journal_stop_name(const char *name);

#endif
