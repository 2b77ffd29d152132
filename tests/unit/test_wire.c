/*
 * test_wire — the protocols' decoders (src/wire/), line by line, as
 * tables: what each line of an Ollama or OpenAI answer means; the model
 * names a server's list matches; the since= times of GET /api/usage/.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "usage.h"
#include "wire/wire.h"

/* What a line should decode to: rc, and then each field (NULL / -1 / 0:
 * not set). */
struct line_case {
	const char *line;
	int rc;
	const char *content;
	const char *error;
	const char *finish;
	long long prompt, completion;
	int end;
};

static void check_lines(const struct wire *w, const struct line_case *t, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		struct wire_line l;
		int rc = w->decode(t[i].line, strlen(t[i].line), &l);

		if (rc != t[i].rc)
			fprintf(stderr, "%s case %zu: %s\n", w->name, i, t[i].line);
		CHECK(rc == t[i].rc);
		if (rc == 0) {
			CHECK(!t[i].content == !l.content);
			if (t[i].content && l.content) {
				CHECK_STR(l.content, t[i].content);
				CHECK(l.len == strlen(t[i].content));
			}
			CHECK(!t[i].error == !l.error);
			if (t[i].error && l.error)
				CHECK_STR(l.error, t[i].error);
			CHECK(!t[i].finish == !l.finish_reason);
			if (t[i].finish && l.finish_reason)
				CHECK_STR(l.finish_reason, t[i].finish);
			CHECK(l.prompt_tokens == t[i].prompt);
			CHECK(l.completion_tokens == t[i].completion);
			CHECK(l.end == t[i].end);
		}
		wire_line_free(&l);
	}
}

static const char reported[] = "The language model reported an error.";

static void test_ollama_lines(void)
{
	static const struct line_case t[] = {
		{"{\"message\":{\"role\":\"assistant\",\"content\":\"Ol\xc3\xa1\"},\"done\":false}",
		 0, "Ol\xc3\xa1", NULL, NULL, -1, -1, 0},
		{"{\"message\":{\"content\":\"\"},\"done\":true,\"done_reason\":\"length\","
		 "\"prompt_eval_count\":26,\"eval_count\":3}",
		 0, "", NULL, "length", 26, 3, 1},
		{"{\"done\":true}", 0, NULL, NULL, "", -1, -1, 1},
		{"{\"message\":{\"content\":\"a\\u0000b\"},\"done\":false}", 0,
		 "a\xef\xbf\xbd"
		 "b",
		 NULL, NULL, -1, -1, 0},
		{"{\"error\":\"model \\\"x\\\" not found\"}", 0, NULL, "model \"x\" not found",
		 NULL, -1, -1, 0},
		{"{\"error\":42}", 0, NULL, reported, NULL, -1, -1, 0},
		/* a count no double holds exactly is no count (and no undefined conversion) */
		{"{\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":26,"
		 "\"eval_count\":1e19}",
		 0, NULL, NULL, "stop", 26, -1, 1},
		{"{\"done\":false}", -1, NULL, NULL, NULL, -1, -1, 0},
		{"{\"message\":{\"content\":7}}", -1, NULL, NULL, NULL, -1, -1, 0},
		{"{\"message\":{\"content\":\"x\"}} trailing", -1, NULL, NULL, NULL, -1, -1, 0},
		{"data: {\"choices\":[]}", -1, NULL, NULL, NULL, -1, -1, 0},
		{"[1,2]", -1, NULL, NULL, NULL, -1, -1, 0},
	};

	check_lines(&wire_ollama, t, sizeof t / sizeof t[0]);
}

