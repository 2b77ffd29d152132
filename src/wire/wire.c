/*
 * wire — the protocol table and what the decoders share (see wire.h).
 */
#include "wire.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

const struct wire *wire_find(const char *name)
{
	static const struct wire *const all[] = {&wire_ollama, &wire_openai};
	size_t i;

	for (i = 0; i < sizeof all / sizeof all[0]; i++)
		if (strcmp(all[i]->name, name) == 0)
			return all[i];
	return NULL;
}

void wire_line_free(struct wire_line *l)
{
	cJSON_Delete(l->json);
	l->json = NULL;
}

/* A copy of the text with each NUL, raw or "\u0000" inside a string,
 * written as "\ufffd"; NULL when there is none (the usual case) or
 * memory ran out (*oom set). */
static char *without_nul(const char *text, size_t n, size_t *outlen, int *oom)
{
	struct buf b;
	size_t i, run = 0;
	int in_string = 0;

	*oom = 0;
	if (!memchr(text, '\0', n) && !memmem(text, n, "u0000", 5))
		return NULL;
	buf_init(&b, 6 * n + 1);
	for (i = 0; i < n; i++) {
		const char *nul = NULL;
		size_t skip = 1;

		if (text[i] == '\0') {
			nul = "\\ufffd";
		} else if (!in_string) {
			in_string = text[i] == '"';
		} else if (text[i] == '"') {
			in_string = 0;
		} else if (text[i] == '\\' && i + 1 < n) {
			if (text[i + 1] == 'u' && i + 5 < n &&
			    memcmp(text + i + 2, "0000", 4) == 0) {
				nul = "\\ufffd";
				skip = 6;
			} else {
				i++; /* the escaped character */
			}
		}
		if (!nul)
			continue;
		if (buf_append(&b, text + run, i - run) != BUF_OK || buf_puts(&b, nul) != BUF_OK) {
			*oom = 1;
			buf_free(&b);
			return NULL;
		}
		i += skip - 1;
		run = i + 1;
	}
	if (buf_append(&b, text + run, n - run) != BUF_OK) {
		*oom = 1;
		buf_free(&b);
		return NULL;
	}
	*outlen = b.len;
	return buf_steal(&b);
}

cJSON *wire_parse_object(const char *text, size_t n)
{
	const char *end = NULL, *p;
	char *copy;
	cJSON *o;
	int oom;

	copy = without_nul(text, n, &n, &oom);
	if (oom)
		return NULL;
	p = copy ? copy : text;
	o = cJSON_ParseWithLengthOpts(p, n, &end, 0);
	while (o && end < p + n && (*end == ' ' || *end == '\t' || *end == '\r'))
		end++;
	if (o && (!cJSON_IsObject(o) || end != p + n)) {
		cJSON_Delete(o); /* not one object, or something after it */
		o = NULL;
	}
	free(copy);
	return o;
}

long long wire_count(const cJSON *o, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

	/* Past 2^53 a double holds no exact count, and past LLONG_MAX the
	 * conversion would be undefined: no count a server means. */
	return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 9007199254740992.0
		       ? (long long)v->valuedouble
		       : -1;
}

int wire_messages(struct buf *out, const struct wire_message *m, int n)
{
	int i;

	if (buf_putc(out, '[') != BUF_OK)
		return -1;
	for (i = 0; i < n; i++) {
		if (buf_puts(out, i ? ",{\"role\":\"" : "{\"role\":\"") != BUF_OK ||
		    buf_json_escape(out, m[i].role, strlen(m[i].role)) < 0 ||
		    buf_puts(out, "\",\"content\":\"") != BUF_OK ||
		    buf_json_escape(out, m[i].content, strlen(m[i].content)) < 0 ||
		    buf_puts(out, "\"}") != BUF_OK)
			return -1;
	}
	return buf_putc(out, ']') == BUF_OK ? 0 : -1;
}

int wire_model_matches(const char *listed, const char *wanted)
{
	static const char latest[] = ":latest";
	size_t a = strlen(listed), b = strlen(wanted), t = sizeof latest - 1;

	if (a == b)
		return memcmp(listed, wanted, a) == 0;
	if (a == b + t)
		return memcmp(listed, wanted, b) == 0 && memcmp(listed + b, latest, t) == 0;
	if (b == a + t)
		return memcmp(wanted, listed, a) == 0 && memcmp(wanted + a, latest, t) == 0;
	return 0;
}

int wire_names(const char *body, size_t n, const char *list_key, const char *name_key,
	       void (*fn)(void *ctx, const char *name), void *ctx)
{
	cJSON *o = wire_parse_object(body, n);
	const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, list_key), *m;

	if (!cJSON_IsArray(list)) {
		cJSON_Delete(o);
		return -1;
	}
	cJSON_ArrayForEach(m, list)
	{
		const cJSON *name = cJSON_GetObjectItemCaseSensitive(m, name_key);

		if (cJSON_IsString(name))
			fn(ctx, name->valuestring);
	}
	cJSON_Delete(o);
	return 0;
}
