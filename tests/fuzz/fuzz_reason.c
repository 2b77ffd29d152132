/*
 * fuzz_reason — libFuzzer target for upstream_http_reason(): the body of
 * an upstream's non-2xx answer (the model server's, or anything a broken
 * proxy in front of it sends) turned into the reason the user reads.
 *
 * Invariants: the reason is never empty, fits the room it is given (cut
 * between characters), is valid UTF-8 without NUL; the server's text S is
 * that of {"error": S} (Ollama), else {"error": {"message": S}} (OpenAI)
 * or {"message": S} (vLLM), a non-empty string; when S is clean and fits
 * the reason is S exactly; without an S it names the status.
 *
 * Input: byte 0 picks the room (8 to 512 bytes), bytes 1-2 the status;
 * the rest is the body.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "upstream.h"
#include "utf8.h"

#define FUZZ_ASSERT(cond)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_reason: invariant failed at %s:%d: %s\n", __FILE__,  \
				__LINE__, #cond);                                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char out[512], *body;
	size_t cap, n;
	long status;
	cJSON *o;
	const cJSON *err, *msg, *said = NULL;
	int rc;

	if (size < 3)
		return 0;
	cap = 8 + (size_t)data[0] * 504 / 255;
	status = (long)(data[1] << 8 | data[2]) % 1000;
	n = size - 3;
	body = malloc(n ? n : 1); /* exact size: a read past n is caught */
	FUZZ_ASSERT(body);
	memcpy(body, data + 3, n);
	memset(out, 0x5a, sizeof out);
	rc = upstream_http_reason(body, n, status, out, cap);
	FUZZ_ASSERT(memchr(out, '\0', cap));
	FUZZ_ASSERT(out[0] != '\0');
	FUZZ_ASSERT(utf8_valid(out, strlen(out)));
	o = cJSON_ParseWithLength(body, n);
	err = cJSON_GetObjectItemCaseSensitive(o, "error");
	msg = cJSON_GetObjectItemCaseSensitive(cJSON_IsObject(err) ? err : o, "message");
	if (cJSON_IsString(err) && err->valuestring[0])
		said = err;
	else if (cJSON_IsString(msg) && msg->valuestring[0])
		said = msg;
	if (said && utf8_valid(said->valuestring, strlen(said->valuestring)) &&
	    strlen(said->valuestring) < cap)
		FUZZ_ASSERT(strcmp(out, said->valuestring) == 0);
	FUZZ_ASSERT(rc == (said != NULL)); /* 1: the body's own reason */
	if (!said && cap > 40)
		FUZZ_ASSERT(strstr(out, "HTTP") != NULL);
	cJSON_Delete(o);
	free(body);
	return 0;
}
