# broker: PGXS build.  `make && make install`, then see README.md.
EXTENSION   = broker
EXTVERSION  = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)
MODULE_big  = broker
# One file per job, in layers that only call down (see src/broker.c).
OBJS        = src/util.o src/catalog.o src/sql.o src/xact.o src/acl.o \
              src/qstate.o src/stats.o src/queuedef.o \
              src/store.o src/remove.o src/groups.o src/dedup.o src/records.o \
              src/segment.o src/rotate.o \
              src/inflight.o src/lease.o src/ackcommit.o src/wait.o src/produce.o \
              src/queue.o src/enqueue.o src/dequeue.o src/ack.o src/topics.o src/jobs.o \
              src/metrics.o src/expiry.o \
              src/worker.o src/launcher.o src/reaper.o src/health.o src/utility.o \
              src/broker.o
DATA        = $(wildcard sql/$(EXTENSION)--*.sql)
PG_CFLAGS   = -Wall -Wextra
# The server headers are system headers to us: -Wextra stays about our code.
PG_CPPFLAGS = -I$(srcdir)/src -isystem $(shell $(PG_CONFIG) --includedir-server)

# pg_regress: one file per feature, on a private instance with broker
# preloaded; setup (the extension and the tests' helpers) runs first, the
# files that drop and create the extension last.
REGRESS      = setup queues enqueue dequeue ack dead_letter lease_xact metrics \
               consumers groups dedup priorities topics jobs privileges extension security segments
REGRESS_OPTS = --temp-config=$(srcdir)/test/broker.conf --temp-instance=$(CURDIR)/tmp_check_regress
ISOLATION      = $(patsubst test/specs/%.spec,%,$(sort $(wildcard test/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test --temp-config=$(srcdir)/test/broker.conf --temp-instance=$(CURDIR)/tmp_check_iso
TAP_TESTS    = 1
PROVE_TESTS  = $(sort $(wildcard test/t/*.pl))

EXTRA_CLEAN = tmp_check_regress tmp_check_iso results output_iso regression.* \
              test/tools/broker_sim test/tools/wake_latency

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# broker_pgmq, the PGMQ-compatible interface (pgmq/, docs/pgmq.md): built,
# installed and cleaned with broker; its pg_regress tests run in the
# pg_regress pass (installcheck with REGRESS set), on their own temporary
# instance; test/t/023_pgmq.pl is one of the TAP tests.
all: pgmq-all
install: pgmq-install
installcheck: pgmq-installcheck
clean: pgmq-clean
.PHONY: pgmq-all pgmq-install pgmq-clean pgmq-installcheck
pgmq-all pgmq-install pgmq-clean:
	$(MAKE) -C $(srcdir)/pgmq PG_CONFIG=$(PG_CONFIG) $(patsubst pgmq-%,%,$@)
pgmq-installcheck:
ifneq ($(strip $(REGRESS)),)
	$(MAKE) -C $(srcdir)/pgmq PG_CONFIG=$(PG_CONFIG) installcheck
endif


# Every object depends on the headers (PGXS tracks no header deps).
$(OBJS): $(wildcard src/*.h)

# PGXS's installcheck runs pg_regress and the isolation tests against the
# temp instances above; prove_installcheck runs the TAP tests.
.PHONY: check-version sim bench bench-quick
check-version:
	@test "$$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' META.json | head -1)" = "$(EXTVERSION)" \
	  || { echo "META.json version differs from broker.control ($(EXTVERSION))"; exit 1; }

sim:
	$(MAKE) -C test/tools

# Benchmarks against the plain-SQL baselines, on a throw-away cluster;
# install first (make install).  See docs/benchmarks.md.
bench:
	python3 test/bench/run --write

bench-quick:
	python3 test/bench/run --quick
