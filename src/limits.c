/*
 * limits — cross-process per-user caps (see limits.h).
 */
#include "limits.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"
#include "log.h"
#include "shm.h"

struct slots_file {
	uint32_t magic;
	int32_t pid;
	int64_t nslots;
	int64_t used;
	int64_t user[];
};
_Static_assert(sizeof(struct slots_file) == LIMITS_HEADER, "header layout");

/* This process's slots.  user[] and used are the truth (a count reads
 * them, atomically); the file is their published copy, written alongside
 * them.  Writes, the free stack and the copy are guarded by own.lock,
 * which the watcher (shm.c) also takes to restore the file. */
static struct {
	pthread_mutex_t lock;
	const char *kind; /* "streams" or "chats": the file's prefix */
	struct buf dir;	  /* $STATE/run */
	int cap;
	int nslots;
	int64_t *user;
	int64_t used;
	/* Free slots, a stack: the most recently freed is reused first, so
	 * the slots in use stay few and low and a count scans only up to
	 * `used`. */
	int *free;
	int nfree;
	struct shm_file file;
	struct slots_file *map; /* file.map, or NULL: the file could not be made */
} own = {.lock = PTHREAD_MUTEX_INITIALIZER, .dir = {.max = 4096}};

/* Other processes' files, kept open: the list is refreshed from the
 * directory at most once a second, which is how soon a new process is
 * seen.  Each count reads the header and the used slots of each (one
 * pread when they fit in what was read the last time).  Guarded by
 * peers.lock. */
#define MAX_PEERS 256
static struct {
	pthread_mutex_t lock;
	struct {
		pid_t pid;
		int fd;
		dev_t dev;
		ino_t ino;
		size_t size; /* at open; the header must match it */
		size_t want; /* bytes to read next time */
	} p[MAX_PEERS];
	int n;
	time_t refreshed;
	struct buf scratch; /* the file being counted */
} peers = {.lock = PTHREAD_MUTEX_INITIALIZER,
	   .scratch = {.max = LIMITS_HEADER + (size_t)LIMITS_SLOTS_MAX * 8}};

static int64_t load64(const unsigned char *p)
{
	int64_t v;

	memcpy(&v, p, sizeof v);
	return v;
}

int limits_file_check(const void *data, size_t n, size_t file_size, struct limits_file_info *info)
{
	const unsigned char *d = data;
	uint32_t magic;

	memset(info, 0, sizeof *info);
	if (n < LIMITS_HEADER || file_size < LIMITS_HEADER) {
		info->why = "shorter than its header";
		return -1;
	}
	memcpy(&magic, d, sizeof magic);
	memcpy(&info->pid, d + 4, sizeof info->pid);
	info->nslots = load64(d + 8);
	info->used = load64(d + 16);
	if (magic != LIMITS_MAGIC)
		info->why = "not a cap file (wrong magic number)";
	else if (info->pid <= 0)
		info->why = "no valid pid in its header";
	else if (info->nslots < 1 || info->nslots > LIMITS_SLOTS_MAX)
		info->why = "slot count out of range";
	else if (file_size != LIMITS_HEADER + (size_t)info->nslots * 8)
		info->why = "size does not match its slot count";
	else if (info->used < 0 || info->used > info->nslots)
		info->why = "used-slot count out of range";
	if (info->why)
		return -1;
	info->need = LIMITS_HEADER + (size_t)info->used * 8;
	return 0;
}

int limits_file_count(const void *data, const struct limits_file_info *info, long long user_id)
{
	const unsigned char *slots = (const unsigned char *)data + LIMITS_HEADER;
	int count = 0;

	for (int64_t i = 0; i < info->used; i++)
		count += load64(slots + 8 * i) == user_id;
	return count;
}

/* $STATE/run/<kind>.<pid> */
static int kind_path(struct buf *out, pid_t pid)
{
	buf_reset(out);
	return buf_printf(out, "%s/%s.%d", buf_str(&own.dir), own.kind, (int)pid) == BUF_OK ? 0
											    : -1;
}

static void remove_dead(const char *path, const char *name, void *ctx)
{
	pid_t pid = shm_name_pid(name, own.kind);

	(void)ctx;
	if (pid && !shm_pid_alive(pid))
		unlink(path);
}

/* The file's content, from the private copy.  own.lock held. */
static void own_image(void *image, size_t size)
{
	struct slots_file *f = image;

	memset(image, 0, size);
	f->magic = LIMITS_MAGIC;
	f->pid = (int32_t)getpid();
	f->nslots = own.nslots;
	f->used = own.used;
	memcpy(f->user, own.user, (size_t)own.used * sizeof *own.user);
}

