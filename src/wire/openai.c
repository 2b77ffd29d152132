/*
 * openai — OpenAI's chat completions protocol, as most LLM servers speak
 * it: POST /v1/chat/completions with "stream": true, answered with
 * Server-Sent Events
 *
 *   data: {"choices": [{"delta": {"content": "..."}, "finish_reason": null}]}
 *   data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}
 *   data: {"choices": [], "usage": {"prompt_tokens": N, "completion_tokens": N}}
 *   data: [DONE]
 *
 * (the usage-only chunk because the request asks for it with
 * stream_options.include_usage).  Errors mid-stream come as OpenAI's
 * {"error": {"message": ...}} or vLLM's {"object": "error", "message": ...};
 * comment lines (": keep-alive", sent by proxies) and the other SSE fields
 * are skipped.  One event's data is one line, as every such server sends
 * it.  Health and models: GET /v1/models.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

static int openai_chat_body(struct buf *out, const char *model, const struct wire_message *m, int n)
{
	if (buf_puts(out, "{\"model\":\"") != BUF_OK ||
	    buf_json_escape(out, model, strlen(model)) < 0 ||
	    buf_puts(out, "\",\"messages\":") != BUF_OK || wire_messages(out, m, n) < 0)
		return -1;
	return buf_puts(out, ",\"stream\":true,\"stream_options\":{\"include_usage\":true}}") ==
			       BUF_OK
		       ? 0
		       : -1;
}

static const char reported[] = "The language model reported an error.";

/* {"error": {"message": ...}} (OpenAI), {"error": "..."} (some proxies) or
 * {"object": "error", "message": ...} (vLLM): the message, else NULL. */
static const char *error_of(const cJSON *o)
{
	const cJSON *err = cJSON_GetObjectItemCaseSensitive(o, "error"), *msg;
	const cJSON *kind = cJSON_GetObjectItemCaseSensitive(o, "object");

	if (cJSON_IsString(err))
		return err->valuestring[0] ? err->valuestring : reported;
	if (err && !cJSON_IsNull(err)) {
		msg = cJSON_GetObjectItemCaseSensitive(err, "message");
		return cJSON_IsString(msg) && msg->valuestring[0] ? msg->valuestring : reported;
	}
	if (cJSON_IsString(kind) && strcmp(kind->valuestring, "error") == 0) {
		msg = cJSON_GetObjectItemCaseSensitive(o, "message");
		return cJSON_IsString(msg) && msg->valuestring[0] ? msg->valuestring : reported;
	}
	return NULL;
}

/* The chunk's first choice and its usage.  0, or -1 when it is no chunk. */
static int read_chunk(const cJSON *o, struct wire_line *out)
{
	const cJSON *choices = cJSON_GetObjectItemCaseSensitive(o, "choices");
	const cJSON *usage = cJSON_GetObjectItemCaseSensitive(o, "usage");
	const cJSON *c, *delta, *content, *finish;

	if ((choices && !cJSON_IsArray(choices)) ||
	    (usage && !cJSON_IsNull(usage) && !cJSON_IsObject(usage)))
		return -1;
	if (!choices && !cJSON_IsObject(usage))
		return -1;
	if (cJSON_IsObject(usage)) {
		out->prompt_tokens = wire_count(usage, "prompt_tokens");
		out->completion_tokens = wire_count(usage, "completion_tokens");
	}
	c = cJSON_GetArrayItem(choices, 0);
	if (!c)
		return 0; /* the usage-only chunk */
	delta = cJSON_GetObjectItemCaseSensitive(c, "delta");
	content = cJSON_GetObjectItemCaseSensitive(delta, "content");
	finish = cJSON_GetObjectItemCaseSensitive(c, "finish_reason");
	if (!cJSON_IsObject(c) || (delta && !cJSON_IsObject(delta)) ||
	    (content && !cJSON_IsString(content) && !cJSON_IsNull(content)) ||
	    (finish && !cJSON_IsString(finish) && !cJSON_IsNull(finish)))
		return -1;
	if (cJSON_IsString(content)) {
		out->content = content->valuestring;
		out->len = strlen(content->valuestring);
	}
	if (cJSON_IsString(finish))
		out->finish_reason = finish->valuestring;
	return 0;
}

