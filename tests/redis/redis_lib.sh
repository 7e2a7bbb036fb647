#!/usr/bin/env bash
# Shared by the Redis tests: starts and stops a real redis-server of its own
# on a free loopback port (never another address, never a mock).
#   redis_start DIR [redis-server options...]
#       starts one in DIR (its AOF and log live there) on a free port of
#       127.0.0.1; sets REDIS_PORT, REDIS_PID, REDIS_URL; waits until it
#       answers PING (10 s at most)
#   redis_stop [SIGNAL]   stops it (TERM by default; KILL for a crash)
#   redis_restart [SIGNAL] stops it and starts it again on the same port
#       and DIR, with the same options (the AOF, if on, is replayed)

redis_free_port() {
	python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

redis_start() {
	REDIS_DIR=$1; shift
	REDIS_OPTS=("$@")
	[[ -n ${REDIS_PORT:-} ]] || REDIS_PORT=$(redis_free_port)
	redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" \
		--save '' --logfile "$REDIS_DIR/redis.log" --daemonize no \
		"${REDIS_OPTS[@]}" &
	REDIS_PID=$!
	REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
	export REDIS_URL REDIS_PORT REDIS_PID
	local i
	for ((i = 0; i < 200; i++)); do
		if redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
			return 0
		fi
		kill -0 "$REDIS_PID" 2>/dev/null || break
		sleep 0.05
	done
	echo "redis_lib: redis-server did not start on port $REDIS_PORT" >&2
	cat "$REDIS_DIR/redis.log" >&2 2>/dev/null || true
	return 1
}

redis_stop() {
	local sig=${1:-TERM}
	[[ -n ${REDIS_PID:-} ]] || return 0
	kill "-$sig" "$REDIS_PID" 2>/dev/null || true
	wait "$REDIS_PID" 2>/dev/null || true
	REDIS_PID=
}

redis_restart() {
	redis_stop "${1:-TERM}"
	redis_start "$REDIS_DIR" "${REDIS_OPTS[@]}"
}
