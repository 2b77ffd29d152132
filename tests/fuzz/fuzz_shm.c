/*
 * fuzz_shm — libFuzzer target for what a process does with another
 * process's shared file of arbitrary content and size (shm.h): a cap file
 * run/<kind>.<pid> through limits_file_check() and limits_file_count(),
 * a counter file metrics/<responder>.<pid> through metrics_file_parse()
 * and metrics_file_add().
 *
 * Invariants, for any bytes:
 *   - a cap file passes only with our magic, a pid, 1..LIMITS_SLOTS_MAX
 *     slots, a size of exactly header + 8 per slot and 0 <= used <= slots;
 *     then need = header + 8 * used <= size, and the count of a user is
 *     the number of used slots holding it (an independent count here);
 *   - a prefix of the file (what a reader got so far) gives the same
 *     verdict and need as the whole when it holds the header, fails
 *     when it does not, and counts the same once it holds `need` bytes;
 *   - a counter file passes only at exactly sizeof(struct metrics_file)
 *     bytes with magic, version and size field right; then its copy is
 *     the bytes, and adding it to a zero sum gives its counters (the gauge
 *     only when live); adding it again doubles them (mod 2^64);
 *   - nothing reads outside the bytes given (ASan).
 *
 * Input: byte 0 holds flags: bit 0 puts the right magic in place (and for
 * the counter file the version and size field, at its size: the rest cut
 * or zero-padded), bit 1 makes the cap file's slot count agree with its
 * length, bits 2-7 scale the prefix length; byte 1 picks the user counted
 * (the value of a used slot, or 0); the rest is the file.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limits.h"
#include "metrics.h"

#define FUZZ_ASSERT(cond)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_shm: invariant failed at %s:%d: %s\n", __FILE__,     \
				__LINE__, #cond);                                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static int64_t at64(const unsigned char *p)
{
	int64_t v;

	memcpy(&v, p, sizeof v);
	return v;
}

static void check_limits(unsigned char *file, size_t n, unsigned flags, unsigned pick)
{
	struct limits_file_info info, part;
	long long user = 0;
	size_t cut;
	int rc, count = 0;

	if (flags & 1 && n >= 4) {
		uint32_t magic = LIMITS_MAGIC;

		memcpy(file, &magic, sizeof magic);
	}
	if (flags & 2 && n >= LIMITS_HEADER + 8) {
		int64_t slots = (int64_t)(n - LIMITS_HEADER) / 8;

		n = LIMITS_HEADER + (size_t)slots * 8;
		memcpy(file + 8, &slots, sizeof slots);
	}
	rc = limits_file_check(file, n, n, &info);
	FUZZ_ASSERT(rc == 0 || rc == -1);
	FUZZ_ASSERT(rc == 0 ? info.why == NULL : info.why != NULL);
	if (rc == 0) {
		uint32_t magic;

		memcpy(&magic, file, sizeof magic);
		FUZZ_ASSERT(magic == LIMITS_MAGIC && info.pid > 0);
		FUZZ_ASSERT(info.nslots >= 1 && info.nslots <= LIMITS_SLOTS_MAX);
		FUZZ_ASSERT(n == LIMITS_HEADER + (size_t)info.nslots * 8);
		FUZZ_ASSERT(info.used >= 0 && info.used <= info.nslots);
		FUZZ_ASSERT(info.need == LIMITS_HEADER + (size_t)info.used * 8 && info.need <= n);
		if (info.used > 0)
			user = at64(file + LIMITS_HEADER + 8 * (pick % (unsigned)info.used));
		for (int64_t i = 0; i < info.used; i++)
			count += at64(file + LIMITS_HEADER + 8 * i) == user;
		FUZZ_ASSERT(limits_file_count(file, &info, user) == count);
	}

	/* What a reader that got only the first `cut` bytes makes of it. */
	cut = n * (flags >> 2) / 63;
	if (limits_file_check(file, cut, n, &part) == 0) {
		FUZZ_ASSERT(rc == 0 && cut >= LIMITS_HEADER);
		FUZZ_ASSERT(part.need == info.need && part.used == info.used &&
			    part.nslots == info.nslots && part.pid == info.pid);
		if (cut >= part.need)
			FUZZ_ASSERT(limits_file_count(file, &part, user) == count);
	} else {
		FUZZ_ASSERT(rc == -1 || cut < LIMITS_HEADER);
	}
}

/* file: n bytes; with flags bit 0 they are first cut or zero-padded to a
 * counter file's size, under the right magic, version and size field. */
static void check_metrics(const unsigned char *bytes, size_t n, unsigned flags)
{
	const size_t size = sizeof(struct metrics_file);
	const size_t at = offsetof(struct metrics_file, requests);
	struct metrics_file f, sum, twice;
	unsigned char *file;
	uint64_t got, want;
	int rc;

	if (flags & 1) {
		uint32_t head[2] = {METRICS_MAGIC, METRICS_VERSION}, sz = (uint32_t)size;

		file = calloc(1, size);
		FUZZ_ASSERT(file);
		memcpy(file, bytes, n < size ? n : size);
		memcpy(file, head, sizeof head);
		memcpy(file + 12, &sz, sizeof sz);
		n = size;
	} else {
		file = malloc(n ? n : 1);
		FUZZ_ASSERT(file);
		memcpy(file, bytes, n);
	}
	rc = metrics_file_parse(file, n, &f);
	FUZZ_ASSERT(rc == 0 || rc == -1);
	if (rc < 0)
		goto out;
	FUZZ_ASSERT(n == size && memcmp(&f, file, size) == 0);
	FUZZ_ASSERT(f.magic == METRICS_MAGIC && f.version == METRICS_VERSION && f.size == size);
	FUZZ_ASSERT(f.pid >= 0);
	for (int live = 0; live < 2; live++) {
		memset(&sum, 0, sizeof sum);
		metrics_file_add(&sum, &f, live);
		twice = sum;
		metrics_file_add(&twice, &f, live);
		for (size_t off = at; off < size; off += 8) {
			int gauge = off == offsetof(struct metrics_file, active_streams);

			memcpy(&got, (const char *)&sum + off, 8);
			memcpy(&want, file + off, 8);
			FUZZ_ASSERT(got == (gauge && !live ? 0 : want));
			memcpy(&got, (const char *)&twice + off, 8);
			FUZZ_ASSERT(got == (gauge && !live ? 0 : 2 * want));
		}
		FUZZ_ASSERT(memcmp(&sum, &(struct metrics_file){0}, at) ==
			    0); /* header left alone */
	}
out:
	free(file);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	unsigned char *file;
	size_t n;

	if (size < 2)
		return 0;
	n = size - 2;
	/* An exact-size heap copy each: ASan sees any read past the end. */
	file = malloc(n ? n : 1);
	FUZZ_ASSERT(file);
	memcpy(file, data + 2, n);
	check_limits(file, n, data[0], data[1]);
	free(file);
	check_metrics(data + 2, n, data[0]);
	return 0;
}
