/*
 * fuzz_body — libFuzzer target for request_decode_body(): a request body
 * and its Content-Type turned into the cJSON object handlers see.
 *
 * Invariants (API.md: every bad input gets a 4xx with a reason, and what
 * reaches a handler is NUL-free UTF-8):
 *   - the status is 0, 400 or 415 (500 only for out-of-memory, never
 *     expected here), *data is set exactly when it is 0;
 *   - on failure the reason is non-empty, NUL-terminated within its
 *     buffer and printable ASCII (a 415 echoes a client header);
 *   - on success *data is an object whose keys and strings, at every depth,
 *     are valid UTF-8 without NUL; a JSON body has no duplicate top-level
 *     key and at most 64 fields; a form body yields only string values;
 *   - a JSON body that is accepted is exactly one JSON value: cJSON read
 *     all of it, leaving nothing but whitespace, and no string in it holds
 *     a raw control byte; a clean object of at most 64 distinct keys in
 *     valid UTF-8, without "\u0000" or raw control bytes in strings, is
 *     accepted;
 *   - the media type decides: form, JSON (also when absent or empty), or
 *     415 for anything else ("application/jsonp" is not JSON).
 *
 * Input: byte 0 (low 3 bits) picks the Content-Type; type 7 takes it from
 * the input up to the first '\n'.  The rest is the body, handed over in an
 * exact-size heap copy with no NUL after it, so a read past n is caught
 * (request_parse_body() passes a buf, which has a NUL after it; build with
 * -DFUZZ_BODY_NUL_TERMINATED to give the body one too).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "request.h"

#define FUZZ_ASSERT(cond)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_body: invariant failed at %s:%d: %s\n", __FILE__,    \
				__LINE__, #cond);                                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static const char *const types[] = {
	NULL,
	"",
	"application/json",
	"application/json; charset=utf-8",
	"application/x-www-form-urlencoded",
	"application/x-www-form-urlencoded; charset=UTF-8",
	"Application/JSON",
};

/* Content-Type names media type `type`: optional blanks around it, then
 * the end or ';' and parameters; the type is case-insensitive. */
static int media_type_is(const char *value, const char *type)
{
	size_t n = strlen(type);

	if (!value)
		return 0;
	value += strspn(value, " \t");
	if (strncasecmp(value, type, n) != 0)
		return 0;
	value += n;
	value += strspn(value, " \t");
	return *value == '\0' || *value == ';';
}

static int is_form(const char *type)
{
	return media_type_is(type, "application/x-www-form-urlencoded");
}

/* No Content-Type, or an empty one, is read as JSON. */
static int is_json(const char *type)
{
	return !type || !*type || media_type_is(type, "application/json");
}

static void check_string(const char *s)
{
	FUZZ_ASSERT(s);
	FUZZ_ASSERT(utf8_valid(s, strlen(s)));
}

/* Every key and string at every depth (cJSON stops at 1000 levels). */
static void check_tree(const cJSON *obj)
{
	const cJSON *item;

	for (item = obj->child; item; item = item->next) {
		if (item->string)
			check_string(item->string);
		if (cJSON_IsString(item))
			check_string(item->valuestring);
		if (item->child)
			check_tree(item);
	}
}

static int has_duplicate_key(const cJSON *obj)
{
	const cJSON *a, *b;

	for (a = obj->child; a; a = a->next)
		for (b = a->next; b; b = b->next)
			if (strcmp(a->string, b->string) == 0)
				return 1;
	return 0;
}

static int only_whitespace(const char *p, const char *end)
{
	for (; p < end; p++)
		if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
			return 0;
	return 1;
}

/* A byte below 0x20 inside a string: JSON (RFC 8259) requires it escaped,
 * though cJSON lets it through. */
static int raw_control_in_string(const char *s, size_t n)
{
	int in_string = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (!in_string)
			in_string = c == '"';
		else if (c == '"')
			in_string = 0;
		else if (c < 0x20)
			return 1;
		else if (c == '\\')
			i++;
	}
	return 0;
}

static int contains(const char *p, size_t n, const char *needle)
{
	return memmem(p, n, needle, strlen(needle)) != NULL;
}

/* A form body's fields, split independently: pairs separated by '&', empty
 * pairs and empty names skipped.  -1 when a key or value does not decode, a key is given
 * twice, or there are more than 64 fields.  On success, checks obj holds
 * exactly these fields. */
