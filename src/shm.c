/*
 * shm — own files mapped and guarded, other processes' files read (see
 * shm.h).
 *
 * The fault guard is a fixed table because the signal handler must find
 * an address in it without locks or allocation; a process has two own
 * files (metrics, one cap), so four entries are plenty.  Entries are
 * written with atomic stores under watch.lock and read atomically by the
 * handler, on whichever thread faulted.
 */
#include "shm.h"

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
#include <time.h>
#include <unistd.h>

#include "log.h"

#define SHM_GUARDS 4

static struct {
	uintptr_t start; /* 0: free entry */
	size_t len;
	int faulted; /* set by the handler, taken by the watcher */
} guards[SHM_GUARDS];

/* Written once, before the handler can run (pthread_once). */
static struct sigaction bus_before;
static uintptr_t page_mask;
static pthread_once_t bus_once = PTHREAD_ONCE_INIT;

/* The watcher and its files, same index as guards[].  Guarded by
 * watch.lock. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct shm_file *files[SHM_GUARDS];
	int n;
	int running, quit;
	pthread_t thread;
} watch = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* A fault inside a guarded mapping: its file was truncated.  Map zeroed
 * private memory over the rest of the mapping from the faulting page on;
 * returning retries the access, which now succeeds.  mmap() is a plain
 * system call here, safe in a handler whatever POSIX lists.  Any other
 * SIGBUS gets the disposition that was there before ours. */
static void on_bus(int sig, siginfo_t *si, void *uc)
{
	uintptr_t a = (uintptr_t)si->si_addr;
	int saved = errno;

	(void)uc;
	for (int i = 0; si->si_code > 0 && i < SHM_GUARDS; i++) {
		uintptr_t start = __atomic_load_n(&guards[i].start, __ATOMIC_ACQUIRE);
		size_t len = __atomic_load_n(&guards[i].len, __ATOMIC_RELAXED);
		uintptr_t page = a & page_mask;

		if (!start || a < start || a - start >= len)
			continue;
		if (mmap((void *)page, start + len - page, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
			break;
		__atomic_store_n(&guards[i].faulted, 1, __ATOMIC_RELEASE);
		errno = saved;
		return;
	}
	sigaction(SIGBUS, &bus_before, NULL);
	if (si->si_code <= 0)
		raise(sig); /* sent by someone, not a fault: deliver it as before */
	errno = saved;
}

static void bus_install(void)
{
	struct sigaction sa;

	page_mask = ~((uintptr_t)sysconf(_SC_PAGESIZE) - 1);
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_bus;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &bus_before);
}

static int write_all(int fd, const void *p, size_t n)
{
	size_t done = 0;

	while (done < n) {
		ssize_t w = pwrite(fd, (const char *)p + done, n - done, (off_t)done);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		done += (size_t)w;
	}
	return 0;
}

/* Put the file back: the owner's image of it, at its path, mapped where
 * it was.  renew: the path no longer leads to our file, make a new one.
 * f->lock held.  Increments made between the image and the new mapping
 * are lost (a handful at most); slot writes are not, the owner takes the
 * lock for them.  0 or -1. */
static int restore(struct shm_file *f, int renew)
{
	void *image = malloc(f->size);
	int fd = f->fd, rc = -1;

	if (!image)
		return -1;
	f->image(image, f->size);
	if (renew) {
		unlink(f->path);
		fd = open(f->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0)
			goto out;
	}
	if (ftruncate(fd, (off_t)f->size) < 0 || write_all(fd, image, f->size) < 0)
		goto out;
	/* Faults until now are mended by the new mapping; one that races it
	 * is seen next time. */
	__atomic_store_n(&guards[f->guard].faulted, 0, __ATOMIC_RELEASE);
	if (mmap(f->map, f->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) ==
	    MAP_FAILED) {
		/* The old mapping may be gone: private memory, never a hole. */
		mmap(f->map, f->size, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		memcpy(f->map, image, f->size);
		goto out;
	}
	rc = 0;
out:
	if (rc == 0 && fd != f->fd) {
		close(f->fd);
		f->fd = fd;
	} else if (rc < 0 && fd != f->fd && fd >= 0) {
		close(fd);
	}
	free(image);
	return rc;
}

/* watch.lock held. */
static void check(struct shm_file *f)
{
	struct stat st, named;
	const char *why = NULL;
	int renew = 0, rc = 0, err = 0;

	if (f->lock)
		pthread_mutex_lock(f->lock);
	if (__atomic_exchange_n(&guards[f->guard].faulted, 0, __ATOMIC_ACQ_REL))
		why = "was truncated under its mapping (the fault was absorbed)";
	if (fstat(f->fd, &st) < 0) {
		why = NULL;
	} else if (stat(f->path, &named) < 0 || named.st_ino != st.st_ino ||
		   named.st_dev != st.st_dev) {
		why = "was removed or replaced";
		renew = 1;
	} else if (!why && (size_t)st.st_size != f->size) {
		why = "was truncated or resized";
	} else if (!why && !f->intact(f->map, f->size)) {
		why = "was overwritten";
	}
	if (why && (rc = restore(f, renew)) < 0)
		err = errno;
	if (f->lock)
		pthread_mutex_unlock(f->lock);
	if (why && rc == 0)
		log_warn("%s file %s %s; restored it", f->what, f->path, why);
	else if (why && !f->failing)
		log_warn("%s file %s %s; cannot restore it (%s): this process counts on in "
			 "private memory and retries every second",
			 f->what, f->path, why, strerror(err));
	f->failing = why && rc < 0;
}

static void *watcher(void *arg)
{
	struct timespec until;

	(void)arg;
	pthread_mutex_lock(&watch.lock);
	while (!watch.quit) {
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += 1;
		while (!watch.quit && pthread_cond_timedwait(&watch.wake, &watch.lock, &until) == 0)
			;
		for (int i = 0; !watch.quit && i < SHM_GUARDS; i++)
			if (watch.files[i])
				check(watch.files[i]);
	}
	pthread_mutex_unlock(&watch.lock);
	return NULL;
}

/* watch.lock held.  Signals are for the main thread (server.c), except
 * the synchronous ones: a blocked SIGBUS on a fault kills the process. */
static int watcher_start(void)
{
	pthread_condattr_t ca;
	sigset_t all, old;
	int rc;

	if (watch.running)
		return 0;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&watch.wake, &ca);
	pthread_condattr_destroy(&ca);
	sigfillset(&all);
	sigdelset(&all, SIGBUS);
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGFPE);
	sigdelset(&all, SIGILL);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	watch.quit = 0;
	rc = pthread_create(&watch.thread, NULL, watcher, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0) {
		pthread_cond_destroy(&watch.wake);
		errno = rc;
		return -1;
	}
	watch.running = 1;
	return 0;
}

