/*
 * journal — the files of resumable streams (see journal.h).  Every name
 * is relative to one descriptor of streams/, opened once: paths stay
 * short and no copy into a path buffer can overflow.
 */
#include "journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

#define RECORD_MAX (64u << 20) /* an event's bytes: one 4 MiB line, escaped */
#define READ_STEP (256u << 10) /* bytes read per read() */

static int streams_fd = -1;

/* A lock on one byte of `lock` (type F_WRLCK, F_RDLCK): 0 or -1. */
static int lock_byte(int fd, short type, off_t byte)
{
	struct flock l = {.l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};

	return fcntl(fd, F_OFD_SETLK, &l);
}

/* Does another open file description hold a lock on byte that a lock of
 * `type` would conflict with?  1, 0, or -1 when it cannot be told. */
static int byte_locked(int fd, short type, off_t byte)
{
	struct flock l = {.l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};

	if (fcntl(fd, F_OFD_GETLK, &l) < 0)
		return -1;
	return l.l_type != F_UNLCK;
}

/* Journals whose writer is gone (a process that died): removed when a
 * chat_stream starts.  A live writer holds its lock, so another process's
 * journal is never touched. */
static void remove_stale(void)
{
	char path[sizeof((struct dirent *)0)->d_name + 8];
	struct dirent *e;
	DIR *d;
	int dfd = dup(streams_fd);

	if (dfd < 0 || !(d = fdopendir(dfd))) {
		if (dfd >= 0)
			close(dfd);
		return;
	}
	while ((e = readdir(d)) != NULL) {
		int lock, fd;
		DIR *segs;
		struct dirent *s;

		if (e->d_name[0] < '1' || e->d_name[0] > '9' ||
		    strspn(e->d_name, "0123456789") != strlen(e->d_name) || strlen(e->d_name) > 20)
			continue;
		snprintf(path, sizeof path, "%s/lock", e->d_name);
		lock = openat(streams_fd, path, O_RDONLY | O_CLOEXEC);
		if (lock < 0)
			continue;
		if (byte_locked(lock, F_RDLCK, 0) != 0) { /* a writer lives (or cannot tell) */
			close(lock);
			continue;
		}
		close(lock);
		fd = openat(streams_fd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0 || !(segs = fdopendir(fd))) {
			if (fd >= 0)
				close(fd);
			continue;
		}
		while ((s = readdir(segs)) != NULL)
			if (s->d_name[0] != '.')
				unlinkat(dirfd(segs), s->d_name, 0);
		closedir(segs);
		if (unlinkat(streams_fd, e->d_name, AT_REMOVEDIR) == 0)
			log_info("removed the journal of message %s: its process is gone",
				 e->d_name);
	}
	closedir(d);
}

