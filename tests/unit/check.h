/*
 * check — the smallest test harness that does the job: CHECK() records a
 * failure with file and line and goes on; check_report() prints the
 * closing "N passed, N failed" line and gives the exit status.
 */
#ifndef JARVAS_CHECK_H
#define JARVAS_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_passed, check_failed;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (cond) {                                                                        \
			check_passed++;                                                            \
		} else {                                                                           \
			check_failed++;                                                            \
			fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);            \
		}                                                                                  \
	} while (0)

#define CHECK_STR(got, want)                                                                       \
	do {                                                                                       \
		const char *g_ = (got), *w_ = (want);                                              \
		if (g_ && w_ && strcmp(g_, w_) == 0) {                                             \
			check_passed++;                                                            \
		} else {                                                                           \
			check_failed++;                                                            \
			fprintf(stderr, "FAIL %s:%d: got \"%s\", want \"%s\"\n", __FILE__,         \
				__LINE__, g_ ? g_ : "(null)", w_ ? w_ : "(null)");                 \
		}                                                                                  \
	} while (0)

static int check_report(const char *name)
{
	printf("%s: %d passed, %d failed\n", name, check_passed, check_failed);
	return check_failed ? 1 : 0;
}

#endif