static void test_openai_lines(void)
{
	static const struct line_case t[] = {
		/* content, with or without the space after "data:" */
		{"data: "
		 "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
		 "\"delta\":{\"content\":\"Ol\xc3\xa1\"},\"finish_reason\":null}]}",
		 0, "Ol\xc3\xa1", NULL, NULL, -1, -1, 0},
		{"data:{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}", 0,
		 "", NULL, NULL, -1, -1, 0},
		/* a role-only delta, an empty choice list: nothing to act on */
		{"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}", 0, NULL, NULL, NULL,
		 -1, -1, 0},
		{"data: {\"choices\":[]}", 0, NULL, NULL, NULL, -1, -1, 0},
		{"data: {\"choices\":[{\"delta\":{\"content\":null}}]}", 0, NULL, NULL, NULL, -1,
		 -1, 0},
		/* the finish, the usage-only chunk (and both in one), the end */
		{"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}],\"usage\":null}",
		 0, NULL, NULL, "length", -1, -1, 0},
		{"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5,"
		 "\"total_tokens\":17}}",
		 0, NULL, NULL, NULL, 12, 5, 0},
		{"data: {\"choices\":[{\"delta\":{\"content\":\"!\"},\"finish_reason\":\"stop\"}],"
		 "\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
		 0, "!", NULL, "stop", 1, 2, 0},
		{"data: "
		 "{\"choices\":[],\"usage\":{\"prompt_tokens\":1e300,\"completion_tokens\":-3}}",
		 0, NULL, NULL, NULL, -1, -1, 0},
		{"data: [DONE]", 0, NULL, NULL, NULL, -1, -1, 1},
		{"data:[DONE]", 0, NULL, NULL, NULL, -1, -1, 1},
		/* comments and the other fields of an event */
		{": keep-alive", 0, NULL, NULL, NULL, -1, -1, 0},
		{":", 0, NULL, NULL, NULL, -1, -1, 0},
		{"event: message", 0, NULL, NULL, NULL, -1, -1, 0},
		{"id: 7", 0, NULL, NULL, NULL, -1, -1, 0},
		{"retry: 1000", 0, NULL, NULL, NULL, -1, -1, 0},
		/* errors: OpenAI's, vLLM's, a proxy's string */
		{"data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"code\":null}}",
		 0, NULL, "boom", NULL, -1, -1, 0},
		{"data: {\"object\":\"error\",\"message\":\"bad "
		 "input\",\"type\":\"BadRequestError\","
		 "\"code\":400}",
		 0, NULL, "bad input", NULL, -1, -1, 0},
		{"data: {\"error\":\"overloaded\"}", 0, NULL, "overloaded", NULL, -1, -1, 0},
		{"data: {\"error\":{}}", 0, NULL, reported, NULL, -1, -1, 0},
		/* NUL inside content: read as U+FFFD, never cutting the text */
		{"data: {\"choices\":[{\"delta\":{\"content\":\"a\\u0000b\"}}]}", 0,
		 "a\xef\xbf\xbd"
		 "b",
		 NULL, NULL, -1, -1, 0},
		/* not OpenAI's */
		{"data: {\"choices\":[{\"delta\":{\"content\":\"broken", -1, NULL, NULL, NULL, -1,
		 -1, 0},
		{"data: {}", -1, NULL, NULL, NULL, -1, -1, 0},
		{"data: {\"choices\":\"x\"}", -1, NULL, NULL, NULL, -1, -1, 0},
		{"data: {\"choices\":[{\"delta\":{\"content\":5}}]}", -1, NULL, NULL, NULL, -1, -1,
		 0},
		{"data: {\"choices\":[{\"delta\":\"x\"}]}", -1, NULL, NULL, NULL, -1, -1, 0},
		{"data: {\"choices\":[{\"finish_reason\":1}]}", -1, NULL, NULL, NULL, -1, -1, 0},
		{"data: {\"choices\":[],\"usage\":3}", -1, NULL, NULL, NULL, -1, -1, 0},
		{"data: [1]", -1, NULL, NULL, NULL, -1, -1, 0},
		{"data: [DONE] x", -1, NULL, NULL, NULL, -1, -1, 0},
		{"{\"choices\":[]}", -1, NULL, NULL, NULL, -1, -1, 0},
		{"\x89PNG garbage", -1, NULL, NULL, NULL, -1, -1, 0},
		{"datum: x", -1, NULL, NULL, NULL, -1, -1, 0},
	};

	check_lines(&wire_openai, t, sizeof t / sizeof t[0]);
}

static void collect_name(void *ctx, const char *name)
{
	struct buf *b = ctx;

	CHECK(buf_puts(b, name) == BUF_OK && buf_putc(b, ';') == BUF_OK);
}

