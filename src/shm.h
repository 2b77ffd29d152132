/*
 * shm — the small files processes publish to each other (metrics
 * counters, per-user cap slots), made safe to share: whatever happens to
 * one of them, no process faults.
 *
 * Two rules.  A process maps only its own file (read-write, MAP_SHARED),
 * so its hot path stays plain memory operations; files of other
 * processes are never mapped but read with pread() into a buffer and
 * validated there (size, magic, header), so a short, truncated or garbage
 * file is a short read or a failed check, never a SIGBUS.
 *
 * What can still fault is a process's own file truncated under its
 * mapping.  A SIGBUS handler absorbs a fault inside a guarded mapping: it
 * maps anonymous memory over the rest of it (MAP_FIXED), so the access
 * that faulted and those that follow go on in private memory, and flags
 * the file.  A watcher thread looks at every own file once a second — a
 * fault absorbed, its size, whether its name still leads to it, its header
 * — logs what it finds and puts the file back from the owner's image of
 * it (size, content, mapping).  Until then the owner counts privately.
 * Faults anywhere else keep the disposition they had.
 *
 * Not chosen: sealing (memfd + F_SEAL_SHRINK) leaves nothing in the state
 * directory for the readers to find, and they are unrelated processes;
 * writing one's own file with pwrite() would put a system call on every
 * counter increment.
 */
#ifndef JARVAS_SHM_H
#define JARVAS_SHM_H

#include <pthread.h>
#include <stddef.h>
#include <sys/types.h>

#include "buf.h"

struct shm_file {
	/* Set by the owner before shm_file_open(). */
	const char *what; /* for log lines: "metrics", "stream cap" */
	/* Write what the file must hold (size bytes) to image. */
	void (*image)(void *image, size_t size);
	/* 1 when the mapped content still is ours, else 0. */
	int (*intact)(const void *map, size_t size);
	/* Held by the watcher while it checks and restores the file (it
	 * calls the two above); the owner holds it around writes a restore
	 * must not lose and while it fills a new file.  NULL: none. */
	pthread_mutex_t *lock;

	/* Owned by shm. */
	char *path;
	int fd;
	void *map; /* never moves: a restore maps over it */
	size_t size;
	int guard;   /* index in the fault guard's table */
	int failing; /* the last restore failed (and was logged) */
};

/* Create path (keep: or go on with the file already there, same size) and
 * map it read-write at f->map, guarded.  0, or -1 (logged). */
int shm_file_open(struct shm_file *f, const char *path, size_t size, int keep);
/* Unguard and unmap; unlink_it: remove the file too. */
void shm_file_close(struct shm_file *f, int unlink_it);

/* Read up to want bytes from the start of fd into b (replacing what it
 * held).  The bytes read (fewer at end of file), or -1. */
ssize_t shm_read(int fd, struct buf *b, size_t want);

/* For each entry of dir other than "." and "..", fn(path, name, ctx). */
void shm_scan(const char *dir, void (*fn)(const char *path, const char *name, void *ctx),
	      void *ctx);
/* The pid of a "<prefix>.<pid>" name (prefix NULL: any "<word>.<pid>"),
 * or 0. */
pid_t shm_name_pid(const char *name, const char *prefix);
int shm_pid_alive(pid_t pid);
/* Log that the file at path is not read, and why; once per path in this
 * process. */
void shm_skip(const char *path, const char *why);

#endif