static int guard_add(struct shm_file *f)
{
	int i;

	pthread_once(&bus_once, bus_install);
	pthread_mutex_lock(&watch.lock);
	for (i = 0; i < SHM_GUARDS && watch.files[i]; i++)
		;
	if (i == SHM_GUARDS || watcher_start() < 0) {
		pthread_mutex_unlock(&watch.lock);
		if (i == SHM_GUARDS)
			errno = ENFILE;
		return -1;
	}
	__atomic_store_n(&guards[i].faulted, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&guards[i].len, f->size, __ATOMIC_RELAXED);
	__atomic_store_n(&guards[i].start, (uintptr_t)f->map, __ATOMIC_RELEASE);
	watch.files[i] = f;
	watch.n++;
	f->guard = i;
	pthread_mutex_unlock(&watch.lock);
	return 0;
}

static void guard_remove(struct shm_file *f)
{
	int stop;

	pthread_mutex_lock(&watch.lock);
	__atomic_store_n(&guards[f->guard].start, 0, __ATOMIC_RELEASE);
	watch.files[f->guard] = NULL;
	f->guard = -1;
	stop = --watch.n == 0 && watch.running;
	if (stop) {
		watch.quit = 1;
		watch.running = 0;
		pthread_cond_signal(&watch.wake);
	}
	pthread_mutex_unlock(&watch.lock);
	if (stop) {
		pthread_join(watch.thread, NULL);
		pthread_cond_destroy(&watch.wake);
	}
}

