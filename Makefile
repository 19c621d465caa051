# memattn — one plain Makefile.
#
#   make            build build/memattnd (release: -O2 -march=native)
#   make run        install the Debian packages the daemon needs (DEB_RUN), build, start it; flags with
#                   ARGS='--data DIR --listen HOST:PORT ...'
#   make test       install the run + test packages (DEB_TEST, with the browser for the /ui test) and the
#                   pinned npm contract tools, build with address+undefined sanitizers, run every test
#                   (unit, e2e, contract)
#   make bench      install the benchmark packages (DEB_BENCH), build the benchmarks (build/bench/*);
#                   docs/RESULTS.md gives the command of each result
#   make contract   the OpenAPI contract check alone (tests/contract.sh; needs make contract-deps)
#   make tsan       the end-to-end suite once more under ThreadSanitizer (build/tsan; CI runs it after make test)
#   make check-layers  which directory may include which headers (tests/check_layers.sh; part of check)
#   make bench-http wrk: memattnd's GET /healthz against nginx at 1, 64, 256 connections (~1 min)
#   make cluster-test three daemons + nginx on loopback: routing, placement, rebalance, a node killed
#   make deb        the Debian package build/deb/memattnd_*.deb (dpkg-buildpackage -us -uc -b)
#   make deb-test   make deb, install it (root), run the installed daemon as user memattn, verify the unit
#   make deps       install every Debian package the project uses (run, test, bench; apt-get, as root)
#   make fuzz       libFuzzer + ASan + UBSan on every decoder of untrusted bytes (tests/fuzz/), FUZZ_SECONDS
#                   (default 60) per target; installs clang and its fuzzer runtime (FUZZ_PKGS) first
#   make fuzz-smoke the same for FUZZ_SMOKE_SECONDS (default 5) each, plus every regression input (CI)
#   make V=1 ...    show the commands
#
# Sources are found by directory: every core/*.c, config/*.c, store/*.c, registry/*.c and server/*.c goes into
# $(BUILD)/libmemattn.a (server/main.c only into the daemon), every tests/unit/test_*.c and
# tests/e2e/test_*.c is its own test binary, every bench/*.c with a main() is its own benchmark.
# Test-only code is in tests/support/: the fault-injection VFS (store_fault.c) is linked into the unit
# tests and into $(BUILD)/memattnd-test, the daemon plus memattnd_test.c, which arms the VFS from
# MEMATTN_STORE_FAULT (the e2e fault tests run it as $MEMATTN_TEST_BIN). $(BUILD)/memattnd, the daemon
# that ships, contains neither; `make check` verifies with nm that no ma_store_fault symbol got in.
# SAN=1 builds into build/san with -fsanitize=address,undefined; TSAN=1 into build/tsan; FUZZ=1 (make fuzz
# does it) into build/fuzz with clang, -fsanitize=fuzzer-no-link,address,undefined: every tests/fuzz/fuzz_*.c
# (but fuzz_common.c, a helper) is a libFuzzer target, tests/fuzz/gen_seeds.c writes their seed corpora.

V       ?= 0
Q        = $(if $(filter 1,$(V)),,@)
CC      ?= cc
ARCH    ?= -march=native

ifeq ($(FUZZ),1)
CC       = clang
BUILD   ?= build/fuzz
OPT      = -O1 -g $(ARCH) -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
LDSAN    = -fsanitize=address,undefined
else ifeq ($(TSAN),1)
BUILD   ?= build/tsan
OPT      = -O1 -g -fsanitize=thread -fno-omit-frame-pointer
LDSAN    = -fsanitize=thread
else ifeq ($(SAN),1)
BUILD   ?= build/san
OPT      = -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
LDSAN    = -fsanitize=address,undefined
else
BUILD   ?= build
OPT      = -O2 -g $(ARCH)
LDSAN    =
endif

