/*
 * limits — cross-process stream cap (see limits.h).
 */
#include "limits.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

#define LIMITS_MAGIC 0x6a6c696du /* "jlim" */

struct slots_file {
	uint32_t magic;
	int32_t pid;
	int64_t nslots;
	int64_t used;	/* atomic: slots [used, nslots) have never held a stream */
	int64_t user[]; /* user id per stream slot, 0: free */
};

/* Mapped once before threads start; slots are touched atomically. */
static struct slots_file *mine;
static size_t mine_size;

/* This process's free slots, a stack: the most recently freed is reused
 * first, so the slots in use stay few and low and a count scans only up
 * to `used`.  Guarded by spare.lock. */
static struct {
	pthread_mutex_t lock;
	int *free;
	int n;
} spare = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Other processes' files, mapped once and kept: mapping and unmapping on
 * every new stream cost more than the rest of a stream's start.  The list
 * is refreshed from the directory at most once a second, which is how
 * soon a new process is seen.  Guarded by peers.lock. */
#define MAX_PEERS 256
static struct {
	pthread_mutex_t lock;
	struct {
		pid_t pid;
		const struct slots_file *f;
		size_t size;
	} p[MAX_PEERS];
	int n;
	time_t refreshed;
} peers = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int path_for(char *out, size_t cap, const char *name)
{
	int n = snprintf(out, cap, "%s/run/%s", config.state_dir, name);
	return n > 0 && (size_t)n < cap ? 0 : -1;
}

static int alive(pid_t pid)
{
	return kill(pid, 0) == 0 || errno == EPERM;
}

/* pid of a "streams.<pid>" name, or 0. */
static pid_t pid_of_name(const char *name)
{
	char *end;
	long pid;

	if (strncmp(name, "streams.", 8) != 0)
		return 0;
	pid = strtol(name + 8, &end, 10);
	return *end == '\0' && pid > 0 ? (pid_t)pid : 0;
}

int limits_open(int slots)
{
	char path[4096], name[64];
	struct dirent *de;
	DIR *dir;
	int fd;

	/* Files of processes that died are only clutter: drop them. */
	if (path_for(path, sizeof path, "") == 0 && (dir = opendir(path)) != NULL) {
		while ((de = readdir(dir)) != NULL) {
			pid_t pid = pid_of_name(de->d_name);
			char stale[4096];

			if (pid && !alive(pid) && path_for(stale, sizeof stale, de->d_name) == 0)
				unlink(stale);
		}
		closedir(dir);
	}
	snprintf(name, sizeof name, "streams.%d", (int)getpid());
	if (path_for(path, sizeof path, name) < 0)
		return -1;
	mine_size = sizeof *mine + (size_t)slots * sizeof mine->user[0];
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)mine_size) < 0) {
		log_warn("stream cap off: %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	mine = mmap(NULL, mine_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (mine == MAP_FAILED) {
		mine = NULL;
		return -1;
	}
	spare.free = malloc((size_t)slots * sizeof *spare.free);
	if (!spare.free) {
		munmap(mine, mine_size);
		mine = NULL;
		return -1;
	}
	for (spare.n = 0; spare.n < slots; spare.n++)
		spare.free[spare.n] = slots - 1 - spare.n; /* slot 0 on top */
	mine->pid = (int32_t)getpid();
	mine->nslots = slots;
	__atomic_store_n(&mine->magic, LIMITS_MAGIC, __ATOMIC_RELEASE);
	return 0;
}

void limits_close(void)
{
	char path[4096], name[64];

	pthread_mutex_lock(&peers.lock);
	while (peers.n > 0) {
		peers.n--;
		munmap((void *)peers.p[peers.n].f, peers.p[peers.n].size);
	}
	peers.refreshed = 0;
	pthread_mutex_unlock(&peers.lock);
	if (!mine)
		return;
	munmap(mine, mine_size);
	mine = NULL;
	free(spare.free);
	spare.free = NULL;
	spare.n = 0;
	snprintf(name, sizeof name, "streams.%d", (int)getpid());
	if (path_for(path, sizeof path, name) == 0)
		unlink(path);
}

