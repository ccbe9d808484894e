# cohortd — run `make help` for the targets.
GO        ?= go
BIN       := bin
DATA_DIR  ?= ./data
ADDR      ?= 127.0.0.1:8080
PKGS      := ./...
# Fuzz time per target for `make fuzz` (the CI smoke uses FUZZTIME=5s).
FUZZTIME  ?= 30s
COUNT     ?= 6

.PHONY: help build run test test-race bench bench-compare bench-report bench-report-full bench-crossproc fuzz lint fmt vet crashtest clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## build bin/cohortd and bin/loadgen
	$(GO) build -o $(BIN)/cohortd ./cmd/cohortd
	$(GO) build -o $(BIN)/loadgen ./cmd/loadgen

run: build ## start cohortd on 127.0.0.1:8080 with ./data and a demo workspace
	$(BIN)/cohortd -addr $(ADDR) -data-dir $(DATA_DIR) -demo

test: ## the default test suite (short mode, what CI runs)
	$(GO) test -short -count=1 -timeout 15m $(PKGS)

test-race: ## the test suite under the race detector
	$(GO) test -short -race -shuffle=on -count=1 -timeout 20m $(PKGS)

bench: ## micro and macro benchmarks (COUNT=$(COUNT))
	$(GO) test -run '^$$' -bench . -benchmem -count $(COUNT) -timeout 60m $(PKGS)

bench-compare: ## compare benchmarks of the work tree with REF (default main) via benchstat
	bash bench/compare.sh $(or $(REF),main)

fuzz: ## run every fuzz target for FUZZTIME each
	bash .ci/fuzz.sh $(FUZZTIME)

lint: fmt vet ## gofmt, go vet, staticcheck
	$(GO) tool staticcheck $(PKGS)

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

bench-report: ## short benchmark suite (1M users, ~10 min): regenerates BENCHMARKS.md and bench/plots
	bash bench/run.sh short

bench-crossproc: ## cross-process suite: each server alone on CPU 0, the client on CPU 1 (BENCH_USERS=1000000); regenerates BENCHMARKS.md
	flock /tmp/cohortd-bench.lock bash bench/crossproc.sh crossproc

bench-report-full: ## full suite (10M and 100M users; an hour or more, ~20 GiB)
	bash bench/run.sh full

crashtest: ## kill -9 crash test with the real binary, 200 kills (make test runs 20)
	COHORTD_CRASH_KILLS=$(or $(KILLS),200) $(GO) test -count=1 -run TestCrashKill9 -timeout 60m -v ./cmd/cohortd/

clean:
	rm -rf $(BIN)
