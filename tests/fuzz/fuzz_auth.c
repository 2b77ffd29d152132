/*
 * fuzz_auth — libFuzzer target for request_split_bearer(), the Authorization
 * header split as SimpleJWT does it (header.split(): blank-separated
 * words; "Bearer" and exactly one more word).
 *
 * Invariants: the result agrees with an independent split of the same
 * header (on spaces and tabs); a token returned lies inside the header,
 * holds no blank and is not empty; nothing is read past the NUL.
 *
 * Input: the header (made NUL-terminated; bytes after a NUL are ignored,
 * as libfcgi's C strings would).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"

#define FUZZ_ASSERT(cond)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_auth: invariant failed at %s:%d: %s\n", __FILE__,    \
				__LINE__, #cond);                                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static int blank(char c)
{
	return c == ' ' || c == '\t';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *h = malloc(size + 1);
	const char *word[3] = {NULL, NULL, NULL}, *tok = NULL;
	size_t wlen[3] = {0, 0, 0}, len = 0, i = 0, n = 0;
	int rc, want;

	FUZZ_ASSERT(h);
	memcpy(h, data, size);
	h[size] = '\0';
	/* The reference: the first three words. */
	while (h[i] && n < 3) {
		while (h[i] && blank(h[i]))
			i++;
		if (!h[i])
			break;
		word[n] = h + i;
		while (h[i] && !blank(h[i]))
			i++;
		wlen[n] = (size_t)(h + i - word[n]);
		n++;
	}
	want = n == 0 || wlen[0] != 6 || memcmp(word[0], "Bearer", 6) != 0 ? 1 : n == 2 ? 0 : -1;
	rc = request_split_bearer(h, &tok, &len);
	FUZZ_ASSERT(rc == want);
	if (rc == 0) {
		FUZZ_ASSERT(tok == word[1] && len == wlen[1] && len > 0);
		FUZZ_ASSERT(tok >= h && tok + len <= h + strlen(h));
		for (i = 0; i < len; i++)
			FUZZ_ASSERT(!blank(tok[i]) && tok[i]);
	}
	free(h);
	return 0;
}
