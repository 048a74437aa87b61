#!/usr/bin/env bash
# The demo: a counter is checkpointed, killed, and restarted from its image;
# it carries on counting where it stopped, with the same PID.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (ckpt restores original PIDs)" >&2; exit 1; }
ckpt=$PWD/bin/ckpt
dir=$(mktemp -d /tmp/ckpt-demo.XXXXXX)
trap '[ -n "${pid:-}" ] && kill -9 -- "-$pid" "$pid" 2>/dev/null; rm -rf "$dir"' EXIT

cat > "$dir/counter.c" <<'C'
#include <stdio.h>
#include <unistd.h>
#include <time.h>
int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (unsigned long n = 1;; n++) {
		printf("pid %d: count %lu\n", getpid(), n);
		struct timespec ts = {0, 250000000};
		nanosleep(&ts, &ts);
	}
}
C
gcc -O2 -o "$dir/counter" "$dir/counter.c"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "start a counter (output goes to $dir/out)"
# Only stdin/stdout/stderr: descriptors this script inherited (pipes from a
# build tool, say) are not the counter's to keep, and ckpt would refuse them.
for fd in /proc/$$/fd/*; do
	fd=${fd##*/}
	[ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null || true
done
setsid "$dir/counter" >"$dir/out" 2>&1 </dev/null &
pid=$!
sleep 1.2
tail -n 3 "$dir/out"

say "ckpt checkpoint --kill -o $dir/img $pid"
"$ckpt" checkpoint -v --kill -o "$dir/img" "$pid"
{ wait "$pid"; } 2>/dev/null || true
echo "process $pid is gone: $(ps -p "$pid" >/dev/null && echo no || echo yes)"
last=$(tail -n 1 "$dir/out")
echo "last line before the checkpoint: $last"
ls -l "$dir/img"

say "ckpt inspect $dir/img (first lines)"
"$ckpt" inspect "$dir/img" >"$dir/inspect.txt"
head -n 12 "$dir/inspect.txt"

say "ckpt restart --detach $dir/img"
"$ckpt" restart -v --detach "$dir/img"
sleep 1.2
echo "process $pid runs again: $(ps -o pid=,comm= -p "$pid")"
echo "the count carries on:"
grep -A 4 -F "$last" "$dir/out"

kill -9 "$pid"
pid=

say "a TCP server and its client, connected over 127.0.0.1"
cat > "$dir/chat.c" <<'C'
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	if (bind(l, (struct sockaddr *)&a, al) || listen(l, 1) || getsockname(l, (struct sockaddr *)&a, &al))
		return 1;
	if (fork() == 0) { /* the client: a numbered line every 250 ms */
		int c = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(c, (struct sockaddr *)&a, al))
			return 1;
		for (unsigned long n = 1;; n++) {
			char line[64];
			int k = snprintf(line, sizeof(line), "message %lu from client %d\n", n, getpid());
			if (write(c, line, k) != k)
				return 1;
			struct timespec ts = {0, 250000000};
			nanosleep(&ts, &ts);
		}
	}
	int s = accept(l, NULL, NULL);
	char buf[256];
	ssize_t k;
	while ((k = read(s, buf, sizeof(buf))) > 0) /* the server prints what it gets */
		printf("server %d got: %.*s", getpid(), (int)k, buf);
	printf("server %d: connection closed\n", getpid());
	return 0;
}
C
gcc -O2 -o "$dir/chat" "$dir/chat.c"
setsid "$dir/chat" >"$dir/chat.out" 2>&1 </dev/null &
pid=$!
disown "$pid" # no job notice when the checkpoint kills it
sleep 1.2
tail -n 2 "$dir/chat.out"

say "ckpt checkpoint --kill -o $dir/chat.img $pid (the tree, its connection in repair mode)"
"$ckpt" checkpoint --kill -o "$dir/chat.img" "$pid"
last=$(tail -n 1 "$dir/chat.out")
echo "last line before the checkpoint: $last"
"$ckpt" inspect "$dir/chat.img" | grep -A 1 "socket socket" | grep TCP

say "ckpt restart --detach $dir/chat.img"
"$ckpt" restart --detach "$dir/chat.img"
sleep 1.2
echo "the conversation carries on over the same connection, no message lost:"
grep -A 4 -F "$last" "$dir/chat.out"

kill -9 -- "-$pid"
pid=
say "demo done"