/* own.lock held. */
static int own_intact(const void *map, size_t size)
{
	const struct slots_file *f = map;

	(void)size;
	return f->magic == LIMITS_MAGIC && f->pid == (int32_t)getpid() && f->nslots == own.nslots &&
	       f->used == own.used &&
	       memcmp(f->user, own.user, (size_t)own.used * sizeof *own.user) == 0;
}

int limits_open(const char *kind, int slots, int cap)
{
	struct buf path;
	size_t size = LIMITS_HEADER + (size_t)slots * sizeof *own.user;
	int rc = -1;

	buf_init(&path, 8192);
	own.kind = kind;
	own.cap = cap;
	own.nslots = slots;
	own.used = 0;
	buf_reset(&own.dir);
	own.user = calloc((size_t)slots, sizeof *own.user);
	own.free = malloc((size_t)slots * sizeof *own.free);
	if (buf_printf(&own.dir, "%s/run", config.state_dir) != BUF_OK || !own.user || !own.free ||
	    slots > LIMITS_SLOTS_MAX) {
		free(own.user);
		free(own.free);
		own.user = NULL;
		own.free = NULL;
		log_warn("%s cap off: cannot hold %d slots", kind, slots);
		goto out;
	}
	for (own.nfree = 0; own.nfree < slots; own.nfree++)
		own.free[own.nfree] = slots - 1 - own.nfree; /* slot 0 on top */

	/* Files of processes that died are only clutter: drop them. */
	shm_scan(buf_str(&own.dir), remove_dead, NULL);
	own.file.what = strcmp(kind, "streams") == 0 ? "stream cap" : "chat cap";
	own.file.image = own_image;
	own.file.intact = own_intact;
	own.file.lock = &own.lock;
	pthread_mutex_lock(&own.lock);
	if (kind_path(&path, getpid()) == 0 &&
	    shm_file_open(&own.file, buf_str(&path), size, 0) == 0) {
		own.map = own.file.map;
		own_image(own.map, size);
		rc = 0;
	}
	pthread_mutex_unlock(&own.lock);
	if (rc < 0)
		log_warn("%s cap: no file for the other processes to see; it holds in this process "
			 "only",
			 kind);
out:
	buf_free(&path);
	return rc;
}

static void peer_drop(int i)
{
	close(peers.p[i].fd);
	peers.p[i] = peers.p[--peers.n];
}

void limits_close(void)
{
	pthread_mutex_lock(&peers.lock);
	while (peers.n > 0)
		peer_drop(peers.n - 1);
	peers.refreshed = 0;
	buf_free(&peers.scratch);
	pthread_mutex_unlock(&peers.lock);
	shm_file_close(&own.file, 1);
	own.map = NULL;
	free(own.user);
	free(own.free);
	buf_free(&own.dir);
	own.user = NULL;
	own.free = NULL;
	own.nfree = 0;
}

/* Why peer i's file cannot be counted now, or NULL; peers.lock held.  On
 * success scratch holds its header and used slots, described by *info. */
static const char *peer_read(int i, struct limits_file_info *info)
{
	ssize_t n;

	for (int pass = 0; pass < 4; pass++) {
		n = shm_read(peers.p[i].fd, &peers.scratch, peers.p[i].want);
		if (n < 0)
			return strerror(errno);
		if (limits_file_check(peers.scratch.data, (size_t)n, peers.p[i].size, info) < 0)
			return info->why;
		if (info->pid != (int32_t)peers.p[i].pid)
			return "the pid in its header is not the one in its name";
		if ((size_t)n >= info->need)
			return NULL;
		if ((size_t)n < peers.p[i].want)
			return "shorter than its used slots (truncated)";
		peers.p[i].want = info->need; /* more slots in use than last time */
	}
	return "its slots in use grew on every read";
}

static void peer_skip(pid_t pid, const char *why)
{
	struct buf path;

	buf_init(&path, 8192);
	if (kind_path(&path, pid) == 0)
		shm_skip(buf_str(&path), why);
	buf_free(&path);
}

/* Take the file of a live peer into the list when it checks out.
 * peers.lock held. */