int shm_file_open(struct shm_file *f, const char *path, size_t size, int keep)
{
	struct stat st;
	void *map = MAP_FAILED;
	int fd = -1;

	f->fd = -1;
	f->map = NULL;
	f->size = size;
	f->guard = -1;
	f->failing = 0;
	f->path = strdup(path);
	if (!f->path)
		goto fail;
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | (keep ? 0 : O_TRUNC), 0600);
	if (fd < 0 || fstat(fd, &st) < 0 ||
	    ((size_t)st.st_size != size && ftruncate(fd, (off_t)size) < 0))
		goto fail;
	map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		goto fail;
	f->fd = fd;
	f->map = map;
	if (guard_add(f) < 0)
		goto fail;
	return 0;
fail:
	log_warn("%s: %s: %s", f->what, path, strerror(errno));
	if (map != MAP_FAILED)
		munmap(map, size);
	if (fd >= 0)
		close(fd);
	free(f->path);
	f->path = NULL;
	f->fd = -1;
	f->map = NULL;
	return -1;
}

void shm_file_close(struct shm_file *f, int unlink_it)
{
	if (!f->map)
		return;
	guard_remove(f);
	munmap(f->map, f->size);
	close(f->fd);
	if (unlink_it)
		unlink(f->path);
	free(f->path);
	f->path = NULL;
	f->map = NULL;
	f->fd = -1;
}

ssize_t shm_read(int fd, struct buf *b, size_t want)
{
	size_t got = 0;

	buf_reset(b);
	if (buf_reserve(b, want) != BUF_OK)
		return -1;
	while (got < want) {
		ssize_t n = pread(fd, b->data + got, want - got, (off_t)got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	b->len = got;
	b->data[got] = '\0';
	return (ssize_t)got;
}

void shm_scan(const char *dir, void (*fn)(const char *path, const char *name, void *ctx), void *ctx)
{
	struct buf path;
	struct dirent *de;
	DIR *d = opendir(dir);

	if (!d)
		return;
	buf_init(&path, 8192);
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		buf_reset(&path);
		if (buf_printf(&path, "%s/%s", dir, de->d_name) == BUF_OK)
			fn(buf_str(&path), de->d_name, ctx);
	}
	buf_free(&path);
	closedir(d);
}

pid_t shm_name_pid(const char *name, const char *prefix)
{
	const char *dot = strrchr(name, '.'), *p;
	long pid = 0;

	if (!dot || dot == name || !dot[1])
		return 0;
	if (prefix &&
	    ((size_t)(dot - name) != strlen(prefix) || strncmp(name, prefix, strlen(prefix)) != 0))
		return 0;
	for (p = name; p < dot; p++)
		if (!((*p >= 'a' && *p <= 'z') || *p == '_'))
			return 0;
	for (p = dot + 1; *p; p++) {
		if (*p < '0' || *p > '9' || pid > 4194304) /* pid_max can be no higher */
			return 0;
		pid = pid * 10 + (*p - '0');
	}
	return pid > 0 && pid <= 4194304 ? (pid_t)pid : 0;
}

int shm_pid_alive(pid_t pid)
{
	return kill(pid, 0) == 0 || errno == EPERM;
}

/* Paths already logged by shm_skip(), NUL-separated.  Bounded: past it,
 * files are still skipped, only no longer named.  Guarded by skipped.lock. */
static struct {
	pthread_mutex_t lock;
	struct buf names;
} skipped = {.lock = PTHREAD_MUTEX_INITIALIZER, .names = {.max = 64 * 1024}};

void shm_skip(const char *path, const char *why)
{
	size_t n = strlen(path) + 1;
	int seen = 0;

	pthread_mutex_lock(&skipped.lock);
	for (size_t at = 0; at < skipped.names.len && !seen;
	     at += strlen(skipped.names.data + at) + 1)
		seen = strcmp(skipped.names.data + at, path) == 0;
	if (!seen && buf_append(&skipped.names, path, n) != BUF_OK)
		seen = 1;
	pthread_mutex_unlock(&skipped.lock);
	if (!seen)
		log_warn("skipping %s: %s", path, why);
}
