#!/usr/bin/env bash
# Membership queries over the Redis protocol: cohortd's -resp-addr beside a
# redis-server holding the same sets, as separate processes (make bench-resp).
#
#   bash bench/resp.sh [users]   # default 1,000,000
#
# Each server runs alone on CPU 0 (taskset -c 0; cohortd with GOMAXPROCS=1),
# one at a time; the clients run on CPU 1: redis-benchmark and go-redis
# (loadgen query -protocol resp). Data: loadgen's universe of users and two
# cohorts at 10% density (bench/uniform-0000, bench/uniform-0001; members are
# users' external ids, so users without one are not members), loaded into
# cohortd over HTTP and into Redis as the same sets under the same keys
# (Redis with requirepass = the workspace API key, so that the very same
# client commands run against both). Each figure is requests (or ids) a
# second and per server CPU-second (utime+stime from /proc/<pid>/stat before
# and after the run). Writes a Markdown table to stdout.
#
# Knobs: RESP_BENCH_SECONDS (go-redis run length, default 8),
# RESP_BENCH_N (redis-benchmark requests for SISMEMBER, default 400000).
set -euo pipefail
users=${1:-1000000}
secs=${RESP_BENCH_SECONDS:-8}
nreq=${RESP_BENCH_N:-400000}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
for tool in redis-server redis-benchmark redis-cli taskset python3; do
	command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install -y redis-server redis-tools util-linux python3)" >&2; exit 1; }
done
go build -o bin/cohortd ./cmd/cohortd
go build -o bin/loadgen ./cmd/loadgen
tmp=$(mktemp -d)
http=127.0.0.1:18481 respport=18482 redisport=18483
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
tck=$(getconf CLK_TCK)
cpu() { awk -v t="$tck" '{printf "%.3f", ($14+$15)/t}' "/proc/$1/stat"; }
client() { taskset -c 1 "$@"; }

GOMAXPROCS=1 taskset -c 0 bin/cohortd -addr "$http" -resp-addr "127.0.0.1:$respport" -data-dir "$tmp/data" \
	-admin-token bench -fsync off -log-level warn 2>"$tmp/cohortd.log" &
cpid=$!
pids+=("$cpid")
for _ in $(seq 100); do curl -sf "http://$http/readyz" >/dev/null && break; sleep 0.1; done
client bin/loadgen seed -addr "http://$http" -admin-token bench -workspace respbench -users "$users" -quiet 2>"$tmp/seed.log" >/dev/null
# loadgen does not print the key it was given: issue a fresh one.
key=$(curl -sf -X POST -H "Authorization: Bearer bench" "http://$http/v1/workspaces/respbench/api-key" |
	sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p')
[ -n "$key" ] || { echo "resp.sh: no API key for workspace respbench" >&2; exit 1; }
# Two cohorts at 10% density: a seeded random tenth of the users, by external id.
for i in 0 1; do
	id=uniform-000$i
	awk -v n="$users" -v s="$((i + 7))" 'BEGIN { srand(s); for (u = 1; u <= n; u++) if (rand() < 0.1) printf "{\"external_id\":\"user-%014d\"}\n", u }' >"$tmp/$id.ndjson"
	curl -sf -X PUT -H "Authorization: Bearer $key" -H 'Content-Type: application/x-ndjson' \
		--data-binary "@$tmp/$id.ndjson" "http://$http/v1/cohorts/bench/$id/members" >/dev/null
	# What cohortd holds, as Redis will: the members' external ids.
	curl -sf -H "Authorization: Bearer $key" "http://$http/v1/cohorts/bench/$id/members" |
		sed -n 's/.*"external_id":"\([^"]*\)".*/\1/p' >"$tmp/$id.members"
done
a=bench/uniform-0000 b=bench/uniform-0001
expr="{\"and\":[{\"cohort\":\"$a\"},{\"cohort\":\"$b\"}]}"
smis=(SMISMEMBER "$a")
for _ in $(seq 1000); do smis+=("user-00__rand_int__"); done

echo "# RESP membership queries: $users users, cohorts at 10% density ($(wc -l <"$tmp/uniform-0000.members") and $(wc -l <"$tmp/uniform-0001.members") members)"
echo
echo "cohortd $(git rev-parse --short HEAD) (GOMAXPROCS=1, taskset -c 0); $(redis-server --version | cut -d' ' -f1-3) (taskset -c 0); clients on CPU 1; $(date -u +%Y-%m-%dT%H:%M:%SZ); $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo
echo "| server | client | workload | per second | per server CPU-second | unit |"
echo "|---|---|---|---:|---:|---|"

# measure <server-name> <pid> <client> <workload> <unit> <ids per request> command...
measure() {
	local name=$1 pid=$2 cl=$3 wl=$4 unit=$5 per=$6
	shift 6
	local c0 c1 t0 t1 out rate
	c0=$(cpu "$pid")
	t0=$(date +%s.%N)
	out=$("$@" 2>&1) || { echo "$name $wl failed: $out" >&2; return 1; }
	t1=$(date +%s.%N)
	c1=$(cpu "$pid")
	case $cl in
	# The CSV's test name may hold quotes (a JSON expression): the rate is
	# the seventh field from the end of the result line.
	redis-benchmark) rate=$(echo "$out" | tr '\r' '\n' | grep '^"' | grep -v '^"test"' | tail -1 | awk -F, '{gsub(/"/, "", $(NF-6)); print $(NF-6)}') ;;
	go-redis) rate=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(o["ops_per_sec"] for o in r["ops"]))' "$tmp/lg.json") ;;
	esac
	python3 - "$name" "$cl" "$wl" "$unit" "$per" "$rate" "$c0" "$c1" "$t0" "$t1" <<'PY'