static void peer_add(pid_t pid, const char *path)
{
	struct limits_file_info info;
	const char *why;
	struct stat st;
	int fd, i = peers.n;

	if (peers.n == MAX_PEERS || (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return;
	if (fstat(fd, &st) < 0) {
		close(fd);
		return;
	}
	peers.p[i].pid = pid;
	peers.p[i].fd = fd;
	peers.p[i].dev = st.st_dev;
	peers.p[i].ino = st.st_ino;
	peers.p[i].size = (size_t)st.st_size;
	peers.p[i].want = LIMITS_HEADER + 64 * 8;
	peers.n++;
	why = peer_read(i, &info);
	if (why) {
		shm_skip(path, why);
		peer_drop(i);
	}
}

static int peer_known(pid_t pid)
{
	for (int i = 0; i < peers.n; i++)
		if (peers.p[i].pid == pid)
			return 1;
	return 0;
}

static void peer_found(const char *path, const char *name, void *ctx)
{
	pid_t pid = shm_name_pid(name, own.kind);

	(void)ctx;
	if (!pid) {
		if (strncmp(name, own.kind, strlen(own.kind)) == 0 && name[strlen(own.kind)] == '.')
			shm_skip(path, "not a <kind>.<pid> name");
		return;
	}
	if (pid == getpid() || peer_known(pid))
		return;
	if (!shm_pid_alive(pid))
		unlink(path); /* its process died */
	else
		peer_add(pid, path);
}

/* Drop peers that died (and their files) or whose file was replaced;
 * take new ones in.  peers.lock held. */
static void refresh_peers(void)
{
	struct buf path;
	struct stat st;
	time_t now = time(NULL);

	if (now == peers.refreshed)
		return;
	peers.refreshed = now;
	buf_init(&path, 8192);
	for (int i = 0; i < peers.n; i++) {
		int dead = !shm_pid_alive(peers.p[i].pid);

		if (kind_path(&path, peers.p[i].pid) < 0)
			continue;
		if (dead)
			unlink(buf_str(&path));
		if (dead || stat(buf_str(&path), &st) < 0 || st.st_ino != peers.p[i].ino ||
		    st.st_dev != peers.p[i].dev)
			peer_drop(i--); /* taken in again below if it is back */
	}
	buf_free(&path);
	shm_scan(buf_str(&own.dir), peer_found, NULL);
}

/* How many slots of live processes (this one included) hold user_id. */
static int count_user(long long user_id)
{
	struct limits_file_info info;
	int64_t used = __atomic_load_n(&own.used, __ATOMIC_SEQ_CST);
	int count = 0;

	for (int64_t i = 0; i < used; i++)
		count += __atomic_load_n(&own.user[i], __ATOMIC_SEQ_CST) == user_id;
	pthread_mutex_lock(&peers.lock);
	refresh_peers();
	for (int i = 0; i < peers.n; i++) {
		const char *why = peer_read(i, &info);

		/* A bad file is not counted until it is good again: its owner
		 * restores it within a second (shm.h). */
		if (why)
			peer_skip(peers.p[i].pid, why);
		else
			count += limits_file_count(peers.scratch.data, &info, user_id);
	}
	pthread_mutex_unlock(&peers.lock);
	return count;
}

int limits_enter(long long user_id, int *slot)
{
	int i = -1;

	*slot = -1;
	if (!own.user)
		return 0;
	pthread_mutex_lock(&own.lock);
	if (own.nfree > 0) {
		i = own.free[--own.nfree];
		if (own.used <= i) { /* only grows, and only here */
			__atomic_store_n(&own.used, (int64_t)i + 1, __ATOMIC_SEQ_CST);
			if (own.map)
				__atomic_store_n(&own.map->used, (int64_t)i + 1, __ATOMIC_SEQ_CST);
		}
		/* Claim first, count second (see limits.h). */
		__atomic_store_n(&own.user[i], (int64_t)user_id, __ATOMIC_SEQ_CST);
		if (own.map)
			__atomic_store_n(&own.map->user[i], (int64_t)user_id, __ATOMIC_SEQ_CST);
	}
	pthread_mutex_unlock(&own.lock);
	if (i < 0)
		return 0; /* more than slots: the callers keep that from happening */
	*slot = i;
	if (count_user(user_id) > own.cap) {
		limits_leave(i);
		*slot = -1;
		return -1;
	}
	return 0;
}

void limits_leave(int slot)
{
	if (!own.user || slot < 0 || slot >= own.nslots)
		return;
	pthread_mutex_lock(&own.lock);
	__atomic_store_n(&own.user[slot], 0, __ATOMIC_SEQ_CST);
	if (own.map)
		__atomic_store_n(&own.map->user[slot], 0, __ATOMIC_SEQ_CST);
	own.free[own.nfree++] = slot;
	pthread_mutex_unlock(&own.lock);
}
