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

static int field_is(const char *line, size_t n, const char *name)
{
	return n == strlen(name) && memcmp(line, name, n) == 0;
}

static int openai_decode(const char *line, size_t n, struct wire_line *out)
{
	const char *colon = memchr(line, ':', n), *v;
	size_t name_len, vlen;

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
	if (!(out->json = wire_parse_object(v, vlen)))
		return -1;
	if ((out->error = error_of(out->json)) != NULL)
		return 0;
	return read_chunk(out->json, out);
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
