# jarvas — build, run and test.  `make help` lists the targets.
#
# One pattern rule builds every object; -MMD -MP gives real header
# dependencies.  Objects go to $(BUILD)/, responders to $(BIN)/.
# `make asan` is the same build with ASan + UBSan in build/asan/.

BUILD   ?= build/release
BIN     ?= cgi-bin
CC      ?= cc
CFLAGS  ?= -O2 -g
# Always on, whatever CFLAGS a caller passes (make asan passes its own).
override CFLAGS += -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE -MMD -MP -Isrc
LDLIBS  := -lfcgi -lcurl -lcjson -lsqlite3 -lsodium -lcrypto -lpthread

RESPONDERS := token chat chat_stream
PROGRAMS   := $(addprefix $(BIN)/,$(RESPONDERS) jarvas-admin)
MAINS      := $(wildcard src/main_*.c)
# src/wire/ holds the LLM servers' protocols, one file each (wire/wire.h).
LIB_SRC    := $(filter-out $(MAINS),$(wildcard src/*.c src/wire/*.c))
LIB_OBJ    := $(LIB_SRC:src/%.c=$(BUILD)/%.o) $(BUILD)/schema.o
UNIT_TESTS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/test_*.c))

# Debian packages: to build, to run, and what the tests add.  The tests
# also need promtool, extracted from the prometheus package into
# $(PROMTOOL) (no Prometheus server installed; tests/integration/run.py
# puts build/tools first on PATH).
PKGS_BUILD := gcc make libc6-dev libfcgi-dev libcurl4-openssl-dev libcjson-dev \
              libsqlite3-dev libsodium-dev libssl-dev
PKGS_RUN   := spawn-fcgi nginx-light sqlite3 curl ca-certificates
PKGS_TEST  := python3 valgrind clang libclang-rt-14-dev chromium openssl
PROMTOOL   := build/tools/promtool

# The browser test (tests/integration/test_browser.py) drives Debian's
# chromium with playwright-core, pinned in tests/browser/package-lock.json.
# Debian's node and npm come only where the machine has no node.
BROWSER_MODULES := tests/browser/node_modules/.package-lock.json
WEB_VENDOR := src/web/vendor/marked.esm.js src/web/vendor/purify.es.mjs

# The OpenAI pass: after the whole suite against the fake's Ollama API,
# the tests of the streaming and chat paths again against its OpenAI API
# (/v1/chat/completions, with an API key; JARVAS_TEST_UPSTREAM_API=openai).
# About 1.5 minutes.  Left out as protocol-neutral past the upstream
# transfer these already cover: the rest of test_resume (the journal,
# reconnects) and test_faults (the same failures under load: the OpenAI
# shapes of each are in test_openai_upstream, every pass; make bench loads
# both protocols); and the modules that never reach the model.
OPENAI_TESTS := test_stream test_chat test_upstream_content test_delivery test_models_usage \
                test_resume.test_done_and_history_carry_the_upstreams_usage \
                test_resume.test_failed_and_interrupted_replies_say_so_in_history_and_on_replay
# Both passes run, whatever the first gave; the status is the worse one.
INTEGRATION = python3 tests/integration/run.py; rc=$$?; \
	JARVAS_TEST_UPSTREAM_API=openai python3 tests/integration/run.py $(OPENAI_TESTS) || rc=1; \
	exit $$rc

.PHONY: all help deps deps-test run stop test asan unit integration valgrind \
        clean format bench fuzz soak

all: $(PROGRAMS) tests/fake_ollama $(WEB_VENDOR)

# Keep objects that only feed a link step.
.SECONDARY:
.PRECIOUS: %/node_modules/.package-lock.json

help:
	@echo "make            build the responders into $(BIN)/ and the test upstream"
	@echo "make run        install missing packages, build, start everything (spawn/jarvasctl start)"
	@echo "make stop       stop what 'make run' started"
	@echo "make test       install what tests need, build, run unit + integration tests"
	@echo "make integration  the integration tests: all of them (Ollama API), then the OpenAI pass"
	@echo "make asan       the integration tests (both passes) against an ASan + UBSan build"
	@echo "make valgrind   memcheck each responder over many requests"
	@echo "make bench      relay overhead against nginx proxying straight to the upstream (BENCH_QUICK=1: small)"
	@echo "make fuzz       libFuzzer on the parsers (FUZZ_SECONDS per target, default 60)"
	@echo "make soak       mixed traffic for SOAK_SECONDS (default 600), responder RSS drift"
	@echo "make deps       install missing Debian packages (as root)"
	@echo "make format     clang-format the C sources"
	@echo "make clean      remove build products"

# Objects also depend on this file: a change of flags rebuilds everything.
$(BUILD)/%.o: src/%.c Makefile
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

# schema.sql is compiled in, so a binary always carries its migrations.
$(BUILD)/schema.c: schema.sql
	@mkdir -p $(@D)
	{ echo 'const char db_schema_sql[] ='; \
	  sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' $<; \
	  echo ';'; } > $@

$(BUILD)/schema.o: $(BUILD)/schema.c
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/libjarvas.a: $(LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

$(BIN)/%: $(BUILD)/main_%.o $(BUILD)/libjarvas.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/jarvas-admin: $(BUILD)/main_admin.o $(BUILD)/libjarvas.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The fake is one self-contained file with its own feature macros.
tests/fake_ollama: tests/fake_ollama.c
	$(CC) $(filter-out -D_GNU_SOURCE -MMD -MP -Isrc,$(CFLAGS)) -o $@ $< -lcjson

tests/bench/loadgen: tests/bench/loadgen.c
	$(CC) -O2 -g -Wall -Wextra -Werror -o $@ $< -lm

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libjarvas.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# Install only what is missing; apt-get needs root.
deps:
	@PKGS="$(PKGS_BUILD) $(PKGS_RUN) $(EXTRA_PKGS)" spawn/install-deps

deps-test:
	@$(MAKE) --no-print-directory deps EXTRA_PKGS="$(PKGS_TEST)"
	@spawn/get-promtool $(PROMTOOL)

# npm packages pinned by a package-lock.json (the page's libraries, the
# browser tests' driver).  Debian's node and npm come only where the
# machine has no node.
%/node_modules/.package-lock.json: %/package.json %/package-lock.json
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || \
		$(MAKE) --no-print-directory deps EXTRA_PKGS="nodejs npm"
	cd $* && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The page's two libraries, their browser builds next to it (and their
# licences): nginx serves src/web in place.
$(WEB_VENDOR): src/web/node_modules/.package-lock.json
	@mkdir -p src/web/vendor
	cp src/web/node_modules/marked/lib/marked.esm.js src/web/vendor/marked.esm.js
	cp src/web/node_modules/marked/LICENSE src/web/vendor/marked.LICENSE
	cp src/web/node_modules/dompurify/dist/purify.es.mjs src/web/vendor/purify.es.mjs
	cp src/web/node_modules/dompurify/LICENSE src/web/vendor/dompurify.LICENSE
	@touch $(WEB_VENDOR)

run: deps
	@$(MAKE) --no-print-directory all
	@spawn/jarvasctl run

stop:
	@spawn/jarvasctl stop

unit: $(UNIT_TESTS)
	@set -e; for t in $(UNIT_TESTS); do $$t; done

integration: all tests/bench/loadgen $(BROWSER_MODULES)
	@$(INTEGRATION)

test: deps-test
	@$(MAKE) --no-print-directory all unit $(BROWSER_MODULES)
	@$(MAKE) --no-print-directory integration
	FUZZ_SECONDS=5 tests/fuzz/run.sh
	@# valgrind's traffic against the OpenAI-speaking upstream: the Ollama
	@# path's decoder is the same transport, fuzzed with LeakSanitizer
	JARVAS_TEST_UPSTREAM_API=openai tests/valgrind/run.sh

valgrind: deps-test
	@$(MAKE) --no-print-directory all
	tests/valgrind/run.sh

bench: all tests/bench/loadgen
	tests/bench/bench.sh

fuzz: deps-test
	tests/fuzz/run.sh

soak: all
	python3 tests/soak/soak.py

# The responders run as an unprivileged user (jarvasctl as root): they
# write their reports into a fresh world-writable directory (the checkout
# may be out of their reach), moved to build/asan/ afterwards.
asan: deps-test tests/bench/loadgen $(BROWSER_MODULES)
	@rm -f build/asan/asan.* build/asan/ubsan.*
	@$(MAKE) --no-print-directory all BUILD=build/asan BIN=build/asan/cgi-bin \
		CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
	@reports=$$(mktemp -d /tmp/jarvas-asan.XXXXXX) && chmod 1777 "$$reports" && \
	JARVAS_TEST_BIN=$(CURDIR)/build/asan/cgi-bin \
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:log_path=$$reports/asan \
		UBSAN_OPTIONS=print_stacktrace=1:log_path=$$reports/ubsan \
		sh -c '$(INTEGRATION)'; rc=$$?; \
	mv "$$reports"/* build/asan/ 2>/dev/null; rmdir "$$reports"; \
	if ls build/asan/asan.* build/asan/ubsan.* >/dev/null 2>&1; then \
		echo "sanitizer reports:"; cat build/asan/asan.* build/asan/ubsan.* 2>/dev/null; exit 1; \
	else echo "sanitizers: no reports"; fi; exit $$rc

format:
	clang-format -i src/*.c src/*.h src/wire/*.c src/wire/*.h tests/*.c tests/unit/*.c tests/unit/*.h tests/fuzz/*.c tests/bench/*.c

clean:
	rm -rf build $(PROGRAMS) tests/fake_ollama tests/bench/loadgen src/web/vendor

-include $(LIB_OBJ:.o=.d) $(MAINS:src/%.c=$(BUILD)/%.d)