/* --- the usual chunk, read without a tree ------------------------------
 *
 * Nearly every line of an answer is one token's chunk,
 *   {"id":..,"object":"chat.completion.chunk","created":..,"model":..,
 *    "choices":[{"index":0,"delta":{"content":".."},"finish_reason":null}]}
 * and a cJSON tree of it (a dozen items and their strings, allocated and
 * freed) cost about twice what an Ollama line does, to read one string.
 * fast_chunk() reads such a line in one pass and allocates only the
 * strings it hands out.  It takes only lines it is sure cJSON and the
 * checks of decode_tree() read the same way: strict JSON (no BOM, white
 * space only between tokens, numbers of at most FAST_NUMBER_MAX
 * characters, nesting at most FAST_DEPTH), strings without \u escapes and
 * control bytes (so no NUL, which wire_parse_object() would rewrite),
 * keys without escapes; no "error" member but null, an "object" other
 * than "error", "choices" an array, "usage" absent or null, and a first
 * choice that is an object, its "delta" an object, "content" and
 * "finish_reason" strings or null.  Any other line gets FAST_NO and goes
 * to decode_tree() as before.  Where a member is there twice, the first
 * counts, as with cJSON_GetObjectItemCaseSensitive(). */

#define FAST_DEPTH 16
#define FAST_NUMBER_MAX 32 /* cJSON reads at most 63 characters of a number */

enum { FAST_NO = 1 };

/* Whose members an object's are: those the decoder looks at. */
enum fast_where { W_NONE, W_ROOT, W_CHOICES, W_CHOICE, W_DELTA };

struct fast_value {
	char kind;     /* 0: not seen; '"', '{', '[', 'n' (null), 'x' (other) */
	int escaped;   /* a string holding a backslash */
	const char *p; /* a string's bytes between its quotes */
	size_t n;
};

struct fast {
	const char *p, *end;
	int depth;
	/* the first of each member that decode_tree() looks up */
	struct fast_value error, object, choices, usage, choice0, delta, content, finish;
};

static void fast_ws(struct fast *f)
{
	while (f->p < f->end && (*f->p == ' ' || *f->p == '\t' || *f->p == '\n' || *f->p == '\r'))
		f->p++;
}

static int fast_digits(struct fast *f)
{
	const char *p = f->p;

	while (f->p < f->end && *f->p >= '0' && *f->p <= '9')
		f->p++;
	return f->p > p ? 0 : FAST_NO;
}

static int fast_string(struct fast *f, struct fast_value *v)
{
	const char *p;

	v->kind = '"';
	v->escaped = 0;
	v->p = p = f->p + 1;
	for (; p < f->end; p++) {
		unsigned char c = (unsigned char)*p;

		if (c == '"') {
			v->n = (size_t)(p - v->p);
			f->p = p + 1;
			return 0;
		}
		if (c < 0x20)
			return FAST_NO;
		if (c == '\\') {
			if (++p == f->end || !memchr("\"\\/bfnrt", *p, 8))
				return FAST_NO; /* \u, or no escape at all */
			v->escaped = 1;
		}
	}
	return FAST_NO;
}

static int fast_number(struct fast *f)
{
	const char *start = f->p;

	if (f->p < f->end && *f->p == '-')
		f->p++;
	if (f->p < f->end && *f->p == '0')
		f->p++;
	else if (fast_digits(f))
		return FAST_NO;
	if (f->p < f->end && *f->p == '.' && (f->p++, fast_digits(f)))
		return FAST_NO;
	if (f->p < f->end && (*f->p == 'e' || *f->p == 'E')) {
		f->p++;
		if (f->p < f->end && (*f->p == '+' || *f->p == '-'))
			f->p++;
		if (fast_digits(f))
			return FAST_NO;
	}
	return f->p - start <= FAST_NUMBER_MAX ? 0 : FAST_NO;
}

static int fast_word(struct fast *f, const char *word, size_t n)
{
	if ((size_t)(f->end - f->p) < n || memcmp(f->p, word, n) != 0)
		return FAST_NO;
	f->p += n;
	return 0;
}

static int fast_value(struct fast *f, enum fast_where where, struct fast_value *v);

