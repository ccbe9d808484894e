#!/usr/bin/env bash
# Single-user contains as separate processes: cohortd with GOMAXPROCS=1
# (one core's worth; default -fsync=always), loadgen as its client, and
# redis-server (single-threaded) driven by redis-benchmark. Nothing is
# pinned with taskset: pinning all of cohortd's OS threads to one CPU made
# them share it in CFS time slices and put 3-7 ms stalls into 10% of
# requests (measured: p90 3.3 ms pinned against 0.18 ms unpinned).
#
#   bash bench/latency.sh [users] > bench/results/<variant>/latency.txt
#
# It prints: loadgen's closed-loop maximum with 1 and 8 connections, the
# open-loop latency at 70% of the 8-connection maximum (HDR percentiles,
# coordinated-omission corrected), and redis-benchmark SISMEMBER at 1 and 8
# connections without pipelining on the same machine.
set -euo pipefail
users=${1:-1000000}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
go build -o bin/cohortd ./cmd/cohortd
go build -o bin/loadgen ./cmd/loadgen
tmp=$(mktemp -d)
addr=127.0.0.1:18181
cleanup() { kill "$(cat "$tmp/pid")" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
GOMAXPROCS=1 bin/cohortd -addr "$addr" -data-dir "$tmp/data" -admin-token lat-admin 2>"$tmp/cohortd.log" &
echo $! >"$tmp/pid"
for _ in $(seq 100); do curl -sf "http://$addr/readyz" >/dev/null && break; sleep 0.1; done
lg() { bin/loadgen "$@"; }
echo "# cohortd $(git rev-parse --short HEAD), $users users, cohortd GOMAXPROCS=1, processes not pinned"
lg seed -addr "http://$addr" -admin-token lat-admin -workspace lat -users "$users" -quiet 2>"$tmp/seed.log" >/dev/null
# loadgen prints no secrets: issue a fresh workspace key, and let each run
# create what else it lacks with the admin token.
key=$(curl -sf -X POST -H "Authorization: Bearer lat-admin" "http://$addr/v1/workspaces/lat/api-key" |
	sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p')
[ -n "$key" ] || { echo "latency.sh: no API key for workspace lat" >&2; exit 1; }
creds=(-workspace lat -api-key "$key" -admin-token lat-admin -users "$users")
lg export -addr "http://$addr" "${creds[@]}" -cohorts 3 -flavour uniform -shape bulk -quiet >/dev/null
q() { lg query -addr "http://$addr" "${creds[@]}" -cohorts 3 -flavour uniform -mix contains=100 -quiet "$@"; }
echo "## closed loop, 1 connection"
q -query-concurrency 1 -duration 10s | grep -E '^BenchmarkLoadgen|contains'
echo "## closed loop, 8 connections"
out=$(q -query-concurrency 8 -duration 10s)
echo "$out" | grep -E '^BenchmarkLoadgen|contains'
max=$(echo "$out" | sed -n 's/^BenchmarkLoadgen\/contains[^0-9]*[0-9]*[[:space:]]*\([0-9.]*\) ns\/op.*/\1/p' | head -1)
rate=$(awk -v ns="$max" 'BEGIN { printf "%d", 0.7 * 1e9 / ns }')
echo "## open loop at 70% of the 8-connection maximum: $rate req/s"
q -query-concurrency 64 -rate "$rate" -duration 20s | grep -E '^BenchmarkLoadgen|contains|p99'
echo "## redis-benchmark SISMEMBER (no pipelining), redis-server single-threaded"
redis-server --port 16399 --save '' --appendonly no --daemonize yes --pidfile "$tmp/redis.pid" >/dev/null
sleep 0.5
redis-cli -p 16399 eval "for i=1,100000 do redis.call('SADD','c',i) end" 0 >/dev/null
for c in 1 8; do
	echo "### $c connection(s)"
	redis-benchmark -p 16399 -c "$c" -n 200000 -q SISMEMBER c 777 2>&1 | tr "\r" "\n" | tail -1
done
redis-cli -p 16399 shutdown nosave >/dev/null 2>&1 || true