LLHTTP_DIR  = /usr/share/llhttp
LLHTTP_INC  = /usr/share/include/llhttp
PKGS        = libuv libcjson openblas sqlite3
# Lazily expanded: `make deps` may install pkg-config and the packages first.
PKG_CFLAGS  = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS    = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -MMD -MP $(OPT)
CFLAGS_ALL  = $(CFLAGS_BASE) -I. -I$(LLHTTP_INC) $(PKG_CFLAGS) $(CFLAGS)
LDLIBS_ALL  = $(PKG_LIBS) -lm -lpthread $(LDSAN) $(LDLIBS)

LIB_SRC   = $(filter-out server/main.c,$(wildcard core/*.c config/*.c store/*.c registry/*.c server/*.c))
LIB_OBJ   = $(LIB_SRC:%.c=$(BUILD)/%.o)
LLHTTP_OBJ= $(patsubst $(LLHTTP_DIR)/%.c,$(BUILD)/llhttp/%.o,$(wildcard $(LLHTTP_DIR)/*.c))
LIB       = $(BUILD)/libmemattn.a
DAEMON    = $(BUILD)/memattnd
TEST_DAEMON = $(BUILD)/memattnd-test
SUPPORT_SRC = $(filter-out tests/support/memattnd_test.c,$(wildcard tests/support/*.c))
SUPPORT_OBJ = $(SUPPORT_SRC:%.c=$(BUILD)/%.o)

UNIT_SRC  = $(wildcard tests/unit/test_*.c)
UNIT_BIN  = $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/unit/%)
E2E_SRC   = $(wildcard tests/e2e/test_*.c)
E2E_HELP  = $(filter-out $(E2E_SRC),$(wildcard tests/e2e/*.c))
E2E_HOBJ  = $(E2E_HELP:%.c=$(BUILD)/%.o)
E2E_BIN   = $(E2E_SRC:tests/e2e/%.c=$(BUILD)/tests/e2e/%)
BENCH_SRC = $(shell grep -l '^int main' bench/*.c 2>/dev/null)
BENCH_HELP= $(filter-out $(BENCH_SRC),$(wildcard bench/*.c))
BENCH_HOBJ= $(BENCH_HELP:%.c=$(BUILD)/%.o)
BENCH_BIN = $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

# Debian packages, by what needs them: `make run` installs DEB_RUN only, `make test` adds DEB_TEST,
# `make bench` / `make bench-http` add DEB_BENCH. `make deps` installs all three.
DEB_RUN   = build-essential pkg-config libuv1-dev libcjson-dev libopenblas-dev libsqlite3-dev node-llhttp
# DEB_TEST includes the browser of the /ui test (tests/e2e/test_ui.c): chromium, its driver, selenium.
DEB_TEST  = libcmocka-dev libcurl4-openssl-dev curl sqlite3 python3 nodejs npm \
            chromium chromium-driver python3-selenium
DEB_BENCH = wrk nginx-light gnuplot-nox
# `make deb` / `make deb-test` (debian/): the packaging tools.
DEB_DEPLOY = debhelper dpkg-dev
DEB_PKGS  = $(DEB_RUN) $(DEB_TEST) $(DEB_BENCH) $(DEB_DEPLOY)

FUZZ_PKGS = clang libclang-rt-14-dev
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 5
FUZZ_TARGETS = $(patsubst tests/fuzz/%.c,%,$(filter-out tests/fuzz/fuzz_common.c,$(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_BIN  = $(FUZZ_TARGETS:%=$(BUILD)/tests/fuzz/%)
FUZZ_HOBJ = $(BUILD)/tests/fuzz/fuzz_common.o

# Contract tooling from npm (pinned in tools/contract/package.json + package-lock.json), installed by
# `make contract-deps` into tools/contract/node_modules.
CONTRACT_DIR = tools/contract
CONTRACT_BIN = $(CONTRACT_DIR)/node_modules/.bin

# Extra daemon arguments of `make run`, e.g. make run ARGS='--data /var/lib/memattn --listen 0.0.0.0:8080'
ARGS ?=

# The build string of GET /v1/info: rewritten only when `git describe` changes, so info.o is rebuilt then.
BUILD_INFO = $(BUILD)/gen/build_info.txt

.PHONY: all build run test check check-layers check-release unit e2e bench bench-http deps deps-run deps-test deps-bench clean tsan \
        contract contract-deps lint-openapi install-pkgs FORCE cluster-test deb deb-test deps-deploy \
        fuzz fuzz-smoke fuzz-deps fuzz-build fuzz-bins
# Keep the objects of test and bench binaries (make would delete them as intermediates and rebuild).
.SECONDARY:
all: build
build: $(DAEMON)

$(DAEMON): $(BUILD)/server/main.o $(LIB) $(LLHTTP_OBJ)
	@echo "  LD      $@"
	$(Q)$(CC) -o $@ $^ $(LDLIBS_ALL)

# The daemon with the test hooks: fault injection through MEMATTN_STORE_FAULT, and the kill after a
# commit of MEMATTN_KILL_AFTER_COMMIT through the store calls wrapped here (tests/support/memattnd_test.c).
TEST_DAEMON_WRAP = -Wl,--wrap=ma_store_commit,--wrap=ma_store_commit_group,--wrap=ma_store_session_create_idem,--wrap=ma_store_session_delete_idem
$(TEST_DAEMON): $(BUILD)/server/main.o $(BUILD)/tests/support/memattnd_test.o $(SUPPORT_OBJ) $(LIB) $(LLHTTP_OBJ)
	@echo "  LD      $@"
	$(Q)$(CC) -o $@ $^ $(LDLIBS_ALL) $(TEST_DAEMON_WRAP)

$(LIB): $(LIB_OBJ)
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/llhttp/%.o: $(LLHTTP_DIR)/%.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	$(Q)$(CC) -std=c11 -O2 -w $(filter -fsanitize%,$(OPT)) -I$(LLHTTP_INC) -c -o $@ $<

# The inspector's static files (server/ui/), embedded into server/ui.o as byte arrays.
UI_FILES  = $(sort $(wildcard server/ui/*.html server/ui/*.js server/ui/*.css))
$(BUILD)/gen/server/ui_assets.h: $(UI_FILES) server/ui/embed.sh
	@mkdir -p $(dir $@)
	@echo "  GEN     $@"
	$(Q)sh server/ui/embed.sh $(UI_FILES) > $@.tmp && mv $@.tmp $@
$(BUILD)/server/ui.o: $(BUILD)/gen/server/ui_assets.h
$(BUILD)/server/ui.o: CFLAGS_ALL += -I$(BUILD)/gen

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	$(Q)$(CC) $(CFLAGS_ALL) -c -o $@ $<

$(BUILD_INFO): FORCE
	@mkdir -p $(dir $@)
	@v=$$(git describe --always --dirty 2>/dev/null | tr -cd 'A-Za-z0-9._-'); \
	printf '%s\n' "$${v:-unknown}" > $@.tmp; cmp -s $@.tmp $@ || mv $@.tmp $@; rm -f $@.tmp
$(BUILD)/server/info.o: $(BUILD_INFO)
$(BUILD)/server/info.o: CFLAGS_ALL += -DMEMATTN_BUILD='"$(shell cat $(BUILD_INFO) 2>/dev/null)"'

$(BUILD)/tests/unit/%: $(BUILD)/tests/unit/%.o $(SUPPORT_OBJ) $(LIB) $(LLHTTP_OBJ)
	@echo "  LD      $@"
	$(Q)$(CC) -o $@ $^ $(LDLIBS_ALL) -lcmocka

$(BUILD)/tests/e2e/%: $(BUILD)/tests/e2e/%.o $(E2E_HOBJ) $(LIB) $(LLHTTP_OBJ)
	@echo "  LD      $@"
	$(Q)$(CC) -o $@ $^ $(LDLIBS_ALL) -lcmocka -lcurl

# The C client library (clients/c/) is linked into its end-to-end test and its benchmark.
$(BUILD)/tests/e2e/test_client_c: $(BUILD)/clients/c/memattn_client.o
$(BUILD)/bench/client_overhead: $(BUILD)/clients/c/memattn_client.o
$(BUILD)/bench/client_overhead: LDLIBS_ALL += -lcurl

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(BENCH_HOBJ) $(LIB) $(LLHTTP_OBJ)
	@echo "  LD      $@"
	$(Q)$(CC) -o $@ $^ $(LDLIBS_ALL)

# libFuzzer targets (FUZZ=1 builds only): the fuzzer runtime brings main().
$(BUILD)/tests/fuzz/fuzz_%: $(BUILD)/tests/fuzz/fuzz_%.o $(FUZZ_HOBJ) $(LIB) $(LLHTTP_OBJ)
	@echo "  LD      $@"
	$(Q)$(CC) -fsanitize=fuzzer -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/tests/fuzz/gen_seeds: $(BUILD)/tests/fuzz/gen_seeds.o $(FUZZ_HOBJ) $(LIB) $(LLHTTP_OBJ)
	@echo "  LD      $@"
	$(Q)$(CC) -o $@ $^ $(LDLIBS_ALL)

# ---- the two README commands ------------------------------------------------------------------
run: deps-run
	$(Q)$(MAKE) --no-print-directory build
	./$(DAEMON) $(ARGS)

test: deps-run deps-test
	$(Q)$(MAKE) --no-print-directory contract-deps
	$(Q)$(MAKE) --no-print-directory SAN=1 check

# The layering rules, the shipped daemon free of test code, then every unit and end-to-end test of
# $(BUILD); tests/run.sh prints the totals. The contract check (lint, schemas, every example through
# Prism's validating proxy) runs as one more "binary" when its tools are installed (make
# contract-deps), and is skipped otherwise.
check: check-layers check-release $(UNIT_BIN) $(E2E_BIN) $(TEST_DAEMON)
	$(Q)MEMATTN_BIN=$(abspath $(DAEMON)) MEMATTN_TEST_BIN=$(abspath $(TEST_DAEMON)) tests/run.sh $(UNIT_BIN) $(E2E_BIN) \
	  tests/contract.sh

check-layers:
	$(Q)tests/check_layers.sh

# The daemon that ships must not contain the fault-injection VFS (tests/support/store_fault.c) nor the
# kill-after-commit wrappers of the test daemon (tests/support/memattnd_test.c).
check-release: $(DAEMON)
	$(Q)if nm $(DAEMON) | grep -qE 'ma_store_fault|__wrap_|__real_'; then \
	  echo "check-release: $(DAEMON) contains test code:"; nm $(DAEMON) | grep -E 'ma_store_fault|__wrap_|__real_'; exit 1; \
	else echo "check-release: $(DAEMON) has no ma_store_fault, __wrap_ or __real_ symbol"; fi

# docs/openapi.yaml: Redocly lint (config redocly.yaml), Ajv compile of every schema and example,
# and every documented example through Prism's validating proxy against a live daemon.
contract: $(DAEMON)
	$(Q)MEMATTN_BIN=$(abspath $(DAEMON)) tests/contract.sh

lint-openapi:
	$(Q)$(CONTRACT_BIN)/redocly lint docs/openapi.yaml

contract-deps: deps-test
	$(Q)if [ ! -x $(CONTRACT_BIN)/prism ] || [ ! -x $(CONTRACT_BIN)/redocly ] || \
	      [ $(CONTRACT_DIR)/package-lock.json -nt $(CONTRACT_DIR)/node_modules/.package-lock.json ]; then \
	  echo "  NPM     $(CONTRACT_DIR) (npm ci)"; \
	  cd $(CONTRACT_DIR) && npm ci --no-audit --no-fund --loglevel=error >/dev/null; \
	fi

unit: $(UNIT_BIN)
	$(Q)tests/run.sh $(UNIT_BIN)

e2e: $(DAEMON) $(TEST_DAEMON) $(E2E_BIN)
	$(Q)MEMATTN_BIN=$(abspath $(DAEMON)) MEMATTN_TEST_BIN=$(abspath $(TEST_DAEMON)) tests/run.sh $(E2E_BIN)

# The end-to-end suite once more under ThreadSanitizer (a separate build; see docs/TESTING.md).
tsan:
	$(Q)$(MAKE) --no-print-directory TSAN=1 e2e

bench: deps-run deps-bench
	$(Q)$(MAKE) --no-print-directory $(BENCH_BIN)

# Needs both cores to itself for a meaningful ratio; see docs/RESULTS.md.
bench-http: deps-run deps-bench
	$(Q)$(MAKE) --no-print-directory build
	bench/http_bench.sh

# ---- fuzzing (tests/fuzz/run.sh; figures in docs/RESULTS.md) ----------------------------------------
fuzz-deps:
	$(Q)$(MAKE) --no-print-directory install-pkgs PKGS_WANTED="$(FUZZ_PKGS)"

fuzz-build: deps-run deps-test fuzz-deps
	$(Q)$(MAKE) --no-print-directory FUZZ=1 fuzz-bins

fuzz-bins: $(FUZZ_BIN) $(BUILD)/tests/fuzz/gen_seeds

fuzz: fuzz-build
	$(Q)tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-smoke: fuzz-build
	$(Q)tests/fuzz/run.sh $(FUZZ_SMOKE_SECONDS) $(FUZZ_TARGETS)


# Three daemons and nginx on loopback ports (tests/cluster/cluster_test.py says what is checked).
cluster-test: $(DAEMON)
	$(Q)python3 tests/cluster/cluster_test.py $(abspath $(DAEMON))

# The package is built from a copy of the tree (without build/, data/, .git) so the work tree's
# build/ is left alone; debian/rules builds with ARCH= (portable code, no -march=native).
DEB_DIR = build/deb
deb:
	$(Q)rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/memattn
	$(Q)tar --exclude=./build --exclude=./data --exclude=./.git -cf - . | tar -xf - -C $(DEB_DIR)/memattn
	$(Q)cd $(DEB_DIR)/memattn && dpkg-buildpackage -us -uc -b >../build.log 2>&1 || { tail -40 ../build.log; exit 1; }
	$(Q)ls $(DEB_DIR)/*.deb

deb-test: deb
	$(Q)tests/deb_test.sh $(DEB_DIR)/memattnd_*.deb

deps: deps-run deps-test deps-bench deps-deploy
deps-run:
	$(Q)$(MAKE) --no-print-directory install-pkgs PKGS_WANTED="$(DEB_RUN)"
deps-test:
	$(Q)$(MAKE) --no-print-directory install-pkgs PKGS_WANTED="$(DEB_TEST)"
deps-bench:
	$(Q)$(MAKE) --no-print-directory install-pkgs PKGS_WANTED="$(DEB_BENCH)"
deps-deploy:
	$(Q)$(MAKE) --no-print-directory install-pkgs PKGS_WANTED="$(DEB_DEPLOY)"

# tools/install-pkgs.sh installs what of PKGS_WANTED is missing (apt-get as root; else prints the line).
install-pkgs:
	$(Q)tools/install-pkgs.sh $(PKGS_WANTED)

clean:
	rm -rf build

-include $(wildcard $(patsubst %.o,%.d,$(LIB_OBJ) $(BUILD)/server/main.o $(SUPPORT_OBJ) $(BUILD)/tests/support/memattnd_test.o $(E2E_HOBJ) $(BENCH_HOBJ) $(FUZZ_HOBJ)) $(UNIT_BIN:=.d) $(E2E_BIN:=.d) $(BENCH_BIN:=.d) $(FUZZ_BIN:=.d) $(BUILD)/tests/fuzz/gen_seeds.d)