static int check_form(const char *body, size_t n, const cJSON *obj)
{
	struct buf key, val;
	size_t start = 0, fields = 0;
	cJSON *want = cJSON_CreateObject();
	int rc = -1;

	FUZZ_ASSERT(want);
	buf_init(&key, n + 1);
	buf_init(&val, n + 1);
	while (start < n) {
		const char *p = body + start, *amp = memchr(p, '&', n - start);
		size_t len = amp ? (size_t)(amp - p) : n - start;
		const char *eq = memchr(p, '=', len);
		size_t klen = eq ? (size_t)(eq - p) : len;

		start += len + 1;
		if (len == 0)
			continue;
		if (url_decode(p, klen, &key) < 0)
			goto out;
		if (key.len == 0) /* an empty name is skipped, value unread */
			continue;
		if (url_decode(eq ? eq + 1 : "", eq ? len - klen - 1 : 0, &val) < 0)
			goto out;
		if (cJSON_GetObjectItemCaseSensitive(want, buf_str(&key)) ||
		    cJSON_GetArraySize(want) >= 64)
			goto out;
		FUZZ_ASSERT(cJSON_AddStringToObject(want, buf_str(&key), buf_str(&val)));
	}
	rc = 0;
	if (!obj)
		goto out;
	for (const cJSON *w = want->child; w; w = w->next) {
		const cJSON *got = cJSON_GetObjectItemCaseSensitive(obj, w->string);

		FUZZ_ASSERT(cJSON_IsString(got));
		FUZZ_ASSERT(strcmp(got->valuestring, w->valuestring) == 0);
		fields++;
	}
	FUZZ_ASSERT((size_t)cJSON_GetArraySize(obj) == fields);
out:
	buf_free(&key);
	buf_free(&val);
	cJSON_Delete(want);
	return rc;
}

static void check_json(const char *body, size_t n, int status, const cJSON *data)
{
	const char *end = NULL;
	cJSON *strict;
	int clean;

	if (n == 0) {
		FUZZ_ASSERT(status == 0 && data && data->child == NULL);
		return;
	}
	strict = cJSON_ParseWithLengthOpts(body, n, &end, 0);
	clean = strict && only_whitespace(end, body + n);
	if (status == 0) {
		FUZZ_ASSERT(cJSON_GetArraySize(data) <= 64);
		FUZZ_ASSERT(!has_duplicate_key(data));
		/* "{...} junk" is malformed JSON: API.md wants a 400. */
		FUZZ_ASSERT(clean);
		FUZZ_ASSERT(!raw_control_in_string(body, n));
	}
	/* A clean object of up to 64 distinct keys, nothing refused in it. */
	if (clean && cJSON_IsObject(strict) && cJSON_GetArraySize(strict) <= 64 &&
	    !has_duplicate_key(strict) && utf8_valid(body, n) && !contains(body, n, "\\u0000") &&
	    !raw_control_in_string(body, n))
		FUZZ_ASSERT(status == 0);
	cJSON_Delete(strict);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *type_buf = NULL, *body, reason[256];
	const char *type;
	cJSON *obj = (cJSON *)&obj; /* must be overwritten */
	int status;

	if (size < 1)
		return 0;
	if ((data[0] & 7) == 7) {
		const uint8_t *nl = memchr(data + 1, '\n', size - 1);
		size_t len = nl ? (size_t)(nl - data - 1) : size - 1;

		type_buf = strndup((const char *)data + 1, len);
		FUZZ_ASSERT(type_buf);
		type = type_buf;
		data += 1 + len + (nl ? 1 : 0);
		size -= 1 + len + (nl ? 1 : 0);
	} else {
		type = types[data[0] & 7];
		data++;
		size--;
	}
#ifdef FUZZ_BODY_NUL_TERMINATED
	body = malloc(size + 1);
	FUZZ_ASSERT(body);
	body[size] = '\0';
#else
	body = malloc(size ? size : 1);
	FUZZ_ASSERT(body);
#endif
	if (size)
		memcpy(body, data, size);
	memset(reason, 'x', sizeof reason);

	status = request_decode_body(body, size, type, &obj, reason, sizeof reason);
	FUZZ_ASSERT(status == 0 || status == 400 || status == 415);
	if (status == 0) {
		FUZZ_ASSERT(cJSON_IsObject(obj));
		check_tree(obj);
	} else {
		FUZZ_ASSERT(obj == NULL);
		FUZZ_ASSERT(memchr(reason, '\0', sizeof reason) != NULL);
		FUZZ_ASSERT(reason[0] != '\0');
		for (const char *r = reason; *r; r++)
			FUZZ_ASSERT(*r >= 0x20 && *r < 0x7f);
	}

	if (is_form(type)) {
		FUZZ_ASSERT((status == 0) == (check_form(body, size, obj) == 0));
	} else if (is_json(type)) {
		FUZZ_ASSERT(status == 0 || status == 400);
		check_json(body, size, status, obj);
	} else {
		FUZZ_ASSERT(status == 415);
	}

	cJSON_Delete(obj);
	free(body);
	free(type_buf);
	return 0;
}