/* The member of an object of where that key names, when it is one the
 * decoder looks at and the first of its name (*inner: whose its members
 * are), else NULL. */
static struct fast_value *fast_member(struct fast *f, enum fast_where where,
				      const struct fast_value *key, enum fast_where *inner)
{
	struct fast_value *m = NULL;

	*inner = W_NONE;
#define KEY_IS(name) (key->n == sizeof name - 1 && memcmp(key->p, name, key->n) == 0)
	if (where == W_ROOT && KEY_IS("error"))
		m = &f->error;
	else if (where == W_ROOT && KEY_IS("object"))
		m = &f->object;
	else if (where == W_ROOT && KEY_IS("choices"))
		m = &f->choices, *inner = W_CHOICES;
	else if (where == W_ROOT && KEY_IS("usage"))
		m = &f->usage;
	else if (where == W_CHOICE && KEY_IS("delta"))
		m = &f->delta, *inner = W_DELTA;
	else if (where == W_CHOICE && KEY_IS("finish_reason"))
		m = &f->finish;
	else if (where == W_DELTA && KEY_IS("content"))
		m = &f->content;
#undef KEY_IS
	if (m && m->kind) {
		*inner = W_NONE;
		return NULL; /* not the first */
	}
	return m;
}

/* An object or an array at f->p, of where. */
static int fast_container(struct fast *f, enum fast_where where)
{
	char close = *f->p == '{' ? '}' : ']';
	struct fast_value key, v, *m = NULL;
	enum fast_where inner = W_NONE;
	int first = 1;

	if (++f->depth > FAST_DEPTH)
		return FAST_NO;
	f->p++;
	fast_ws(f);
	if (f->p < f->end && *f->p == close) {
		f->p++;
		f->depth--;
		return 0;
	}
	for (;;) {
		if (close == '}') {
			if (f->p == f->end || *f->p != '"' || fast_string(f, &key) || key.escaped)
				return FAST_NO;
			fast_ws(f);
			if (f->p == f->end || *f->p != ':')
				return FAST_NO;
			f->p++;
			fast_ws(f);
			m = fast_member(f, where, &key, &inner);
		} else if (first && where == W_CHOICES) {
			m = &f->choice0, inner = W_CHOICE;
		} else {
			m = NULL, inner = W_NONE;
		}
		first = 0;
		if (fast_value(f, inner, &v))
			return FAST_NO;
		if (m)
			*m = v;
		fast_ws(f);
		if (f->p == f->end)
			return FAST_NO;
		if (*f->p == close) {
			f->p++;
			f->depth--;
			return 0;
		}
		if (*f->p != ',')
			return FAST_NO;
		f->p++;
		fast_ws(f);
	}
}

static int fast_value(struct fast *f, enum fast_where where, struct fast_value *v)
{
	memset(v, 0, sizeof *v);
	if (f->p == f->end)
		return FAST_NO;
	switch (*f->p) {
	case '"': return fast_string(f, v);
	case '{':
	case '[': v->kind = *f->p; return fast_container(f, where);
	case 'n': v->kind = 'n'; return fast_word(f, "null", 4);
	case 't': v->kind = 'x'; return fast_word(f, "true", 4);
	case 'f': v->kind = 'x'; return fast_word(f, "false", 5);
	default: v->kind = 'x'; return fast_number(f);
	}
}

static int string_or_null(const struct fast_value *v)
{
	return !v->kind || v->kind == '"' || v->kind == 'n';
}

/* v's text, unescaped, as a string item of out->json (an array made on
 * first use); NULL when memory ran out. */
static const char *fast_keep(struct wire_line *out, const struct fast_value *v)
{
	char small[256], *text = small, *q;
	cJSON *item;
	size_t i;

	if (v->n >= sizeof small && !(text = malloc(v->n + 1)))
		return NULL;
	if (!v->escaped) {
		memcpy(text, v->p, v->n);
		q = text + v->n;
	} else {
		for (i = 0, q = text; i < v->n; i++) {
			char c = v->p[i];

			if (c == '\\') {
				static const char from[] = "bfnrt", to[] = "\b\f\n\r\t";
				const char *e;

				c = v->p[++i];
				if ((e = memchr(from, c, 5)) != NULL)
					c = to[e - from]; /* else " \\ / stand for themselves */
			}
			*q++ = c;
		}
	}
	*q = '\0';
	item = cJSON_CreateString(text);
	if (text != small)
		free(text);
	if (item && !out->json && !(out->json = cJSON_CreateArray())) {
		cJSON_Delete(item);
		return NULL;
	}
	if (!item || !cJSON_AddItemToArray(out->json, item)) {
		cJSON_Delete(item);
		return NULL;
	}
	return item->valuestring;
}

