# glia -- build, test, bench, install. Plain make: no configure step.
#
#   make                 bin/glia, lib/libglia.a, lib/libglia.so, the Lua module
#   make LUA=luajit      the same against LuaJIT 2.1 (default: Lua 5.4)
#   make SAN=1           AddressSanitizer + UndefinedBehaviorSanitizer build
#   make run             the main job: train the char-level GPT on the KJV Bible
#                        for a few minutes, checkpoint, loss curve, a sample
#                        (RUN_ARGS="--time 600" to train longer)
#   make test            the TAP suite through prove
#   make bench           benchmarks (PyTorch side by side when installed)
#   make deps            apt-get the Debian packages that are missing
#   make install PREFIX=/usr/local

LUA     ?= lua5.4
PREFIX  ?= /usr/local
ARCH    ?= -march=native
WERROR  ?=
SAN     ?=

ifeq ($(LUA),luajit)
  LUA_PC   := luajit
  LUA_ABI  := 5.1
  LUA_NAME := LuaJIT 2.1
else
  LUA_PC   := lua5.4
  LUA_ABI  := 5.4
  LUA_NAME := Lua 5.4
endif

FLAVOR  := $(LUA)$(if $(SAN),-san)
OBJDIR  := build/$(FLAVOR)
LUA_CFLAGS := $(shell pkg-config --cflags $(LUA_PC) 2>/dev/null)
LUA_LIBS   := $(shell pkg-config --libs $(LUA_PC) 2>/dev/null)
BLAS_CFLAGS := -I/usr/include/x86_64-linux-gnu/openblas-pthread

SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT := $(if $(SAN),-O1 -g $(SANFLAGS),-O2 -g)
CFLAGS_BASE := -std=gnu11 -Wall -Wextra $(if $(WERROR),-Werror) $(OPT) $(ARCH) -fPIC \
  -fvisibility=hidden -pthread -Ivm -Iops -Ilua $(LUA_CFLAGS) $(BLAS_CFLAGS) \
  -DGLIA_LUA_NAME='"$(LUA_NAME)"' -DGLIA_LUA_ABI='"$(LUA_ABI)"' \
  -DGLIA_STDLIB_DIR='"$(PREFIX)/share/glia"' -MMD -MP
CFLAGS  ?=
ALL_CFLAGS := $(CFLAGS_BASE) $(CFLAGS)
LDLIBS  := $(LUA_LIBS) -lz -lm -ldl -pthread
SANLD   := $(if $(SAN),$(SANFLAGS))

CORE_SRC := $(wildcard vm/*.c) $(wildcard ops/*.c)
BIND_SRC := lua/binding.c lua/index.c lua/io.c lua/data.c lua/embed.c
MAIN_SRC := lua/main.c lua/repl.c
LIB_OBJ  := $(patsubst %.c,$(OBJDIR)/%.o,$(CORE_SRC) $(BIND_SRC))
MAIN_OBJ := $(patsubst %.c,$(OBJDIR)/%.o,$(MAIN_SRC))
CTEST_SRC := $(wildcard t/c/*.c)
CTEST_BIN := $(patsubst t/c/%.c,$(OBJDIR)/t/%.t,$(CTEST_SRC))

LUAMOD  := lib/lua/$(LUA_ABI)/glia/core.so
STAMP   := build/.flavor

.PHONY: all test test-gemm bench run deps install clean check-deps FORCE

all: check-deps bin/glia lib/libglia.a lib/libglia.so $(LUAMOD) $(CTEST_BIN)

check-deps:
	@pkg-config --exists $(LUA_PC) || { echo "glia: $(LUA_PC) headers missing: run 'make deps'"; exit 1; }
	@test -e /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h || { echo "glia: OpenBLAS missing: run 'make deps'"; exit 1; }

# Outputs shared by flavors (bin/, lib/) relink when the flavor changes.
$(STAMP): FORCE
	@mkdir -p build
	@echo "$(FLAVOR)" | cmp -s - $@ || echo "$(FLAVOR)" > $@

$(OBJDIR)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "CC $<"
	@$(CC) $(ALL_CFLAGS) -c $< -o $@

# Each flavor links its own executable; bin/glia is a copy of the last one
# built (replaced atomically), while `make test` runs the flavor's own.
GLIA_BIN := $(OBJDIR)/bin/glia

$(GLIA_BIN): $(MAIN_OBJ) $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(SANLD) -rdynamic -o $@ $(MAIN_OBJ) $(LIB_OBJ) $(LDLIBS) -ledit

bin/glia: $(GLIA_BIN) $(STAMP)
	@mkdir -p bin
	@cp $(GLIA_BIN) bin/.glia.tmp && mv bin/.glia.tmp bin/glia

lib/libglia.a: $(LIB_OBJ) $(STAMP)
	@mkdir -p lib
	rm -f $@ && ar rcs $@ $(LIB_OBJ)

lib/libglia.so: $(LIB_OBJ) $(STAMP)
	@mkdir -p lib
	$(CC) $(SANLD) -shared -o $@ $(LIB_OBJ) $(LDLIBS)

# The module for a stock interpreter: the interpreter provides the Lua API.
$(LUAMOD): $(LIB_OBJ) $(STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(SANLD) -shared -o $@ $(LIB_OBJ) -lz -lm -ldl -pthread

$(OBJDIR)/t/%.t: t/c/%.c $(LIB_OBJ) t/c/tap.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SANLD) -It/c -o $@ $< $(LIB_OBJ) $(LDLIBS)

# TESTS picks files (default: all); GEMM_TESTS are the files whose results
# go through OpenBLAS, which .ci/run runs again under other kernels.
TESTS      ?= t/*.t $(CTEST_BIN)
GEMM_TESTS := t/matmul.t t/attention.t t/mha.t t/block.t t/nn.t t/gpt.t t/mlp.t t/optim.t \
  $(OBJDIR)/t/blas.t

test: all
	GLIA_TEST_LUA=$(LUA) GLIA_TEST_SAN=$(SAN) GLIA_BIN=$(GLIA_BIN) prove -f --exec t/run $(TESTS)

test-gemm:
	$(MAKE) test TESTS="$(GEMM_TESTS)"

bench: all
	bench/run

# Installs what is missing and builds first (examples/run.sh), so it does
# not depend on `all`: on a fresh machine the headers are not there yet.
run:
	sh examples/run.sh $(RUN_ARGS)

deps:
	@missing=""; for p in liblua5.4-dev lua5.4 libluajit-5.1-dev luajit libopenblas-dev \
	    libedit-dev zlib1g-dev pkg-config tmux; do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "all build dependencies are installed"; fi

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include \
	  $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/share/glia \
	  $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_ABI)/glia
	install -m 755 bin/glia $(DESTDIR)$(PREFIX)/bin/glia
	install -m 644 lib/libglia.a $(DESTDIR)$(PREFIX)/lib/libglia.a
	install -m 755 lib/libglia.so $(DESTDIR)$(PREFIX)/lib/libglia.so
	install -m 755 $(LUAMOD) $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_ABI)/glia/core.so
	install -m 644 vm/glia.h $(DESTDIR)$(PREFIX)/include/glia.h
	cp -r stdlib/. $(DESTDIR)$(PREFIX)/share/glia/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|0.1.0|g' -e 's|@LUA_PC@|$(LUA_PC)|g' \
	  glia.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/glia.pc

clean:
	rm -rf build bin lib

FORCE:

-include $(shell find build -name '*.d' 2>/dev/null)
