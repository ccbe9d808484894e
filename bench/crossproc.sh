#!/usr/bin/env bash
# Cross-process benchmarks (BenchmarkRemote): each server alone on one CPU,
# the client on another, one server at a time, same data, same run. The
# servers take turns round by round (cohortd, cohortd -fsync always, Redis;
# again), each round on freshly seeded servers, so that a busy host slows
# every system alike instead of whichever ran during the busy minutes.
#
#   bash bench/crossproc.sh [variant]      # results in bench/results/<variant>/ (default crossproc)
#
# cohortd runs pinned to SERVER_CPU with GOMAXPROCS=1 (-fsync off, then a
# pass of the import benchmarks with -fsync always); redis-server
# (single-threaded, no persistence) runs pinned to SERVER_CPU; the client is
# the bench test binary pinned to CLIENT_CPU with GOMAXPROCS=1. Every
# benchmark reports the server's CPU time per operation (from
# /proc/<pid>/stat) beside the throughput, and bench/report puts the table
# first in BENCHMARKS.md.
#
# Knobs (environment):
#   BENCH_USERS       universe size (default 1000000)
#   BENCH_TIME        -benchtime of each benchmark (default 2s)
#   BENCH_COUNT       rounds, each one -count 1 of every system (default 1; 6 for benchstat)
#   BENCH_FILTER      a regexp of benchmarks under BenchmarkRemote/ (default all)
#   BENCH_FSYNC_PASS  1 (default) adds the -fsync always import pass
#   SERVER_CPU        CPU of the server (default 0)
#   CLIENT_CPU        CPU of the client (default 1)
#   BENCH_NO_REPORT   1 skips regenerating BENCHMARKS.md
# Wrap the run in `flock /tmp/cohortd-bench.lock` on a shared machine.
set -euo pipefail

variant=${1:-crossproc}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
GO=${GO:-go}
users=${BENCH_USERS:-1000000}
benchtime=${BENCH_TIME:-2s}
count=${BENCH_COUNT:-1}
filter=${BENCH_FILTER:-.}
scpu=${SERVER_CPU:-0}
ccpu=${CLIENT_CPU:-1}
command -v taskset >/dev/null || { echo "taskset not found (util-linux)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install -y redis-server" >&2; exit 1; }

$GO build -o bin/cohortd ./cmd/cohortd
$GO test -c -o bin/bench.test ./bench

out=bench/results/$variant
rm -rf "$out"
mkdir -p "$out"
tmp=$(mktemp -d -t cohortd-crossproc.XXXXXX)
server_pid=
cleanup() {
	if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
	if [ -n "${REDIS_DIR:-}" ]; then bash bench/redis.sh stop || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- . ':!bench/results' ':!bench/plots' ':!BENCHMARKS.md' 2>/dev/null)" ]; then commit="$commit + uncommitted changes"; fi
{
	echo "variant: $variant"
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "commit: $commit"
	echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "cores: $(nproc)"
	echo "memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
	echo "go: $($GO version)"
	echo "gomaxprocs: cross-process: each server alone on CPU $scpu (cohortd GOMAXPROCS=1; redis-server single-threaded), one at a time, taking turns in $count round(s) on freshly seeded servers; the client (bench test binary, GOMAXPROCS=1) on CPU $ccpu"
	echo "durability: cohortd -fsync off (import also with -fsync always, as cohortd_fsync_always); redis-server without persistence"
	echo "redis: $(redis-server --version), no persistence (--save '' --appendonly no)"
} >"$out/meta.txt"

# client runs the bench binary against the server of pid $1 and appends
# the results to $out/$2; the rest is environment for the binary.
# command_line records a command in meta.txt, once (in the first round).
command_line() {
	if [ "$round" = 1 ]; then
		echo "command: $1" >>"$out/meta.txt"
	fi
}

client() {
	local pid=$1 file=$2
	shift 2
	local line
	line=$(printf '%q ' taskset -c "$ccpu" env GOMAXPROCS=1 COHORTD_BENCH_USERS="$users" "$@" bin/bench.test \
		-test.run '^$' -test.bench "BenchmarkRemote/$filter" -test.benchtime "$benchtime" -test.count 1 -test.timeout 0)
	command_line "$(echo "${line% }" | sed "s|COHORTD_BENCH_SERVER_PID=$pid|COHORTD_BENCH_SERVER_PID=<pid>|; s|$tmp|<tmp>|g")"
	echo "+ round $round/$count: ${line% }" >&2
	taskset -c "$ccpu" env GOMAXPROCS=1 COHORTD_BENCH_USERS="$users" COHORTD_BENCH_SERVER_PID="$pid" "$@" bin/bench.test \
		-test.run '^$' -test.bench "BenchmarkRemote/$filter" -test.benchtime "$benchtime" -test.count 1 -test.timeout 0 \
		2>&1 | tee -a "$out/$file"
}

