/*
 * fuzz_throttle — libFuzzer target for throttle_key(), the keys failed
 * logins are counted under: the client chooses the username (any length
 * a 1 MiB body holds) and, through nginx, nothing of the address.
 *
 * Invariants: every key is small (a part past USERNAME_MAX bytes becomes
 * "#" and 64 hex digits) and starts with its kind's prefix; the same
 * input gives the same key; two different usernames give different keys
 * (unless one is itself a "#<64 hex>" stand-in, which no real username
 * can be: '#' is not allowed in one); the pair key splits back at its
 * first '|' into the address part and the username part.
 *
 * Input: the address up to the first '\n' (no '|': nginx's REMOTE_ADDR
 * is an IP address), then two usernames separated by the next '\n'.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "throttle.h"
#include "users.h"

#define FUZZ_ASSERT(cond)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_throttle: invariant failed at %s:%d: %s\n",          \
				__FILE__, __LINE__, #cond);                                        \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#define KEY_MAX (5 + 2 * 65 + 1 + 2 * USERNAME_MAX)

/* throttle.c is linked with db.c, which embeds the schema; never used here. */
const char db_schema_sql[] = "";

static char *take(const uint8_t **p, const uint8_t *end, int stop_at_nl)
{
	const uint8_t *nl = stop_at_nl ? memchr(*p, '\n', (size_t)(end - *p)) : NULL;
	size_t n = (size_t)((nl ? nl : end) - *p);
	char *s = malloc(n + 1);

	FUZZ_ASSERT(s);
	memcpy(s, *p, n);
	s[n] = '\0';
	*p += n + (nl ? 1 : 0);
	return s;
}

static int stand_in(const char *s)
{
	size_t i;

	if (strlen(s) != 65 || s[0] != '#')
		return 0;
	for (i = 1; i < 65; i++)
		if (!strchr("0123456789abcdef", s[i]))
			return 0;
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data, *end = data + size;
	char *addr = take(&p, end, 1), *u1 = take(&p, end, 1), *u2 = take(&p, end, 0);
	struct buf a, b, c;

	buf_init(&a, 4096);
	buf_init(&b, 4096);
	buf_init(&c, 4096);
	if (!strchr(addr, '|')) {
		FUZZ_ASSERT(throttle_key(&a, THROTTLE_PAIR, u1, addr) == 0);
		FUZZ_ASSERT(a.len <= KEY_MAX && memcmp(a.data, "pair:", 5) == 0);
		{
			const char *bar = strchr(a.data + 5, '|');
			FUZZ_ASSERT(bar);
			FUZZ_ASSERT(throttle_key(&c, THROTTLE_ADDR, u1, addr) == 0);
			FUZZ_ASSERT((size_t)(bar - a.data - 5) == c.len - 5 &&
				    memcmp(a.data + 5, c.data + 5, c.len - 5) == 0);
		}
		FUZZ_ASSERT(throttle_key(&b, THROTTLE_PAIR, u1, addr) == 0);
		FUZZ_ASSERT(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
	}
	FUZZ_ASSERT(throttle_key(&a, THROTTLE_USER, u1, addr) == 0);
	FUZZ_ASSERT(throttle_key(&b, THROTTLE_USER, u2, addr) == 0);
	FUZZ_ASSERT(a.len <= KEY_MAX && b.len <= KEY_MAX && memcmp(a.data, "user:", 5) == 0);
	if (!stand_in(u1) && !stand_in(u2))
		FUZZ_ASSERT((strcmp(u1, u2) == 0) ==
			    (a.len == b.len && memcmp(a.data, b.data, a.len) == 0));
	buf_free(&a);
	buf_free(&b);
	buf_free(&c);
	free(addr);
	free(u1);
	free(u2);
	return 0;
}
