/*
 * limits — cross-process stream cap (see limits.h).
 */
#include "limits.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

#define LIMITS_MAGIC 0x6a6c696du /* "jlim" */

struct slots_file {
	uint32_t magic;
	int32_t pid;
	int64_t nslots;
	int64_t user[]; /* user id per worker slot, 0: free */
};

/* Mapped once before threads start; slots are touched atomically. */
static struct slots_file *mine;
static size_t mine_size;

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

			if (pid && !alive(pid) &&
			    path_for(stale, sizeof stale, de->d_name) == 0)
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
	mine->pid = (int32_t)getpid();
	mine->nslots = slots;
	__atomic_store_n(&mine->magic, LIMITS_MAGIC, __ATOMIC_RELEASE);
	return 0;
}

void limits_close(void)
{
	char path[4096], name[64];

	if (!mine)
		return;
	munmap(mine, mine_size);
	mine = NULL;
	snprintf(name, sizeof name, "streams.%d", (int)getpid());
	if (path_for(path, sizeof path, name) == 0)
		unlink(path);
}

/* How many slots of live processes hold user_id. */
static int count_user(long long user_id)
{
	char path[4096];
	struct dirent *de;
	DIR *dir;
	int count = 0;

	if (path_for(path, sizeof path, "") < 0 || !(dir = opendir(path)))
		return 0;
	while ((de = readdir(dir)) != NULL) {
		const struct slots_file *f;
		struct stat st;
		pid_t pid = pid_of_name(de->d_name);
		int fd;

		if (!pid || (pid != getpid() && !alive(pid)) ||
		    path_for(path, sizeof path, de->d_name) < 0)
			continue;
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (fstat(fd, &st) < 0 || (size_t)st.st_size < sizeof *f) {
			close(fd);
			continue;
		}
		f = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
		close(fd);
		if (f == MAP_FAILED)
			continue;
		if (__atomic_load_n(&f->magic, __ATOMIC_ACQUIRE) == LIMITS_MAGIC &&
		    sizeof *f + (size_t)f->nslots * sizeof f->user[0] <= (size_t)st.st_size)
			for (int64_t i = 0; i < f->nslots; i++)
				count += __atomic_load_n(&f->user[i], __ATOMIC_ACQUIRE) == user_id;
		munmap((void *)f, (size_t)st.st_size);
	}
	closedir(dir);
	return count;
}

int limits_stream_enter(int slot, long long user_id)
{
	if (!mine || slot < 0 || slot >= mine->nslots)
		return 0;
	/* Claim first, count second (see limits.h). */
	__atomic_store_n(&mine->user[slot], (int64_t)user_id, __ATOMIC_SEQ_CST);
	if (count_user(user_id) > config.max_streams_per_user) {
		limits_stream_leave(slot);
		return -1;
	}
	return 0;
}

void limits_stream_leave(int slot)
{
	if (mine && slot >= 0 && slot < mine->nslots)
		__atomic_store_n(&mine->user[slot], 0, __ATOMIC_SEQ_CST);
}
