#!/usr/bin/env bash
# Run the benchmark suite and regenerate BENCHMARKS.md (make bench-report).
#
#   bash bench/run.sh short   # 1M users: minutes
#   bash bench/run.sh full    # 10M and 100M users: an hour or more, ~20 GiB
#
# Raw go test outputs go to bench/results/<variant>/ (and
# bench/results/<variant>-fsync-always/ for the durable pass), with meta.txt
# recording the machine, the Go version and every command exactly as run;
# then bench/report rebuilds BENCHMARKS.md and bench/plots/ from everything
# in bench/results/, so a report can be regenerated without rerunning.
#
# Knobs (environment):
#   BENCH_USERS      universe sizes, space separated (short: 1000000;
#                    full: "10000000 100000000"); one go test process each
#   BENCH_CPU        GOMAXPROCS for go test -cpu (default 1: per-core figures)
#   BENCH_COUNT      -count of the macro benchmarks (default 1; 10 for benchstat)
#   MICRO_COUNT      -count of the engine and index micro benchmarks (default 6)
#   BENCH_TIME       -benchtime (default 1s)
#   BENCH_FSYNC_PASS 1 (default) adds a pass of the cohortd/engine import
#                    benchmarks with a WAL and -fsync=always, the headline
#                    durability mode; 0 skips it
#   BENCH_TASKSET    CPU list to pin go test to with taskset (default none)
#   REDIS_CPU        CPU list to pin redis-server to (default none)
#   REDIS_ADDR       use this Redis instead of starting one (it is FLUSHed)
#   BENCH_NO_REPORT  1 skips regenerating BENCHMARKS.md
set -euo pipefail

variant=${1:-}
case "$variant" in
short) sizes=${BENCH_USERS:-1000000}; large=0 ;;
full) sizes=${BENCH_USERS:-10000000 100000000}; large=1 ;;
*) echo "usage: $0 short|full" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
GO=${GO:-go}
cpu=${BENCH_CPU:-1}
count=${BENCH_COUNT:-1}
benchtime=${BENCH_TIME:-1s}
pin=()
if [ -n "${BENCH_TASKSET:-}" ]; then pin=(taskset -c "$BENCH_TASKSET"); fi

if [ -z "${REDIS_ADDR:-}" ]; then
	eval "$(bash bench/redis.sh start)"
	trap 'bash bench/redis.sh stop' EXIT
fi
export REDIS_ADDR

# meta writes meta.txt for a results directory; the report reads nothing
# else about the run.
meta() { # dir durability
	local dir=$1 durability=$2 commit
	commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
	if [ -n "$(git status --porcelain 2>/dev/null)" ]; then commit="$commit + uncommitted changes"; fi
	{
		echo "variant: $(basename "$dir")"
		echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
		echo "commit: $commit"
		echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
		echo "cores: $(nproc)"
		echo "memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
		echo "go: $($GO version)"
		echo "gomaxprocs: $cpu (go test -cpu $cpu; benchmark client and in-process server share it${BENCH_TASKSET:+; go test pinned to CPU $BENCH_TASKSET}; redis-server is a separate single-threaded process${REDIS_CPU:+ pinned to CPU $REDIS_CPU})"
		echo "durability: $durability"
		echo "redis: $(redis-server --version 2>/dev/null || echo 'not installed') at $REDIS_ADDR, no persistence (--save '' --appendonly no)"
	} >"$dir/meta.txt"
}

# bench runs one go test command, records it and keeps its output.
bench() { # dir file command...
	local dir=$1 file=$2
	shift 2
	local line
	line=$(printf '%q ' "$@")
	# The checkout's own path means nothing in another one: record <repo>,
	# as bench/crossproc.sh records <tmp> (bench/report rewrites old ones).
	echo "command: ${line% }" | sed "s|$root/|<repo>/|g" >>"$dir/meta.txt"
	echo "+ ${line% }" >&2
	env "$@" 2>&1 | tee "$dir/$file"
}

out=bench/results/$variant
rm -rf "$out"
mkdir -p "$out"
meta "$out" "in-process engine in memory without WAL (as -fsync=off, no fsync); redis-server without persistence"
for n in $sizes; do
	bench "$out" "bench-users_$n.txt" COHORTD_BENCH_USERS="$n" "${pin[@]}" "$GO" test -run '^$' -bench . -skip ColdStart -benchmem \
		-cpu "$cpu" -count "$count" -benchtime "$benchtime" -timeout 0 ./bench/
	# Cold start seeds a universe of its own: a process of its own.
	bench "$out" "coldstart-users_$n.txt" COHORTD_BENCH_USERS="$n" "${pin[@]}" "$GO" test -run '^$' -bench ColdStart -benchmem \
		-cpu "$cpu" -count "$count" -benchtime "$benchtime" -timeout 0 ./bench/
done
micro_users=$(echo "$sizes" | tr ' ' ',')
# The engine and index micro benchmarks run at MICRO_COUNT (default 6) so
# that benchstat can compare them across runs; GOMAXPROCS as above.
mcount=${MICRO_COUNT:-6}
bench "$out" micro-engine.txt COHORTD_BENCH_LARGE="$large" "${pin[@]}" "$GO" test -run '^$' -bench . \
	-cpu "$cpu" -count "$mcount" -timeout 0 ./engine/
bench "$out" micro-index.txt COHORTD_BENCH_USERS="$micro_users" "${pin[@]}" "$GO" test -run '^$' -bench 'BenchmarkResolveMany|BenchmarkUsersMemory' \
	-cpu "$cpu" -count "$mcount" -timeout 0 ./index/

if [ "${BENCH_FSYNC_PASS:-1}" = 1 ]; then
	dout=bench/results/$variant-fsync-always
	rm -rf "$dout"
	mkdir -p "$dout"
	data=$root/bench/.data
	mkdir -p "$data"
	meta "$dout" "engine with a WAL on $(df --output=source "$data" | tail -1), -fsync=always (group commit)"
	for n in $sizes; do
		bench "$dout" "bench-users_$n.txt" COHORTD_BENCH_USERS="$n" COHORTD_BENCH_FSYNC=always COHORTD_BENCH_DIR="$data" \
			"${pin[@]}" "$GO" test -run '^$' -bench 'BenchmarkImport/./(cohortd|engine)/' -benchmem \
			-cpu "$cpu" -count "$count" -benchtime "$benchtime" -timeout 0 ./bench/
	done
	rm -rf "$data"
fi

if [ "${BENCH_NO_REPORT:-0}" != 1 ]; then
	"$GO" run ./bench/report -results bench/results -out BENCHMARKS.md -plots bench/plots
	echo "wrote BENCHMARKS.md and bench/plots/" >&2
fi