import sys
name, cl, wl, unit, per, rate, c0, c1, t0, t1 = sys.argv[1:]
rate = float(rate) * float(per)
total = rate * (float(t1) - float(t0))
cpu = float(c1) - float(c0)
print(f"| {name} | {cl} | {wl} | {rate:,.0f} | {total / cpu if cpu > 0 else float('nan'):,.0f} | {unit} |")
PY
}

# run_all <server-name> <pid> <port> <count command...>
run_all() {
	local name=$1 pid=$2 port=$3
	shift 3
	local rb=(client redis-benchmark -h 127.0.0.1 -p "$port" -a "$key" --csv -r "$users")
	measure "$name" "$pid" redis-benchmark "SISMEMBER, 50 conns" "requests" 1 "${rb[@]}" -c 50 -n "$nreq" SISMEMBER "$a" "user-00__rand_int__"
	measure "$name" "$pid" redis-benchmark "SISMEMBER, pipeline 16, 50 conns" "requests" 1 "${rb[@]}" -c 50 -P 16 -n "$((nreq * 8))" SISMEMBER "$a" "user-00__rand_int__"
	measure "$name" "$pid" redis-benchmark "SMISMEMBER of 1,000, 8 conns" "ids" 1000 "${rb[@]}" -c 8 -n 4000 "${smis[@]}"
	measure "$name" "$pid" redis-benchmark "count of A and B ($1), 4 conns" "requests" 1 "${rb[@]}" -c 4 -n 2000 "$@"
	local lg=(client bin/loadgen query -resp-addr "127.0.0.1:$port" -protocol resp -api-key "$key" -workspace respbench
		-partner bench -flavour uniform -cohorts 2 -users "$users" -duration "${secs}s" -quiet -json-out "$tmp/lg.json")
	measure "$name" "$pid" go-redis "SISMEMBER, 50 conns" "requests" 1 "${lg[@]}" -mix contains=1 -query-concurrency 50
	measure "$name" "$pid" go-redis "SISMEMBER, pipeline 16, 50 conns" "requests" 1 "${lg[@]}" -mix contains=1 -pipeline 16 -query-concurrency 50
	measure "$name" "$pid" go-redis "SMISMEMBER of 1,000, 8 conns" "ids" 1000 "${lg[@]}" -mix batch=1 -query-concurrency 8
	measure "$name" "$pid" go-redis "count of A and B, 4 conns" "requests" 1 "${lg[@]}" -mix count=1 -query-concurrency 4
	# Open loop at 70% of the closed-loop maximum: the latency a segment
	# evaluator sees when the server is busy but not saturated.
	local max
	max=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(o["ops_per_sec"] for o in r["ops"]))' "$tmp/lg.sis.json")
	"${lg[@]}" -mix contains=1 -query-concurrency 50 -rate "$(python3 -c "print(int(0.7*$max))")" >/dev/null 2>&1
	python3 - "$name" "$tmp/lg.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
o = r["ops"][0]
print(f"| {sys.argv[1]} | go-redis | SISMEMBER open loop at 70% of max ({o['ops_per_sec']:,.0f}/s) | p50 {o['p50_us']} µs | p99 {o['p99_us']} µs | p99.9 {o['p999_us']} µs |", file=sys.stderr)
PY
}

# The unpipelined go-redis maximum feeds the open-loop rate: run it once
# more into its own file first (cheap: a few seconds).
sis_max() {
	client bin/loadgen query -resp-addr "127.0.0.1:$1" -protocol resp -api-key "$key" -workspace respbench -partner bench \
		-flavour uniform -cohorts 2 -users "$users" -duration 3s -quiet -mix contains=1 -query-concurrency 50 \
		-json-out "$tmp/lg.sis.json" >/dev/null
}

sis_max "$respport"
run_all cohortd "$cpid" "$respport" COHORT.COUNT "$expr" 2>>"$tmp/latency.md"
kill "$cpid"
wait "$cpid" 2>/dev/null || true

taskset -c 0 redis-server --bind 127.0.0.1 --port "$redisport" --requirepass "$key" --save '' --appendonly no \
	--dir "$tmp" --logfile "$tmp/redis.log" &
rpid=$!
pids+=("$rpid")
for _ in $(seq 50); do redis-cli -p "$redisport" -a "$key" --no-auth-warning ping >/dev/null 2>&1 && break; sleep 0.1; done
for id in uniform-0000 uniform-0001; do
	awk -v k="bench/$id" '{ if (n == 0) printf "SADD %s", k; printf " %s", $1; if (++n == 1000) { printf "\n"; n = 0 } } END { if (n) printf "\n" }' \
		"$tmp/$id.members" | redis-cli -p "$redisport" -a "$key" --no-auth-warning --pipe >/dev/null
done
for id in uniform-0000 uniform-0001; do
	got=$(redis-cli -p "$redisport" -a "$key" --no-auth-warning SCARD "bench/$id")
	want=$(wc -l <"$tmp/$id.members")
	[ "$got" = "$want" ] || { echo "redis has $got members of $id, cohortd $want" >&2; exit 1; }
done
sis_max "$redisport"
run_all redis-server "$rpid" "$redisport" SINTERCARD 2 "$a" "$b" 2>>"$tmp/latency.md"
echo
echo "| server | client | workload | p50 | p99 | p99.9 |"
echo "|---|---|---|---|---|---|"
sed 's/^| \([^|]*\) | go-redis | \([^|]*\) | p50 \([^|]*\) | p99 \([^|]*\) | p99.9 \([^|]*\) |$/| \1 | go-redis | \2 | \3 | \4 | \5 |/' "$tmp/latency.md"