# cohortd starts a fresh cohortd pinned to the server CPU with -fsync $1.
cohortd() {
	local fsync=$1 port=18191
	rm -rf "$tmp/data"
	command_line "taskset -c $scpu env GOMAXPROCS=1 bin/cohortd -addr 127.0.0.1:$port -data-dir <tmp> -admin-token <token> -fsync $fsync"
	taskset -c "$scpu" env GOMAXPROCS=1 bin/cohortd -addr "127.0.0.1:$port" -data-dir "$tmp/data" \
		-admin-token crossproc-admin -fsync "$fsync" 2>"$tmp/cohortd-$fsync.log" &
	server_pid=$!
	for _ in $(seq 200); do
		curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "cohortd did not get ready; log:" >&2
	tail -20 "$tmp/cohortd-$fsync.log" >&2
	return 1
}

stop_cohortd() {
	kill "$server_pid"
	wait "$server_pid" 2>/dev/null || true
	server_pid=
}

# wrkpair measures GET /livez and single contains with wrk (a C client
# lighter than the Go one, so that the server, not the client, is what
# saturates), pinned to the client CPU, 32 connections, as go-bench lines.
wrkpair() {
	local pid=$1 base=http://127.0.0.1:18191 key user cohort
	key=$(sed -n 's/^api_key=//p' "$tmp/keys") user=$(sed -n 's/^user=//p' "$tmp/keys") cohort=$(sed -n 's/^cohort=//p' "$tmp/keys")
	cat >"$tmp/contains.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"segment":{"cohort":"$cohort"},"users":[{"external_id":"$user"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA
	local name path script c0 c1 res rps total
	for name in livez contains; do
		path=/livez script=()
		if [ $name = contains ]; then path=/v1/segments/contains script=(-s "$tmp/contains.lua"); fi
		command_line "taskset -c $ccpu wrk -t1 -c32 -d10s ${script[*]/$tmp/<tmp>}${script:+ }$base$path"
		c0=$(awk '{print $14+$15}' "/proc/$pid/stat")
		res=$(taskset -c "$ccpu" wrk -t1 -c32 -d10s "${script[@]}" "$base$path")
		c1=$(awk '{print $14+$15}' "/proc/$pid/stat")
		echo "$res" >&2
		if echo "$res" | grep -q 'Non-2xx'; then
			echo "wrk $name: some replies were not 2xx; no figure kept" >&2
			continue
		fi
		rps=$(echo "$res" | sed -n 's/^Requests\/sec: *//p')
		total=$(echo "$res" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
		awk -v n="$name" -v u="$users" -v r="$rps" -v t="$total" -v c="$((c1 - c0))" 'BEGIN {
			cpu = c / 100
			printf "BenchmarkRemote/users_%d/cohortd/wrk/%s/conns_32\t1\t%.0f ns/op\t%.0f req/s\t%.0f req/server-cpu-s\n", u, n, 1e9 / r, r, (cpu > 0 ? t / cpu : 0)
		}' | tee -a "$out_file"
	done
}

out_file=$out/remote-users_$users.txt
for round in $(seq "$count"); do
	cohortd off
	client "$server_pid" "remote-users_$users.txt" COHORTD_BENCH_REMOTE=cohortd COHORTD_BENCH_ADDR=127.0.0.1:18191 COHORTD_BENCH_ADMIN_TOKEN=crossproc-admin \
		COHORTD_BENCH_KEY_FILE="$tmp/keys"
	if command -v wrk >/dev/null && [ -s "$tmp/keys" ]; then
		wrkpair "$server_pid"
	elif [ "$round" = 1 ]; then
		echo "wrk not found (apt-get install -y wrk): no livez/contains pair with a C client" >&2
	fi
	stop_cohortd

	if [ "${BENCH_FSYNC_PASS:-1}" = 1 ]; then
		cohortd always
		filter_save=$filter
		filter="users_[0-9]*/cohortd_fsync_always/import/"
		client "$server_pid" "remote-users_$users.txt" COHORTD_BENCH_REMOTE=cohortd COHORTD_BENCH_LABEL=cohortd_fsync_always \
			COHORTD_BENCH_ADDR=127.0.0.1:18191 COHORTD_BENCH_ADMIN_TOKEN=crossproc-admin
		filter=$filter_save
		stop_cohortd
	fi

	eval "$(REDIS_CPU=$scpu REDIS_PORT=16391 bash bench/redis.sh start)"
	command_line "taskset -c $scpu redis-server --save '' --appendonly no (bench/redis.sh)"
	client "$(cat "$REDIS_DIR/redis.pid")" "remote-users_$users.txt" COHORTD_BENCH_REMOTE=redis REDIS_ADDR="$REDIS_ADDR"
	bash bench/redis.sh stop
	unset REDIS_DIR
done

if [ "${BENCH_NO_REPORT:-0}" != 1 ]; then
	"$GO" run ./bench/report -results bench/results -out BENCHMARKS.md -plots bench/plots
	echo "wrote BENCHMARKS.md and bench/plots/" >&2
fi