/* The line as decode_tree() would read it: 0, -1 when memory ran out, or
 * FAST_NO when it is not a line fast_chunk() is sure of. */
static int fast_chunk(const char *v, size_t n, struct wire_line *out)
{
	struct fast f;

	memset(&f, 0, sizeof f);
	f.p = v;
	f.end = v + n;
	if (n == 0 || *v != '{' || fast_container(&f, W_ROOT))
		return FAST_NO;
	while (f.p < f.end && (*f.p == ' ' || *f.p == '\t' || *f.p == '\r'))
		f.p++; /* what wire_parse_object() allows after the object */
	if (f.p != f.end || (f.error.kind && f.error.kind != 'n') ||
	    (f.object.kind == '"' && f.object.n == 5 && memcmp(f.object.p, "error", 5) == 0) ||
	    f.choices.kind != '[' || (f.usage.kind && f.usage.kind != 'n'))
		return FAST_NO;
	if (!f.choice0.kind)
		return 0; /* "choices": [] */
	if (f.choice0.kind != '{' || (f.delta.kind && f.delta.kind != '{') ||
	    !string_or_null(&f.content) || !string_or_null(&f.finish))
		return FAST_NO;
	if (f.content.kind == '"') {
		if (!(out->content = fast_keep(out, &f.content)))
			goto oom;
		out->len = strlen(out->content);
	}
	if (f.finish.kind == '"' && !(out->finish_reason = fast_keep(out, &f.finish)))
		goto oom;
	return 0;
oom:
	wire_line_free(out);
	out->content = out->finish_reason = NULL;
	out->len = 0;
	return -1;
}

/* The line through cJSON: any chunk, error or usage. */
static int decode_tree(const char *v, size_t n, struct wire_line *out)
{
	if (!(out->json = wire_parse_object(v, n)))
		return -1;
	if ((out->error = error_of(out->json)) != NULL)
		return 0;
	return read_chunk(out->json, out);
}

static int field_is(const char *line, size_t n, const char *name)
{
	return n == strlen(name) && memcmp(line, name, n) == 0;
}

static int openai_decode(const char *line, size_t n, struct wire_line *out)
{
	const char *colon = memchr(line, ':', n), *v;
	size_t name_len, vlen;
	int rc;

	memset(out, 0, sizeof *out);
	out->prompt_tokens = out->completion_tokens = -1;
	if (n > 0 && line[0] == ':')
		return 0; /* a comment */
	name_len = colon ? (size_t)(colon - line) : n;
	if (!field_is(line, name_len, "data"))
		return field_is(line, name_len, "event") || field_is(line, name_len, "id") ||
				       field_is(line, name_len, "retry")
			       ? 0
			       : -1;
	v = colon ? colon + 1 : line + n;
	vlen = (size_t)(line + n - v);
	if (vlen > 0 && *v == ' ')
		v++, vlen--;
	if (vlen == 6 && memcmp(v, "[DONE]", 6) == 0) {
		out->end = 1;
		return 0;
	}
	rc = fast_chunk(v, vlen, out);
	return rc == FAST_NO ? decode_tree(v, vlen, out) : rc;
}

/* {"object": "list", "data": [{"id": "...", "object": "model", ...}]} */
static int openai_models(const char *body, size_t n, void (*fn)(void *ctx, const char *name),
			 void *ctx)
{
	return wire_names(body, n, "data", "id", fn, ctx);
}

const struct wire wire_openai = {
	.name = "openai",
	.chat_path = "/v1/chat/completions",
	.models_path = "/v1/models",
	.chat_body = openai_chat_body,
	.decode = openai_decode,
	.models = openai_models,
};