int journal_init(void)
{
	if (streams_fd >= 0)
		return 0;
	if (mkdir(config.streams_dir, 0700) < 0 && errno != EEXIST) {
		log_error("cannot create %s: %s", config.streams_dir, strerror(errno));
		return -1;
	}
	streams_fd = open(config.streams_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (streams_fd < 0) {
		log_error("cannot open %s: %s", config.streams_dir, strerror(errno));
		return -1;
	}
	remove_stale();
	return 0;
}

/* --- the writer ----------------------------------------------------------- */

static void name_of(char *out, size_t cap, long long message_id, const char *suffix)
{
	snprintf(out, cap, "%lld%s", message_id, suffix);
}

/* Remove streams/<dir>/ with whatever of lock, segments seg-1 and seg is in it. */
static void remove_dir(const char *dir, unsigned seg)
{
	char path[64];

	snprintf(path, sizeof path, "%s/%u", dir, seg);
	unlinkat(streams_fd, path, 0);
	if (seg > 0) {
		snprintf(path, sizeof path, "%s/%u", dir, seg - 1);
		unlinkat(streams_fd, path, 0);
	}
	snprintf(path, sizeof path, "%s/lock", dir);
	unlinkat(streams_fd, path, 0);
	if (unlinkat(streams_fd, dir, AT_REMOVEDIR) < 0 && errno != ENOENT)
		log_warn("cannot remove %s/%s: %s", config.streams_dir, dir, strerror(errno));
}

int journal_create(struct journal_writer *w, long long message_id)
{
	char tmp[48], dir[48], path[64];

	memset(w, 0, sizeof *w);
	w->message_id = message_id;
	w->lock_fd = w->seg_fd = -1;
	buf_init(&w->pending, RECORD_MAX + JOURNAL_SEGMENT_MAX);
	if (streams_fd < 0)
		return -1;
	name_of(tmp, sizeof tmp, message_id, ".new");
	name_of(dir, sizeof dir, message_id, "");
	/* Built under another name and renamed: a reader finds it whole or
	 * not at all. */
	if (mkdirat(streams_fd, tmp, 0700) < 0)
		goto fail;
	snprintf(path, sizeof path, "%s/lock", tmp);
	w->lock_fd = openat(streams_fd, path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (w->lock_fd < 0 || lock_byte(w->lock_fd, F_WRLCK, 0) < 0)
		goto fail;
	snprintf(path, sizeof path, "%s/0", tmp);
	w->seg_fd = openat(streams_fd, path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (w->seg_fd < 0 || renameat(streams_fd, tmp, streams_fd, dir) < 0)
		goto fail;
	return 0;
fail:
	log_error("cannot create the journal of message %lld in %s: %s", message_id,
		  config.streams_dir, strerror(errno));
	remove_dir(tmp, 0);
	journal_remove(w);
	return -1;
}

/* A write failed: take the journal away, so that its readers see it cut
 * off instead of waiting for records that will not come. */
static int cut_off(struct journal_writer *w, const char *what)
{
	char dir[48];

	if (!w->broken)
		log_error("journal of message %lld: %s: %s; its readers are cut off", w->message_id,
			  what, strerror(errno));
	w->broken = 1;
	buf_reset(&w->pending);
	name_of(dir, sizeof dir, w->message_id, "");
	remove_dir(dir, w->seg);
	return -1;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t k = write(fd, p, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

int journal_flush(struct journal_writer *w)
{
	if (w->broken)
		return -1;
	if (w->pending.len == 0)
		return 0;
	if (write_all(w->seg_fd, w->pending.data, w->pending.len) < 0)
		return cut_off(w, "write");
	w->seg_bytes += w->pending.len;
	buf_reset(&w->pending);
	return 0;
}

static int put_record(struct buf *b, enum journal_type type, int seq, const void *bytes, size_t n)
{
	struct journal_rec h = {.len = (uint32_t)n, .seq = (uint32_t)seq, .type = type};

	if (buf_append(b, &h, sizeof h) != BUF_OK || (n && buf_append(b, bytes, n) != BUF_OK))
		return -1;
	return 0;
}

/* End the segment with NEXT and go on in a new one; the one before the
 * previous goes. */
static int next_segment(struct journal_writer *w)
{
	char path[64];
	int fd;

	snprintf(path, sizeof path, "%lld/%u", w->message_id, w->seg + 1);
	/* The next segment exists before NEXT names it: a reader at NEXT
	 * always finds it. */
	fd = openat(streams_fd, path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return cut_off(w, "a new segment");
	if (put_record(&w->pending, JOURNAL_NEXT, 0, NULL, 0) < 0 || journal_flush(w) < 0) {
		close(fd);
		return w->broken ? -1 : cut_off(w, "out of memory");
	}
	close(w->seg_fd);
	w->seg_fd = fd;
	w->seg++;
	w->seg_bytes = 0;
	if (w->seg >= 2) {
		snprintf(path, sizeof path, "%lld/%u", w->message_id, w->seg - 2);
		unlinkat(streams_fd, path, 0);
	}
	return 0;
}

int journal_add(struct journal_writer *w, enum journal_type type, int seq, const void *bytes,
		size_t n)
{
	size_t used;

	if (w->broken)
		return -1;
	if (n > RECORD_MAX) {
		errno = EFBIG;
		return cut_off(w, "an event too large");
	}
	used = w->seg_bytes + w->pending.len;
	if (used > 0 && used + sizeof(struct journal_rec) + n > JOURNAL_SEGMENT_MAX &&
	    next_segment(w) < 0)
		return -1;
	if (put_record(&w->pending, type, seq, bytes, n) < 0) {
		errno = ENOMEM;
		return cut_off(w, "out of memory");
	}
	return 0;
}

int journal_has_readers(const struct journal_writer *w)
{
	return w->lock_fd >= 0 && byte_locked(w->lock_fd, F_WRLCK, 1) == 1;
}

void journal_remove(struct journal_writer *w)
{
	char dir[48];

	if (w->lock_fd >= 0 && !w->broken) {
		name_of(dir, sizeof dir, w->message_id, "");
		remove_dir(dir, w->seg);
	}
	if (w->seg_fd >= 0)
		close(w->seg_fd);
	if (w->lock_fd >= 0)
		close(w->lock_fd); /* drops the write lock: readers see the end */
	w->seg_fd = w->lock_fd = -1;
	buf_free(&w->pending);
}

/* --- readers ---------------------------------------------------------------- */

/* The lowest segment number in streams/<message_id>/ at or above from:
 * 0 with *seg set, or -1 when there is none. */
static int lowest_segment(long long message_id, unsigned from, unsigned *seg)
{
	char dir[48];
	struct dirent *e;
	int fd, found = 0;
	DIR *d;

	name_of(dir, sizeof dir, message_id, "");
	fd = openat(streams_fd, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	while ((e = readdir(d)) != NULL) {
		char *end;
		unsigned long v;

		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		v = strtoul(e->d_name, &end, 10);
		if (*end || v < from || v > 0xffffffffu)
			continue;
		if (!found || v < *seg)
			*seg = (unsigned)v;
		found = 1;
	}
	closedir(d);
	return found ? 0 : -1;
}

/* Open the lowest segment from `from` on.  0, or -1 when none is left. */
static int open_segment(struct journal_reader *rd, unsigned from)
{
	int tries;

	for (tries = 0; tries < 4; tries++) { /* the writer may remove it meanwhile */
		if (lowest_segment(rd->message_id, from, &rd->seg) < 0)
			return -1;
		snprintf(rd->path, sizeof rd->path, "%lld/%u", rd->message_id, rd->seg);
		rd->seg_fd = openat(streams_fd, rd->path, O_RDONLY | O_CLOEXEC);
		if (rd->seg_fd >= 0)
			return 0;
	}
	return -1;
}

int journal_open(struct journal_reader *rd, long long message_id, int after)
{
	char path[64];

	memset(rd, 0, sizeof *rd);
	rd->message_id = message_id;
	rd->after = after;
	rd->lock_fd = rd->seg_fd = -1;
	buf_init(&rd->in, RECORD_MAX + sizeof(struct journal_rec) + READ_STEP);
	if (streams_fd < 0)
		return -1;
	snprintf(path, sizeof path, "%lld/lock", message_id);
	rd->lock_fd = openat(streams_fd, path, O_RDONLY | O_CLOEXEC);
	if (rd->lock_fd < 0)
		return errno == ENOENT ? 1 : -1;
	if (lock_byte(rd->lock_fd, F_RDLCK, 1) < 0) {
		journal_close(rd);
		return -1;
	}
	if (open_segment(rd, 0) < 0) {
		journal_close(rd);
		return 1; /* removed meanwhile: the reply is stored */
	}
	return 0;
}

/* Whole records in rd->in, handed to fn.  0 go on, 1 ended, 2 fn asked
 * to stop, 3 NEXT seen, -1 a record that cannot be. */
static int hand_on(struct journal_reader *rd,
		   int (*fn)(void *ctx, int type, int seq, const char *bytes, size_t n), void *ctx)
{
	size_t at = 0;
	int rc = 0;

	while (rc == 0 && rd->in.len - at >= sizeof(struct journal_rec)) {
		struct journal_rec h;
		const char *body = rd->in.data + at + sizeof h;
		int seq;

		memcpy(&h, rd->in.data + at, sizeof h);
		if (h.len > RECORD_MAX || h.seq > 0x7fffffffu) {
			rc = -1;
			break;
		}
		if (rd->in.len - at - sizeof h < h.len)
			break; /* the rest is still being written */
		seq = (int)h.seq;
		if (h.type == JOURNAL_NEXT) {
			at += sizeof h;
			rc = 3;
			break;
		}
		if (h.type != JOURNAL_EVENT && h.type != JOURNAL_END) {
			rc = -1;
			break;
		}
		if (h.type == JOURNAL_EVENT && seq <= rd->after) {
			at += sizeof h + h.len; /* seen already */
			continue;
		}
		if (h.type == JOURNAL_EVENT && seq > rd->after + 1 &&
		    fn(ctx, 0, rd->after + 1, NULL, (size_t)(seq - rd->after - 1)) < 0) {
			rc = 2;
			break;
		}
		if (h.type == JOURNAL_EVENT)
			rd->after = seq - 1; /* the gap, if any, is told */
		if (fn(ctx, (int)h.type, seq, body, h.len) < 0) {
			rc = 2;
			break;
		}
		at += sizeof h + h.len;
		rd->after = seq;
		if (h.type == JOURNAL_END) {
			rd->ended = 1;
			rc = 1;
		}
	}
	buf_consume(&rd->in, at);
	return rc;
}

/* The writer is gone, or took the journal away. */
static int cut(const struct journal_reader *rd)
{
	struct stat st;

	if (byte_locked(rd->lock_fd, F_RDLCK, 0) == 0)
		return 1;
	return fstat(rd->seg_fd, &st) == 0 && st.st_nlink == 0;
}

int journal_read(struct journal_reader *rd,
		 int (*fn)(void *ctx, int type, int seq, const char *bytes, size_t n), void *ctx)
{
	int probed = 0, was_cut = 0;

	if (rd->ended)
		return 1;
	for (;;) {
		ssize_t n;
		int rc = hand_on(rd, fn, ctx);

		if (rc == 1)
			return 1;
		if (rc == 2)
			return 0;
		if (rc < 0) {
			log_error("journal of message %lld: a malformed record in %s",
				  rd->message_id, rd->path);
			return -1;
		}
		if (rc == 3) { /* on to the next segment */
			close(rd->seg_fd);
			rd->seg_fd = -1;
			buf_reset(&rd->in);
			if (open_segment(rd, rd->seg + 1) < 0)
				return -1;
			probed = 0;
			continue;
		}
		if (buf_reserve(&rd->in, READ_STEP) != BUF_OK)
			return -1;
		n = read(rd->seg_fd, rd->in.data + rd->in.len, READ_STEP);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n > 0) {
			rd->in.len += (size_t)n;
			continue;
		}
		/* Nothing more now.  Was the journal cut off?  Asked before one
		 * last read, so that records written just before the end are
		 * not missed. */
		if (probed)
			return was_cut ? -1 : 0;
		probed = 1;
		was_cut = cut(rd);
		if (!was_cut)
			return 0;
	}
}

const char *journal_reader_path(const struct journal_reader *rd)
{
	return rd->path;
}

void journal_close(struct journal_reader *rd)
{
	if (rd->seg_fd >= 0)
		close(rd->seg_fd);
	if (rd->lock_fd >= 0)
		close(rd->lock_fd); /* drops the read lock */
	rd->seg_fd = rd->lock_fd = -1;
	buf_free(&rd->in);
}

/* --- stop requests ----------------------------------------------------------- */

int journal_request_stop(long long message_id)
{
	char name[48];
	int fd;

	if (streams_fd < 0)
		return -1;
	name_of(name, sizeof name, message_id, ".stop");
	fd = openat(streams_fd, name, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		log_error("cannot request a stop in %s: %s", config.streams_dir, strerror(errno));
		return -1;
	}
	close(fd);
	return 0;
}

void journal_clear_stop(long long message_id)
{
	char name[48];

	if (streams_fd < 0)
		return;
	name_of(name, sizeof name, message_id, ".stop");
	unlinkat(streams_fd, name, 0);
}

int journal_stop_requested(long long message_id)
{
	char name[48];

	name_of(name, sizeof name, message_id, ".stop");
	return streams_fd >= 0 && faccessat(streams_fd, name, F_OK, 0) == 0;
}

long long journal_stop_name(const char *name)
{
	char *end;
	long long id;

	if (name[0] < '1' || name[0] > '9')
		return 0;
	id = strtoll(name, &end, 10);
	return strcmp(end, ".stop") == 0 ? id : 0;
}
