#!/usr/bin/env bash
# Membership queries over the Redis protocol: cohortd's -resp-addr beside a
# redis-server holding the same sets, as separate processes (make bench-resp).
#
#   bash bench/resp.sh [users]   # default 1,000,000
#
# Both servers run on CPU 0 (taskset -c 0; cohortd with GOMAXPROCS=1) and
# are driven one at a time, so each has the core to itself while measured;
# the clients run on CPU 1: redis-benchmark and go-redis (loadgen query
# -protocol resp). Data: loadgen's universe of users and two cohorts at 10%
# density (bench/uniform-0000, bench/uniform-0001; members are users'
# external ids, so users without one are not members), loaded into cohortd
# over HTTP and into Redis as the same sets under the same keys (Redis with
# requirepass = the workspace API key, so that the very same client commands
# run against both). Each workload runs RESP_BENCH_ROUNDS times against
# cohortd, then Redis, alternating, so that a noisy neighbour on the host
# slows both alike; the table gives each server's median per second and per
# server CPU-second (utime+stime from /proc/<pid>/stat before and after the
# run), and the median and range of the per-round ratios. Writes Markdown to
# stdout.
#
# Knobs: RESP_BENCH_ROUNDS (default 3), RESP_BENCH_SECONDS (go-redis run
# length, default 4), RESP_BENCH_N (redis-benchmark requests for SISMEMBER,
# default 400000), RESP_BENCH_WORKLOADS (indexes of the workloads below,
# default all: "0 1 2 3 4 5 6 7 8 9 10"), RESP_BENCH_LATENCY_ROUNDS (open-loop
# latency runs per server and client, alternating, default 3: one 4-second
# run's p99 moves with whatever else the host did in those seconds, so the
# summary gives the median p99 over the rounds; 0 skips them).
#
# A/B of two builds: RESP_BENCH_BASELINE=<cohortd binary> runs that binary
# too, on the same data directory (cohortd is restarted for each run), as
# the first of the three in every round; the table then gives the tree's
# build against it per server CPU-second as well. For example:
#
#   git stash; go build -o /tmp/cohortd.base ./cmd/cohortd; git stash pop
#   RESP_BENCH_BASELINE=/tmp/cohortd.base RESP_BENCH_WORKLOADS="0 1" RESP_BENCH_ROUNDS=6 bash bench/resp.sh
set -euo pipefail
users=${1:-1000000}
secs=${RESP_BENCH_SECONDS:-4}
rounds=${RESP_BENCH_ROUNDS:-3}
nreq=${RESP_BENCH_N:-400000}
workloads=${RESP_BENCH_WORKLOADS:-0 1 2 3 4 5 6 7 8 9 10}
latrounds=${RESP_BENCH_LATENCY_ROUNDS:-3}
baseline=${RESP_BENCH_BASELINE:-}
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
# Both servers stay up to the end: wait for them to exit (cohortd writes a
# last snapshot) before removing their directory.
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT
tck=$(getconf CLK_TCK)
cpu() { awk -v t="$tck" '{printf "%.3f", ($14+$15)/t}' "/proc/$1/stat"; }
client() { taskset -c 1 "$@"; }

# start_cohortd <binary>: serves $tmp/data, pid in cpid, once ready.
start_cohortd() {
	GOMAXPROCS=1 taskset -c 0 "$1" -addr "$http" -resp-addr "127.0.0.1:$respport" -data-dir "$tmp/data" \
		-admin-token bench -fsync off -log-level warn 2>>"$tmp/cohortd.log" &
	cpid=$!
	pids+=("$cpid")
	for _ in $(seq 300); do curl -sf "http://$http/readyz" >/dev/null && break; sleep 0.1; done
}
# switch_cohortd <binary>: stops the running cohortd (it writes a snapshot)
# and starts binary on the same data.
switch_cohortd() {
	kill "$cpid"
	wait "$cpid" 2>/dev/null || true
	start_cohortd "$1"
}
start_cohortd bin/cohortd
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


# Redis beside cohortd on CPU 0, with the same sets; it idles while cohortd
# is measured and the other way round.
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

