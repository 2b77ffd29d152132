/*
 * ollama — Ollama's chat protocol: POST /api/chat with "stream": true,
 * answered with NDJSON lines
 *
 *   {"message": {"role": "assistant", "content": "..."}, "done": false}
 *   ... {"done": true, "done_reason": "stop", "prompt_eval_count": N,
 *        "eval_count": N, ...}       (the counters may be absent)
 *
 * or, mid-stream, {"error": "..."}.  Health and models: GET /api/tags.
 */
#include <cjson/cJSON.h>
#include <string.h>

#include "wire.h"

static int ollama_chat_body(struct buf *out, const char *model, const struct wire_message *m, int n)
{
	if (buf_puts(out, "{\"model\":\"") != BUF_OK ||
	    buf_json_escape(out, model, strlen(model)) < 0 ||
	    buf_puts(out, "\",\"messages\":") != BUF_OK || wire_messages(out, m, n) < 0)
		return -1;
	return buf_puts(out, ",\"stream\":true}") == BUF_OK ? 0 : -1;
}

static int ollama_decode(const char *line, size_t n, struct wire_line *out)
{
	const cJSON *msg, *content, *err, *done, *reason;

	memset(out, 0, sizeof *out);
	out->prompt_tokens = out->completion_tokens = -1;
	if (!(out->json = wire_parse_object(line, n)))
		return -1;
	err = cJSON_GetObjectItemCaseSensitive(out->json, "error");
	if (err) {
		out->error = cJSON_IsString(err) ? err->valuestring
						 : "The language model reported an error.";
		return 0;
	}
	msg = cJSON_GetObjectItemCaseSensitive(out->json, "message");
	content = cJSON_GetObjectItemCaseSensitive(msg, "content");
	done = cJSON_GetObjectItemCaseSensitive(out->json, "done");
	if ((content && !cJSON_IsString(content)) || (done && !cJSON_IsBool(done)) ||
	    (!content && !cJSON_IsTrue(done)))
		return -1;
	if (content) {
		out->content = content->valuestring;
		out->len = strlen(content->valuestring);
	}
	if (cJSON_IsTrue(done)) {
		reason = cJSON_GetObjectItemCaseSensitive(out->json, "done_reason");
		out->end = 1;
		out->finish_reason = cJSON_IsString(reason) ? reason->valuestring : "";
		out->prompt_tokens = wire_count(out->json, "prompt_eval_count");
		out->completion_tokens = wire_count(out->json, "eval_count");
	}
	return 0;
}

/* {"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest", ...}]} */
static int ollama_models(const char *body, size_t n, void (*fn)(void *ctx, const char *name),
			 void *ctx)
{
	return wire_names(body, n, "models", "name", fn, ctx);
}

const struct wire wire_ollama = {
	.name = "ollama",
	.chat_path = "/api/chat",
	.models_path = "/api/tags",
	.chat_body = ollama_chat_body,
	.decode = ollama_decode,
	.models = ollama_models,
};
