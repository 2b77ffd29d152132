/* Unit tests: the journal of resumable streams (src/journal.c) — records
 * handed on in order and once, segments rotated with the oldest dropped
 * and the gap told, the end, readers seen by the writer and a journal cut
 * off seen by its readers, stop requests.  In a fresh directory under
 * /tmp; one process plays writer and readers. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "journal.h"

struct seen {
	int events, gaps, ends, first, last, gap_from, gap_n, stop_after;
	size_t bytes;
	char last_text[64];
};

static int collect(void *ctx, int type, int seq, const char *bytes, size_t n)
{
	struct seen *s = ctx;

	if (s->stop_after && s->events >= s->stop_after)
		return -1;
	if (type == 0) {
		s->gaps++;
		s->gap_from = seq;
		s->gap_n = (int)n;
		return 0;
	}
	if (type == JOURNAL_END) {
		s->ends++;
		snprintf(s->last_text, sizeof s->last_text, "%.*s", (int)n, bytes);
		return 0;
	}
	CHECK(s->last == 0 || seq == s->last + 1 || s->gaps > 0);
	if (s->first == 0)
		s->first = seq;
	s->last = seq;
	s->events++;
	s->bytes += n;
	return 0;
}

static void test_small_journal(void)
{
	struct journal_writer w;
	struct journal_reader rd;
	struct seen s = {0};
	char ev[32];
	int i;

	CHECK(journal_create(&w, 101) == 0);
	CHECK(journal_has_readers(&w) == 0);
	CHECK(journal_open(&rd, 101, 3) == 0); /* saw events 1..3 */
	CHECK(journal_has_readers(&w) == 1);
	for (i = 1; i <= 10; i++) {
		snprintf(ev, sizeof ev, "data: %d\n\n", i);
		CHECK(journal_add(&w, JOURNAL_EVENT, i, ev, strlen(ev)) == 0);
		if (i == 5) { /* a reader mid-way: what is written so far */
			CHECK(journal_flush(&w) == 0);
			CHECK(journal_read(&rd, collect, &s) == 0);
			CHECK(s.events == 2 && s.first == 4 && s.last == 5);
		}
	}
	CHECK(journal_add(&w, JOURNAL_END, 11, "the end", 7) == 0);
	CHECK(journal_flush(&w) == 0);
	/* Removed before the reader is done: it reads on from its open file. */
	journal_remove(&w);
	CHECK(journal_read(&rd, collect, &s) == 1);
	CHECK(s.events == 7 && s.last == 10 && s.ends == 1 && s.gaps == 0);
	CHECK_STR(s.last_text, "the end");
	CHECK(journal_read(&rd, collect, &s) == 1); /* ended: nothing again */
	CHECK(s.ends == 1);
	journal_close(&rd);
	/* Gone: a reconnect finds the stored reply instead. */
	CHECK(journal_open(&rd, 101, 0) == 1);
	journal_close(&rd);
}

static void test_rotation_and_gap(void)
{
	static char ev[4096];
	struct journal_writer w;
	struct journal_reader early, late;
	struct seen a = {0}, b = {0};
	int i, n = 2000; /* 8 MB of events: many segments */

	memset(ev, 'x', sizeof ev);
	CHECK(journal_create(&w, 202) == 0);
	CHECK(journal_open(&early, 202, 0) == 0);
	for (i = 1; i <= n; i++) {
		CHECK(journal_add(&w, JOURNAL_EVENT, i, ev, sizeof ev) == 0);
		if (i % 50 == 0)
			CHECK(journal_flush(&w) == 0);
		if (i == 60) { /* the early reader keeps up for a while */
			CHECK(journal_flush(&w) == 0);
			CHECK(journal_read(&early, collect, &a) == 0);
			CHECK(a.events == 60 && a.gaps == 0);
		}
	}
	CHECK(journal_add(&w, JOURNAL_END, n + 1, "end", 3) == 0);
	CHECK(journal_flush(&w) == 0);
	/* At most the two newest segments (about 1 MiB) are left. */
	CHECK(w.seg >= 10);
	/* A reader from the start now: the oldest events are gone, it is
	 * told which, then gets the rest in order. */
	CHECK(journal_open(&late, 202, 0) == 0);
	CHECK(journal_read(&late, collect, &b) == 1);
	CHECK(b.gaps == 1 && b.gap_from == 1 && b.gap_n == b.first - 1);
	CHECK(b.last == n && b.ends == 1);
	CHECK(b.events == n - b.first + 1 && b.events <= 300);
	/* The early reader still holds its old segment: it reads it to its
	 * end, then finds the next ones dropped, and is told so too. */
	CHECK(journal_read(&early, collect, &a) == 1);
	CHECK(a.gaps == 1 && a.last == n && a.ends == 1);
	journal_close(&early);
	journal_close(&late);
	journal_remove(&w);
}

static void test_back_pressure_and_cut_off(void)
{
	struct journal_writer w;
	struct journal_reader rd;
	struct seen s = {.stop_after = 3};
	int i;

	CHECK(journal_create(&w, 303) == 0);
	CHECK(journal_open(&rd, 303, 0) == 0);
	for (i = 1; i <= 6; i++)
		CHECK(journal_add(&w, JOURNAL_EVENT, i, "e", 1) == 0);
	CHECK(journal_flush(&w) == 0);
	/* The reader's client is full after 3: the rest waits, nothing lost. */
	CHECK(journal_read(&rd, collect, &s) == 0 && s.events == 3);
	s.stop_after = 0;
	CHECK(journal_read(&rd, collect, &s) == 0 && s.events == 6 && s.last == 6);
	/* Nothing new, writer alive: wait. */
	CHECK(journal_read(&rd, collect, &s) == 0);
	/* The writer goes without an end (it died, or gave the journal up):
	 * the reader is told it was cut off. */
	journal_remove(&w);
	CHECK(journal_read(&rd, collect, &s) == -1);
	CHECK(s.ends == 0);
	journal_close(&rd);
}

static void test_stop_requests(void)
{
	CHECK(journal_stop_requested(404) == 0);
	CHECK(journal_request_stop(404) == 0);
	CHECK(journal_stop_requested(404) == 1);
	CHECK(journal_request_stop(404) == 0); /* twice is once */
	journal_clear_stop(404);
	CHECK(journal_stop_requested(404) == 0);
	CHECK(journal_stop_name("404.stop") == 404);
	CHECK(journal_stop_name("404") == 0);
	CHECK(journal_stop_name("404.new") == 0);
	CHECK(journal_stop_name("0.stop") == 0);
	CHECK(journal_stop_name("x.stop") == 0);
	CHECK(journal_stop_name(".stop") == 0);
}

int main(void)
{
	char dir[] = "/tmp/jarvas-journal-XXXXXX", cmd[128];
	int rc;

	if (!mkdtemp(dir))
		return perror("mkdtemp"), 1;
	config.streams_dir = dir;
	CHECK(journal_init() == 0);
	test_small_journal();
	test_rotation_and_gap();
	test_back_pressure_and_cut_off();
	test_stop_requests();
	rc = check_report("test_journal");
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	return rc;
}