# measure <server> <pid> <client> <workload> <unit> <ids per request> command...
# appends "server<TAB>client<TAB>workload<TAB>unit<TAB>rate<TAB>per-cpu-s<TAB>
# server busy<TAB>client core busy" to raw.tsv. The two busy fractions show
# which side set the pace: a server under ~95% busy while the client's core
# is full was waiting for its client, and a server's CPU per request is
# higher when it is not saturated (it sleeps and wakes, and each wake-up
# finds fewer connections ready), so per server CPU-second figures only
# compare like with like when both servers were saturated.
measure() {
	local name=$1 pid=$2 cl=$3 wl=$4 unit=$5 per=$6
	shift 6
	local c0 c1 t0 t1 k0 k1 out rate
	c0=$(cpu "$pid") k0=$(core1)
	t0=$(date +%s.%N)
	out=$("$@" 2>&1) || { echo "$name $wl failed: $out" >&2; return 1; }
	t1=$(date +%s.%N)
	c1=$(cpu "$pid") k1=$(core1)
	case $cl in
	# The CSV's test name may hold quotes (a JSON expression): the rate is
	# the seventh field from the end of the result line.
	redis-benchmark) rate=$(echo "$out" | tr '\r' '\n' | grep '^"' | grep -v '^"test"' | tail -1 | awk -F, '{gsub(/"/, "", $(NF-6)); print $(NF-6)}') ;;
	go-redis | raw) rate=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(o["ops_per_sec"] for o in r["ops"]))' "$tmp/lg.json") ;;
	esac
	python3 - "$name" "$cl" "$wl" "$unit" "$per" "$rate" "$c0" "$c1" "$t0" "$t1" "$k0" "$k1" >>"$tmp/raw.tsv" <<'PY'
import sys
name, cl, wl, unit, per, rate, c0, c1, t0, t1, k0, k1 = sys.argv[1:]
rate = float(rate) * float(per)
cpu = float(c1) - float(c0)
wall = float(t1) - float(t0)
(b0, a0), (b1, a1) = (map(int, k.split(",")) for k in (k0, k1))
client = (b1 - b0) / (a1 - a0) if a1 > a0 else float("nan")
print(f"{name}\t{cl}\t{wl}\t{unit}\t{rate}\t{rate * wall / cpu if cpu > 0 else float('nan')}\t{cpu / wall}\t{client}")
PY
}
# core1 prints CPU 1's busy and total ticks (/proc/stat): the client's core.
core1() { awk '/^cpu1 /{print $2+$3+$4+$7+$8 "," $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }

# lgq <port> <flags…>: loadgen's RESP query client (go-redis) against port.
lgq() {
	local port=$1
	shift
	client bin/loadgen query -resp-addr "127.0.0.1:$port" -protocol resp -api-key "$key" -workspace respbench \
		-partner bench -flavour uniform -cohorts 2 -users "$users" -quiet "$@"
}

# workload <index> <server> <pid> <port>: one run of workload index.
workload() {
	local i=$1 name=$2 pid=$3 port=$4
	local rb=(client redis-benchmark -h 127.0.0.1 -p "$port" -a "$key" --csv -r "$users")
	local lg=(lgq "$port" -duration "${secs}s" -json-out "$tmp/lg.json")
	case $i in
	0) measure "$name" "$pid" redis-benchmark "SISMEMBER, 50 conns" "requests" 1 "${rb[@]}" -c 50 -n "$nreq" SISMEMBER "$a" "user-00__rand_int__" ;;
	1) measure "$name" "$pid" redis-benchmark "SISMEMBER, pipeline 16, 50 conns" "requests" 1 "${rb[@]}" -c 50 -P 16 -n "$((nreq * 8))" SISMEMBER "$a" "user-00__rand_int__" ;;
	2) measure "$name" "$pid" redis-benchmark "SMISMEMBER of 1,000, 8 conns" "ids" 1000 "${rb[@]}" -c 8 -n 4000 "${smis[@]}" ;;
	# SINTERCARD of two 100k sets takes Redis ~20 ms, COHORT.COUNT ~25 µs.
	3) if [ "$name" = cohortd ]; then
		measure "$name" "$pid" redis-benchmark "count of A and B, 4 conns" "requests" 1 "${rb[@]}" -c 4 -n 2000 COHORT.COUNT "$expr"
	else
		measure "$name" "$pid" redis-benchmark "count of A and B, 4 conns" "requests" 1 "${rb[@]}" -c 4 -n 200 SINTERCARD 2 "$a" "$b"
	fi ;;
	4) measure "$name" "$pid" go-redis "SISMEMBER, 50 conns" "requests" 1 "${lg[@]}" -mix contains=1 -query-concurrency 50 ;;
	5) measure "$name" "$pid" go-redis "SISMEMBER, pipeline 16, 50 conns" "requests" 1 "${lg[@]}" -mix contains=1 -pipeline 16 -query-concurrency 50 ;;
	6) measure "$name" "$pid" go-redis "SMISMEMBER of 1,000, 8 conns" "ids" 1000 "${lg[@]}" -mix batch=1 -query-concurrency 8 ;;
	7) measure "$name" "$pid" go-redis "count of A and B, 4 conns" "requests" 1 "${lg[@]}" -mix count=1 -query-concurrency 4 ;;
	# loadgen's raw client: pre-encoded commands from one epoll thread, a
	# few µs of client CPU a request where go-redis spends tens.
	8) measure "$name" "$pid" raw "SISMEMBER, 50 conns" "requests" 1 "${lg[@]}" -client raw -mix contains=1 -query-concurrency 50 ;;
	9) measure "$name" "$pid" raw "SISMEMBER, pipeline 16, 50 conns" "requests" 1 "${lg[@]}" -client raw -mix contains=1 -pipeline 16 -query-concurrency 50 ;;
	# redis-benchmark and go-redis fill CPU 1 before cohortd's core is busy.
	10) measure "$name" "$pid" raw "SMISMEMBER of 1,000, 8 conns" "ids" 1000 "${lg[@]}" -client raw -mix batch=1 -query-concurrency 8 ;;
	esac
}

