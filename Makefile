# flashgate — see README.md. Every target works on a fresh Debian/Ubuntu
# machine with Go and the PostgreSQL server package.

GO        ?= go
BIN       := bin/flashgate
PKGS      := ./...
STATICCHECK_VERSION := v0.8.2
# Fuzz each target this long in `make fuzz` (CI uses a short time).
FUZZTIME  ?= 30s

.PHONY: all build run test torture check fmt vet staticcheck bench bench-http bench-replay bench-attack bench-fleet profile fuzz clean deps

all: build

build:
	$(GO) build -trimpath -o $(BIN) .

# The whole stack on this machine with a demo sale; Ctrl-C stops it.
run: build
	./$(BIN) dev -demo $(ARGS)

# Every test, unit and integration, with the race detector. Integration tests
# start their own PostgreSQL cluster and embedded Kafka broker on loopback.
# One package at a time (-p 1): several start whole stacks (three edges and
# two ingest processes; 10,000 attacking connections), and side by side on a
# 2-core machine they starved each other's accept queues into dial timeouts.
test: deps
	$(GO) test -race -count=1 -p 1 -timeout 20m $(PKGS)

# The fault schedules of `make test` at full length: outages of 10 s, every
# fault twice, a longer sale (faults_test.go, crash_test.go). A failing run
# prints FLASHGATE_TORTURE_SEED, which replays its schedule.
torture: deps
	FLASHGATE_TORTURE=long $(GO) test -race -count=1 -timeout 30m -run 'TestFaultSchedule|TestKillNineMidSale' -v .

# Checks that the machine has what the tests need; says how to get it if not.
# kcat (the outside check of order.created) and redis-server (the textbook
# peer's test) are installed on Debian when missing; without one, its test
# skips.
deps:
	@bash tools/require-postgres.sh
	@bash tools/install-test-deps.sh

check: fmt vet staticcheck test

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

staticcheck:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) $(PKGS)

# Benchmarks against their peers, printed as ratios; see bench/README.md.
# Each script appends its headline figures to $(BENCH_TABLE); the table is
# printed at the end.
BENCH_TABLE := var/bench/table.txt
bench: build
	mkdir -p var/bench && : > $(BENCH_TABLE)
	$(GO) test -run '^$$' -bench . -benchmem -count 5 $(PKGS) > bench/out.txt
	$(GO) run ./tools/benchtable bench/out.txt
	BENCH_TABLE=$(CURDIR)/$(BENCH_TABLE) bash bench/http.sh
	BENCH_TABLE=$(CURDIR)/$(BENCH_TABLE) bash bench/e2e.sh
	BENCH_TABLE=$(CURDIR)/$(BENCH_TABLE) EDGE_ARGS='-kafka.syncWrites=false' bash bench/e2e.sh
	BENCH_TABLE=$(CURDIR)/$(BENCH_TABLE) bash bench/ingest.sh
	BENCH_TABLE=$(CURDIR)/$(BENCH_TABLE) bash bench/replay.sh
	BENCH_TABLE=$(CURDIR)/$(BENCH_TABLE) bash bench/attack.sh 8 100 3
	BENCH_TABLE=$(CURDIR)/$(BENCH_TABLE) ROUNDS=3 bash bench/fleet.sh
	@bash bench/table.sh $(BENCH_TABLE)

# The flash-sale replay against flashgate dev and the textbook stack alone.
bench-replay: build
	bash bench/replay.sh $(TRACE)

# Latency of well-behaved orders while an attacker floods the edge and nginx.
bench-attack: build
	bash bench/attack.sh 8 100 3

# Three edges with stock leases and two ingest workers (the README's example).
bench-fleet: build
	ROUNDS=3 bash bench/fleet.sh

# The edge's HTTP core against nginx only (wrk; installs nginx-light and wrk if missing).
bench-http: build
	bash bench/http.sh

# A replay of the default 1M-order flash sale against `flashgate dev` with CPU,
# heap, allocation, mutex, block and goroutine profiles captured during it;
# prints the go tool pprof commands to open them. See bench/profile.sh.
profile: build
	bash bench/profile.sh $(TRACE)

# Runs every fuzz target for FUZZTIME each.
fuzz:
	@for pkg in $$($(GO) list $(PKGS)); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf bin var bench/out.txt
