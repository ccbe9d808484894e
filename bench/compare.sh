#!/usr/bin/env bash
# Compare benchmarks of the work tree with a git ref (make bench-compare REF=main).
#
#   bash bench/compare.sh [REF]
#
# Checks REF out into a temporary git worktree, runs the same benchmarks
# there and in the work tree (-count 10, alternating is not needed: the two
# runs are sequential on one machine, so keep it otherwise idle), and prints
# benchstat old-vs-new. Outputs are kept in OUT.
#
# Knobs (environment):
#   BENCH      -bench regexp (default: the engine and index micro benchmarks,
#              which are what a change usually moves; '.' runs everything)
#   PKGS       packages (default ./...)
#   COUNT      -count (default 10, what benchstat needs for its intervals)
#   BENCH_TIME -benchtime (default 1s)
#   BENCH_CPU  GOMAXPROCS for -cpu (default 1)
#   OUT        where the raw outputs go (default bench/results/compare-<ref>)
#   REDIS_ADDR passed through: the Redis peer benchmarks skip without it
set -euo pipefail

ref=${1:-main}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
GO=${GO:-go}
bench=${BENCH:-BenchmarkApply|BenchmarkReplace|BenchmarkSegmentCount|BenchmarkResolveMany}
pkgs=${PKGS:-./...}
count=${COUNT:-10}
benchtime=${BENCH_TIME:-1s}
cpu=${BENCH_CPU:-1}
out=${OUT:-bench/results/compare-${ref//\//-}}
mkdir -p "$out"
out=$(cd "$out" && pwd)

wt=$(mktemp -d -t cohortd-compare.XXXXXX)
cleanup() {
	git worktree remove --force "$wt" >/dev/null 2>&1 || rm -rf "$wt"
	git worktree prune >/dev/null 2>&1 || true
}
trap cleanup EXIT
git worktree add --detach "$wt" "$ref" >/dev/null

run() { # dir output
	echo "+ (cd $1 && $GO test -run '^\$' -bench '$bench' -benchmem -cpu $cpu -count $count -benchtime $benchtime $pkgs)" >&2
	(cd "$1" && $GO test -run '^$' -bench "$bench" -benchmem -cpu "$cpu" -count "$count" -benchtime "$benchtime" -timeout 0 $pkgs) >"$2" 2>&1 || {
		echo "benchmarks failed in $1; see $2" >&2
		tail -20 "$2" >&2
		return 1
	}
}

run "$wt" "$out/old.txt"
run "$root" "$out/new.txt"
# benchstat is pinned in go.mod as a tool of the work tree.
"$GO" tool benchstat "old=$out/old.txt" "new=$out/new.txt" | tee "$out/benchstat.txt"