for i in $workloads; do
	for _ in $(seq "$rounds"); do
		if [ -n "$baseline" ]; then
			switch_cohortd "$baseline"
			workload "$i" baseline "$cpid" "$respport"
			switch_cohortd bin/cohortd
		fi
		workload "$i" cohortd "$cpid" "$respport"
		workload "$i" redis-server "$rpid" "$redisport"
	done
done

# Open loop at 70% of the closed-loop maximum: the latency a segment
# evaluator sees when the server is busy but not saturated. Twice per
# server: with go-redis, whose own core is ~80% busy at these rates (its
# queueing and late timers show up in its percentiles), and with loadgen's
# raw client, which sends on time from one epoll thread; each takes its
# maximum with the same client just before.
latency() {
	local name=$1 port=$2 cl=$3 max
	local lg=(lgq "$port" -mix contains=1 -query-concurrency 50)
	[ "$cl" = raw ] && lg+=(-client raw)
	"${lg[@]}" -duration 3s -json-out "$tmp/lg.max.json" >/dev/null
	max=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(o["ops_per_sec"] for o in r["ops"]))' "$tmp/lg.max.json")
	local st0 st1 t0 t1
	st0=$(steal) t0=$(date +%s.%N)
	"${lg[@]}" -duration "${secs}s" -json-out "$tmp/lg.json" -rate "$(python3 -c "print(int(0.7*$max))")" >/dev/null 2>&1
	st1=$(steal) t1=$(date +%s.%N)
	python3 - "$name" "$cl" "$tmp/lg.json" "$st0" "$st1" "$t0" "$t1" "$tck" "$tmp/latency.tsv" >>"$tmp/latency.md" <<'PY'
import json, re, sys
name, cl, path, st0, st1, t0, t1, tck, tsv = sys.argv[1:]
r = json.load(open(path))
o = r["ops"][0]
secs = (float(t1) - float(t0)) * float(tck)
pct = [100 * (int(b) - int(a)) / secs for a, b in zip(st0.split(","), st1.split(","))]
lag = "—"
for n in r.get("notes", []):
    m = re.search(r"sends late by p50 (\d+) µs, p99 (\d+) µs", n)
    if m:
        lag = f"{m.group(2)} µs"
print(f"| {name} | {cl} | SISMEMBER open loop at 70% of max ({o['ops_per_sec']:,.0f}/s) | {o['p50_us']} µs | {o['p99_us']} µs | {o['p999_us']} µs | {lag} | {pct[0]:.1f}% / {pct[1]:.1f}% |")
with open(tsv, "a") as f:
    print(name, cl, o["ops_per_sec"], o["p50_us"], o["p99_us"], o["p999_us"], sep="\t", file=f)
PY
}
# steal prints the steal ticks of CPU 0 and CPU 1 (/proc/stat): time the
# hypervisor gave to other guests, which shows up as latency here.
steal() { awk '/^cpu0 /{a=$9} /^cpu1 /{b=$9} END{print a "," b}' /proc/stat; }
for _ in $(seq "$latrounds"); do
	for cl in go-redis raw; do
		latency cohortd "$respport" "$cl"
		latency redis-server "$redisport" "$cl"
	done
done

