#!/usr/bin/env bash
# Start or stop a throw-away redis-server for the peer benchmarks.
#
#   eval "$(bash bench/redis.sh start)"   # exports REDIS_ADDR and REDIS_DIR
#   bash bench/redis.sh stop              # uses REDIS_DIR
#
# The server listens on 127.0.0.1 only, keeps its files in a temp dir and
# persists nothing (no RDB snapshots, no AOF), like the in-memory engine it
# is compared with. REDIS_PORT picks the port (default 6390, so that a
# developer's own Redis on 6379 is never flushed); REDIS_CPU pins it with
# taskset (e.g. REDIS_CPU=1).
set -euo pipefail

cmd=${1:-}
port=${REDIS_PORT:-6390}

case "$cmd" in
start)
	command -v redis-server >/dev/null || {
		echo "redis-server not found: apt-get install -y redis-server" >&2
		exit 1
	}
	dir=$(mktemp -d -t cohortd-redis.XXXXXX)
	pin=()
	if [ -n "${REDIS_CPU:-}" ]; then pin=(taskset -c "$REDIS_CPU"); fi
	"${pin[@]}" redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" \
		--save '' --appendonly no --daemonize yes --protected-mode yes \
		--pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >&2
	for _ in $(seq 50); do
		if redis-cli -p "$port" ping >/dev/null 2>&1; then
			echo "export REDIS_ADDR=127.0.0.1:$port REDIS_DIR=$dir"
			exit 0
		fi
		sleep 0.1
	done
	echo "redis-server did not answer on 127.0.0.1:$port; log: $dir/redis.log" >&2
	exit 1
	;;
stop)
	dir=${REDIS_DIR:?REDIS_DIR unset: pass the value printed by start}
	if [ -f "$dir/redis.pid" ]; then
		pid=$(cat "$dir/redis.pid")
		kill "$pid" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	fi
	rm -rf "$dir"
	;;
version)
	redis-server --version
	;;
*)
	echo "usage: $0 start|stop|version" >&2
	exit 2
	;;
esac
