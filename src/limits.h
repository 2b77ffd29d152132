/*
 * limits — per-user caps that must hold across every process of a
 * responder: at most config.max_streams_per_user open streams
 * (chat_stream) and config.max_chats_per_user chats in progress (chat).
 *
 * Each such process publishes a file $STATE/run/<kind>.<pid> (kind
 * "streams" or "chats") with one slot per stream or chat it can hold
 * (config.streams_max, or one per worker thread), each holding the user
 * id in it (0: none).  Admitting writes the slot first and then counts
 * that user's slots in every live process, so two racing requests can
 * both be refused but never both admitted past the cap.
 *
 * A process counts its own slots from its private copy (the file is what
 * it publishes) and other processes' from their files, read and checked,
 * never mapped (shm.h): a file that is short, truncated or not one of
 * ours is skipped and logged, and a process whose own file is damaged
 * keeps its own cap and puts the file back within a second.  A process
 * that dies takes its slots with it: files of dead pids are not counted,
 * and are removed when found (at start and while counting).  A new
 * process is seen within a second.
 */
#ifndef JARVAS_LIMITS_H
#define JARVAS_LIMITS_H

#include <stddef.h>
#include <stdint.h>

/* The file: a 24-byte header (magic, pid, nslots, used: slots at and
 * past `used` have never held anything), then nslots 64-bit user ids;
 * native byte order, only ever read on the machine that wrote it. */
#define LIMITS_MAGIC 0x6a6c696du /* "jlim" */
#define LIMITS_HEADER 24
#define LIMITS_SLOTS_MAX 1000000

struct limits_file_info {
	int32_t pid;
	int64_t nslots, used;
	size_t need;	 /* bytes from the start that hold every used slot */
	const char *why; /* set when the check fails */
};

/* What a reader makes of n bytes read from the start of a file of
 * file_size bytes (the whole of it, or a prefix): 0 when its header is
 * one of ours and fits file_size, else -1 with info->why. */
int limits_file_check(const void *data, size_t n, size_t file_size, struct limits_file_info *info);
/* How many used slots hold user_id; data holds at least info->need bytes
 * of a file that passed limits_file_check(). */
int limits_file_count(const void *data, const struct limits_file_info *info, long long user_id);

/* Start counting this process's `kind` in `slots` slots against `cap` per
 * user.  0, or -1 (the cap then holds in this process only; logged). */
int limits_open(const char *kind, int slots, int cap);
void limits_close(void);

/* 0 admitted, with *slot to give back to limits_leave() (-1 when the cap
 * is not enforced here), or -1: the user already has `cap`. */
int limits_enter(long long user_id, int *slot);
void limits_leave(int slot);

#endif