echo "# RESP membership queries: $users users, cohorts at 10% density ($(wc -l <"$tmp/uniform-0000.members") and $(wc -l <"$tmp/uniform-0001.members") members)"
echo
echo "cohortd $(git rev-parse --short HEAD) (GOMAXPROCS=1, taskset -c 0); $(redis-server --version | cut -d' ' -f1-3) (taskset -c 0); clients on CPU 1; $rounds rounds, alternating; $(date -u +%Y-%m-%dT%H:%M:%SZ); $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo
python3 - "$tmp/raw.tsv" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
runs = {}
order = []
for name, cl, wl, unit, rate, per, busy, client in rows:
    k = (cl, wl, unit)
    if k not in runs:
        runs[k] = {}
        order.append(k)
    runs[k].setdefault(name, []).append((float(rate), float(per), float(busy), float(client)))
def med(xs, i):
    return statistics.median(x[i] for x in xs)
def ratios(num, den):
    # per server CPU-second, round by round
    return [a[1] / b[1] for a, b in zip(num, den) if b[1] > 0]
def spread(rs):
    return f"×{statistics.median(rs):.2f} (×{min(rs):.2f}–{max(rs):.2f})" if rs else "—"
def pct(xs, i):
    return f"{100 * med(xs, i):.0f}%" if xs else "—"
print("Medians over the rounds; count is COHORT.COUNT on cohortd, SINTERCARD on Redis. Busy: the")
print("server's CPU time over the run's wall time, and the client core's (CPU 1) non-idle share, in")
print("the cohortd run / the Redis run. A server well under 100% busy while the client's core is full")
print("was held back by its client, and its per CPU-second figure includes the cost of idling.")
print()
print("| client | workload | cohortd per second | cohortd per server CPU-second | Redis per second | Redis per server CPU-second | unit | cohortd ÷ Redis per server CPU-second: median (range over rounds) | server busy, cohortd / Redis | client core busy, cohortd / Redis run |")
print("|---|---|---:|---:|---:|---:|---|---|---|---|")
for k in order:
    cl, wl, unit = k
    c, r = runs[k].get("cohortd", []), runs[k].get("redis-server", [])
    print(f"| {cl} | {wl} | {med(c, 0):,.0f} | {med(c, 1):,.0f} | {med(r, 0):,.0f} | {med(r, 1):,.0f} | {unit} | {spread(ratios(c, r))} | {pct(c, 2)} / {pct(r, 2)} | {pct(c, 3)} / {pct(r, 3)} |")
base = [k for k in order if runs[k].get("baseline")]
if base:
    print()
    print("A/B: the baseline binary (RESP_BENCH_BASELINE) run first in each round, on the same data.")
    print()
    print("| client | workload | baseline per server CPU-second | cohortd per server CPU-second | unit | cohortd ÷ baseline: median (range over rounds) | baseline ÷ Redis |")
    print("|---|---|---:|---:|---|---|---|")
    for k in base:
        cl, wl, unit = k
        b, c, r = runs[k]["baseline"], runs[k].get("cohortd", []), runs[k].get("redis-server", [])
        print(f"| {cl} | {wl} | {med(b, 1):,.0f} | {med(c, 1):,.0f} | {unit} | {spread(ratios(c, b))} | {spread(ratios(b, r))} |")
PY
[ "$latrounds" -gt 0 ] || exit 0
echo
echo "| server | client | workload | p50 | p99 | p99.9 | client's send lag p99 | steal CPU 0 / CPU 1 |"
echo "|---|---|---|---|---|---|---|---|"
cat "$tmp/latency.md"
echo
python3 - "$tmp/latency.tsv" "$latrounds" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
print(f"Open loop at 70%: medians over {sys.argv[2]} rounds (range of the p99 in brackets).")
print()
print("| server | client | offered rate | p50 | p99 | p99.9 |")
print("|---|---|---:|---|---|---|")
keys = []
for r in rows:
    if (r[0], r[1]) not in keys:
        keys.append((r[0], r[1]))
for name, cl in sorted(keys, key=lambda k: (k[1], k[0])):
    rs = [r for r in rows if (r[0], r[1]) == (name, cl)]
    col = lambda i: [float(r[i]) for r in rs]
    med = lambda i: statistics.median(col(i))
    p99 = col(4)
    print(f"| {name} | {cl} | {med(2):,.0f}/s | {med(3):.0f} µs | {med(4):.0f} µs ({min(p99):.0f}–{max(p99):.0f}) | {med(5):.0f} µs |")
PY
