/*
 * fuzz_openai_fast — libFuzzer target comparing the two readers of an
 * OpenAI chunk in src/wire/openai.c: fast_chunk() (one pass, no tree,
 * for the usual token chunk) against decode_tree() (cJSON, the reference).
 *
 * Invariant: whenever fast_chunk() takes a line (anything but FAST_NO),
 * decode_tree() reads it the same way: both succeed, neither is an error
 * or the end, and the content, its length and the finish reason are the
 * same bytes.  When fast_chunk() declines it leaves nothing behind.
 *
 * The file under test is included, not linked: both readers are static
 * (run.sh links the rest of src/wire/ without it).  Input: one line's data,
 * as after "data: ".
 */
#include "../../src/wire/openai.c"

#include <stdint.h>
#include <stdio.h>

#define FUZZ_ASSERT(cond)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_openai_fast: invariant failed at %s:%d: %s\n",       \
				__FILE__, __LINE__, #cond);                                        \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static void fresh(struct wire_line *l)
{
	memset(l, 0, sizeof *l);
	l->prompt_tokens = l->completion_tokens = -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *copy = malloc(size ? size : 1); /* exact size: a read past it is caught */
	struct wire_line fast, tree;
	int rc;

	FUZZ_ASSERT(copy);
	memcpy(copy, data, size);
	fresh(&fast);
	fresh(&tree);
	rc = fast_chunk(copy, size, &fast);
	if (rc == FAST_NO) {
		FUZZ_ASSERT(!fast.json && !fast.content && !fast.finish_reason && fast.len == 0);
	} else {
		FUZZ_ASSERT(rc == 0); /* -1 only when memory runs out */
		FUZZ_ASSERT(decode_tree(copy, size, &tree) == 0);
		FUZZ_ASSERT(!fast.error && !tree.error && !fast.end && !tree.end);
		FUZZ_ASSERT(fast.prompt_tokens == tree.prompt_tokens &&
			    fast.completion_tokens == tree.completion_tokens);
		FUZZ_ASSERT(!fast.content == !tree.content && fast.len == tree.len);
		if (fast.content)
			FUZZ_ASSERT(memcmp(fast.content, tree.content, fast.len) == 0 &&
				    strlen(fast.content) == fast.len);
		FUZZ_ASSERT(!fast.finish_reason == !tree.finish_reason);
		if (fast.finish_reason)
			FUZZ_ASSERT(strcmp(fast.finish_reason, tree.finish_reason) == 0);
	}
	wire_line_free(&fast);
	wire_line_free(&tree);
	free(copy);
	return 0;
}