static int peer_known(pid_t pid)
{
	for (int i = 0; i < peers.n; i++)
		if (peers.p[i].pid == pid)
			return 1;
	return 0;
}

static void peer_map(pid_t pid, const char *path)
{
	const struct slots_file *f;
	struct stat st;
	int fd;

	if (peers.n == MAX_PEERS || (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return;
	if (fstat(fd, &st) < 0 || (size_t)st.st_size < sizeof *f) {
		close(fd);
		return;
	}
	f = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (f == MAP_FAILED)
		return;
	peers.p[peers.n].pid = pid;
	peers.p[peers.n].f = f;
	peers.p[peers.n].size = (size_t)st.st_size;
	peers.n++;
}

/* peers.lock held. */
static void refresh_peers(void)
{
	char path[4096];
	struct dirent *de;
	time_t now = time(NULL);
	DIR *dir;
	int i;

	if (now == peers.refreshed)
		return;
	peers.refreshed = now;
	for (i = 0; i < peers.n; i++) {
		if (alive(peers.p[i].pid))
			continue;
		munmap((void *)peers.p[i].f, peers.p[i].size);
		peers.p[i--] = peers.p[--peers.n];
	}
	if (path_for(path, sizeof path, "") < 0 || !(dir = opendir(path)))
		return;
	while ((de = readdir(dir)) != NULL) {
		pid_t pid = pid_of_name(de->d_name);

		if (pid && pid != getpid() && !peer_known(pid) && alive(pid) &&
		    path_for(path, sizeof path, de->d_name) == 0)
			peer_map(pid, path);
	}
	closedir(dir);
}

static int count_in(const struct slots_file *f, size_t size, long long user_id)
{
	int64_t used;
	int count = 0;

	if (__atomic_load_n(&f->magic, __ATOMIC_ACQUIRE) != LIMITS_MAGIC ||
	    sizeof *f + (size_t)f->nslots * sizeof f->user[0] > size)
		return 0;
	used = __atomic_load_n(&f->used, __ATOMIC_ACQUIRE);
	if (used > f->nslots)
		used = f->nslots;
	for (int64_t i = 0; i < used; i++)
		count += __atomic_load_n(&f->user[i], __ATOMIC_ACQUIRE) == user_id;
	return count;
}

/* How many slots of live processes (this one included) hold user_id. */
static int count_user(long long user_id)
{
	int count = count_in(mine, mine_size, user_id);

	pthread_mutex_lock(&peers.lock);
	refresh_peers();
	for (int i = 0; i < peers.n; i++)
		count += count_in(peers.p[i].f, peers.p[i].size, user_id);
	pthread_mutex_unlock(&peers.lock);
	return count;
}

int limits_stream_enter(long long user_id, int *slot)
{
	int i = -1;

	*slot = -1;
	if (!mine)
		return 0;
	pthread_mutex_lock(&spare.lock);
	if (spare.n > 0)
		i = spare.free[--spare.n];
	if (i >= 0 && mine->used <= i) /* only grows, and only here */
		__atomic_store_n(&mine->used, (int64_t)i + 1, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&spare.lock);
	if (i < 0)
		return 0; /* more streams than slots: relay.c keeps that from happening */
	/* Claim first, count second (see limits.h). */
	__atomic_store_n(&mine->user[i], (int64_t)user_id, __ATOMIC_SEQ_CST);
	*slot = i;
	if (count_user(user_id) > config.max_streams_per_user) {
		limits_stream_leave(i);
		*slot = -1;
		return -1;
	}
	return 0;
}

void limits_stream_leave(int slot)
{
	if (!mine || slot < 0 || slot >= mine->nslots)
		return;
	__atomic_store_n(&mine->user[slot], 0, __ATOMIC_SEQ_CST);
	pthread_mutex_lock(&spare.lock);
	spare.free[spare.n++] = slot;
	pthread_mutex_unlock(&spare.lock);
}
