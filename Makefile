# cohortd — run `make help` for the targets.
GO        ?= go
BIN       := bin
DATA_DIR  ?= ./data
ADDR      ?= 127.0.0.1:8080
PKGS      := ./...
# Fuzz budget per target for `make fuzz`: a duration or a count such as 10000x
# (the CI smoke runs 10000x; see .ci/fuzz.sh for why a count).
FUZZTIME  ?= 30s
COUNT     ?= 6
# The version -version prints and cohortd_build_info carries.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS   := -X main.version=$(VERSION)

.PHONY: help build run test test-race bench bench-compare bench-report bench-report-full bench-replication bench-resp bench-crossproc fuzz lint fmt vet crashtest cross tidy-check clean ui-screenshots

# Every target with a "## text" comment is listed; the text is printed as
# written (make variables in it are not expanded, so it names none).
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

build: ## build bin/cohortd (version stamped from git describe) and bin/loadgen
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/cohortd ./cmd/cohortd
	$(GO) build -o $(BIN)/loadgen ./cmd/loadgen

run: build ## start cohortd on 127.0.0.1:8080 with ./data and a demo workspace (text logs)
	$(BIN)/cohortd -addr $(ADDR) -data-dir $(DATA_DIR) -demo -log-format text

test: ## the default test suite (short mode, what CI runs)
	$(GO) test -short -count=1 -timeout 15m $(PKGS)
	# The Redis-protocol listener's goroutine-per-connection path (TLS, non-Linux), forced.
	COHORTD_RESP_NOLOOP=1 $(GO) test -short -count=1 ./server/resp/
	# The heap fallback of the identity tables' regions, forced on Linux too.
	$(GO) test -short -count=1 -tags cohortd_heapmem ./index/ ./engine/
	# Smoke of the memory-layer benchmarks (resolve, snapshot load) at a small size.
	COHORTD_BENCH_USERS=100000 $(GO) test -run '^$$' -bench 'ResolveMany|ResolveInline|SnapshotLoad' -benchtime 2x ./index/ ./engine/
	# Smoke of the replication benchmarks (a group on kfake) at a small size.
	COHORTD_BENCH_REPL_USERS=5000 COHORTD_BENCH_LAG_SECONDS=1 $(GO) test -run '^$$' -bench 'ReplicatedImport|ReplicationLag|CatchUp|ReadGroup' -benchtime 1x ./bench/

test-race: ## the test suite under the race detector
	$(GO) test -short -race -shuffle=on -count=1 -timeout 20m $(PKGS)

bench: ## micro and macro benchmarks, COUNT runs each (default 6)
	$(GO) test -run '^$$' -bench . -benchmem -count $(COUNT) -timeout 60m $(PKGS)

bench-compare: ## compare benchmarks of the work tree with REF (default main) via benchstat
	bash bench/compare.sh $(or $(REF),main)

bench-replication: ## replication on kfake: import log vs -fsync always, lag p50/p99 (in process and 3 processes under loadgen mixed), catch-up, reads 3 nodes vs 1 (COUNT runs)
	flock /tmp/cohortd-bench.lock $(GO) test -run '^$$' -bench 'ReplicatedImport|ReplicationLag|CatchUp|ReadGroup' -benchtime 2s -count $(COUNT) -timeout 60m ./bench/

bench-resp: ## RESP listener beside redis-server, separate processes pinned (USERS=1000000): Markdown to stdout
	flock /tmp/cohortd-bench.lock bash bench/resp.sh $(or $(USERS),1000000)

fuzz: ## run every fuzz target for FUZZTIME each
	bash .ci/fuzz.sh $(FUZZTIME)

lint: fmt vet ## gofmt, go vet, staticcheck
	$(GO) tool staticcheck $(PKGS)

fmt: ## fail if a Go file needs gofmt
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet: ## go vet
	$(GO) vet $(PKGS)

bench-report: ## short benchmark suite (1M users, ~10 min): regenerates BENCHMARKS.md and bench/plots
	bash bench/run.sh short

bench-crossproc: ## cross-process suite: each server alone on CPU 0, the client on CPU 1 (BENCH_USERS=1000000); regenerates BENCHMARKS.md
	flock /tmp/cohortd-bench.lock bash bench/crossproc.sh crossproc

bench-report-full: ## full suite (10M and 100M users; an hour or more, ~20 GiB)
	bash bench/run.sh full

crashtest: ## kill -9 crash test with the real binary, 200 kills (make test runs 20)
	COHORTD_CRASH_KILLS=$(or $(KILLS),200) $(GO) test -count=1 -run TestCrashKill9 -timeout 60m -v ./cmd/cohortd/

ui-screenshots: ## regenerate docs/ui/*.png: the browser test of the page with screenshots (needs chromium)
	mkdir -p docs/ui
	$(GO) test -count=1 -run TestUIBrowser -timeout 5m ./cmd/cohortd -ui.screenshots=$(CURDIR)/docs/ui

# The platforms besides Linux that must keep compiling (Linux is tested).
CROSS := windows/amd64 darwin/arm64 freebsd/amd64

cross: ## check that the non-Linux builds compile (Windows, macOS, FreeBSD)
	@set -e; for p in $(CROSS); do echo "GOOS=$${p%/*} GOARCH=$${p#*/} go build ./..."; \
		GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build ./...; done

tidy-check: ## fail if go mod tidy would change go.mod or go.sum
	$(GO) mod tidy -diff

clean: ## remove bin/
	rm -rf $(BIN)
