#!/usr/bin/env bash
# RSS growth per user while seeding the docs/WORKLOADS.md user mix through
# POST /v1/users, beside redis-server holding the same users as hashes (the
# Redis peer's layout, bench/peer_redis.go), measured in the same run as the
# VmRSS delta of each server process.
#
#   flock /tmp/cohortd-bench.lock bash bench/memory.sh [users...]   # default 1000000
#
# cohortd runs alone on CPU 0 (taskset, GOMAXPROCS=1, default -fsync=always);
# loadgen seeds it from CPU 1. redis-server (no persistence) is seeded by one
# Lua script per 100k users, generating the same mix: per block of 20 users,
# 15 with an external id, 2 alias-only, 3 anonymous with a 36-byte device id,
# one of which gets an external id later. It prints go-bench lines
# (rss-B/user per system) for benchstat, and AnonHugePages of cohortd.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000)
go build -o bin/cohortd ./cmd/cohortd
go build -o bin/loadgen ./cmd/loadgen
tmp=$(mktemp -d)
addr=127.0.0.1:18191
port=16391
cleanup() {
	[ -f "$tmp/pid" ] && kill "$(cat "$tmp/pid")" 2>/dev/null || true
	redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT
rss() { awk '/^VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }

echo "# $(git rev-parse --short HEAD), $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
echo "# THP: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo n/a)"
for n in "${sizes[@]}"; do
	rm -rf "$tmp/data"
	GOMAXPROCS=1 taskset -c 0 bin/cohortd -addr "$addr" -data-dir "$tmp/data" -admin-token mem-admin 2>"$tmp/cohortd.log" &
	echo $! >"$tmp/pid"
	pid=$(cat "$tmp/pid")
	for _ in $(seq 100); do curl -sf "http://$addr/readyz" >/dev/null && break; sleep 0.1; done
	before=$(rss "$pid")
	taskset -c 1 bin/loadgen seed -addr "http://$addr" -admin-token mem-admin -workspace mem -users "$n" -quiet >/dev/null 2>"$tmp/seed.log"
	after=$(rss "$pid")
	huge=$(awk '/^AnonHugePages/ {print $2 * 1024}' "/proc/$pid/smaps_rollup")
	report=$(curl -sf -H "Authorization: Bearer mem-admin" "http://$addr/v1/admin/memory")
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	rm -f "$tmp/pid"

	taskset -c 0 redis-server --bind 127.0.0.1 --port "$port" --dir "$tmp" --save '' --appendonly no \
		--daemonize yes --pidfile "$tmp/redis.pid" --logfile "$tmp/redis.log" >/dev/null
	for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
	rpid=$(cat "$tmp/redis.pid")
	rbefore=$(rss "$rpid")
	for ((lo = 1; lo <= n; lo += 100000)); do
		hi=$((lo + 99999 < n ? lo + 99999 : n))
		redis-cli -p "$port" eval "
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  local k, j = 'user:' .. i, i % 20
  if j < 15 then redis.call('HSET', k, 'external_id', string.format('user-%014d', i))
  elseif j < 17 then redis.call('HSET', k, 'alias', 'email:' .. i .. '@example.com')
  else
    redis.call('HSET', k, 'device_id', string.format('%08x-%04x-4%03x-8%03x-%012x', i, i % 65536, i % 4096, (i * 7) % 4096, i * 7919))
    if j == 17 then redis.call('HSET', k, 'external_id', string.format('user-%014d', i)) end
  end
end" 0 "$lo" "$hi" >/dev/null
	done
	rafter=$(rss "$rpid")
	redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true

	awk -v n="$n" -v c=$((after - before)) -v r=$((rafter - rbefore)) 'BEGIN {
		printf "BenchmarkSeedRSS/users_%d/system=cohortd 1 %.1f rss-B/user\n", n, c / n
		printf "BenchmarkSeedRSS/users_%d/system=redis 1 %.1f rss-B/user\n", n, r / n
	}'
	echo "# users $n: cohortd VmRSS $before -> $after (AnonHugePages $huge); redis VmRSS $rbefore -> $rafter"
	echo "# /v1/admin/memory: $report"
done