static void test_model_lists(void)
{
	static const char tags[] = "{\"models\":[{\"name\":\"llama3.2:latest\"},{\"model\":\"x\"},"
				   "{\"name\":\"qwen2.5:0.5b\"}]}";
	static const char list[] = "{\"object\":\"list\",\"data\":[{\"id\":\"gpt-4o-mini\"},"
				   "{\"id\":7},{\"id\":\"o3\"}]}";
	struct buf b;

	buf_init(&b, 4096);
	CHECK(wire_ollama.models(tags, strlen(tags), collect_name, &b) == 0);
	CHECK_STR(buf_str(&b), "llama3.2:latest;qwen2.5:0.5b;");
	buf_reset(&b);
	CHECK(wire_openai.models(list, strlen(list), collect_name, &b) == 0);
	CHECK_STR(buf_str(&b), "gpt-4o-mini;o3;");
	CHECK(wire_openai.models(tags, strlen(tags), collect_name, &b) == -1);
	CHECK(wire_ollama.models(list, strlen(list), collect_name, &b) == -1);
	CHECK(wire_ollama.models("", 0, collect_name, &b) == -1);
	buf_free(&b);

	CHECK(wire_model_matches("llama3.2:latest", "llama3.2"));
	CHECK(wire_model_matches("llama3.2", "llama3.2:latest"));
	CHECK(wire_model_matches("gpt-4o", "gpt-4o"));
	CHECK(!wire_model_matches("llama3.2:1b", "llama3.2"));
	CHECK(!wire_model_matches("llama3", "llama3.2"));
	CHECK(!wire_model_matches("llama3.2:latestx", "llama3.2"));
	CHECK(wire_find("ollama") == &wire_ollama && wire_find("openai") == &wire_openai);
	CHECK(wire_find("OpenAI") == NULL && wire_find("") == NULL);
}

static void test_request_bodies(void)
{
	static const struct wire_message m[] = {{"system", "be \"brief\""},
						{"user", "Ol\xc3\xa1\n"}};
	struct buf b;

	buf_init(&b, 4096);
	CHECK(wire_ollama.chat_body(&b, "llama3.2", m, 2) == 0);
	CHECK_STR(buf_str(&b), "{\"model\":\"llama3.2\",\"messages\":[{\"role\":\"system\","
			       "\"content\":\"be \\\"brief\\\"\"},{\"role\":\"user\",\"content\":"
			       "\"Ol\xc3\xa1\\n\"}],\"stream\":true}");
	buf_reset(&b);
	CHECK(wire_openai.chat_body(&b, "gpt-4o", m, 1) == 0);
	CHECK_STR(buf_str(&b), "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"system\","
			       "\"content\":\"be \\\"brief\\\"\"}],\"stream\":true,"
			       "\"stream_options\":{\"include_usage\":true}}");
	buf_free(&b);
}

static void test_usage_since(void)
{
	static const struct {
		const char *text;
		long long want; /* -1: refused */
	} t[] = {
		{"1970-01-01", 0},
		{"2026-12-04", 1796342400},
		{"2026-12-04T08:30:15Z", 1796342400 + 8 * 3600 + 30 * 60 + 15},
		{"2026-12-04T08:30:15.999Z", 1796342400 + 8 * 3600 + 30 * 60 + 15},
		{"2026-12-04T08:30", 1796342400 + 8 * 3600 + 30 * 60},
		{"2026-12-04 08:30:00", 1796342400 + 8 * 3600 + 30 * 60},
		{"2026-12-04T08:30:00+01:00", 1796342400 + 7 * 3600 + 30 * 60},
		{"2026-12-04T08:30:00-00:30", 1796342400 + 9 * 3600},
		{"2024-02-29", 1709164800},
		{"2000-02-29", 951782400},
		{"1900-02-28", -1},
		{"2100-02-29", -1},
		{"2023-02-29", -1},
		{"2026-04-31", -1},
		{"2026-00-10", -1},
		{"2026-12-04T24:00", -1},
		{"2026-12-04T08:60", -1},
		{"2026-12-04T08:30:60", -1},
		{"2026-12-04T08:30:00+01", -1},
		{"2026-12-04T08:30:00+0100", -1},
		{"2026-12-04Z", -1},
		{"2026-12-04T", -1},
		{"2026-12-4", -1},
		{"20261204", -1},
		{"", -1},
		{"2026-12-04T08:30:00Zx", -1},
	};
	size_t i;

	for (i = 0; i < sizeof t / sizeof t[0]; i++) {
		long long got = -1;
		int rc = usage_parse_since(t[i].text, &got);

		if ((t[i].want < 0 ? rc != -1 : rc != 0 || got != t[i].want))
			fprintf(stderr, "since case %s: rc %d, %lld\n", t[i].text, rc, got);
		CHECK(t[i].want < 0 ? rc == -1 : rc == 0 && got == t[i].want);
	}
}

int main(void)
{
	test_ollama_lines();
	test_openai_lines();
	test_model_lists();
	test_request_bodies();
	test_usage_since();
	return check_report("test_wire");
}
