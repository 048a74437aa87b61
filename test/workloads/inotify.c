// build:
// inotify: an inotify instance watching a directory (IN_CREATE) and a file
// (IN_MODIFY), with a watch removed in between so that the descriptors are
// 1 and 3. On SIGUSR2 it creates a file in the directory and modifies the
// watched file, and checks the events carry the right descriptors.
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t verify;
static void on_usr2(int s) { (void)s; verify = 1; }
#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL: " __VA_ARGS__); printf("\n"); return 1; } } while (0)

int main(void) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_usr2};
	sigaction(SIGUSR2, &sa, NULL);
	mkdir("dir", 0700);
	int f = open("file", O_CREAT | O_WRONLY, 0600);
	close(f);
	int in = inotify_init1(0);
	int wd1 = inotify_add_watch(in, "dir", IN_CREATE);
	int tmp = inotify_add_watch(in, ".", IN_DELETE);
	inotify_rm_watch(in, tmp);
	char ev[4096];
	read(in, ev, sizeof ev); // the IN_IGNORED of the removed watch
	int wd3 = inotify_add_watch(in, "file", IN_MODIFY);
	CHECK(wd1 == 1 && wd3 == 3, "setup gave watch descriptors %d and %d", wd1, wd3);
	printf("READY\n");
	while (!verify) usleep(10000);

	int c = open("dir/new", O_CREAT | O_WRONLY, 0600);
	close(c);
	int n = read(in, ev, sizeof ev);
	struct inotify_event *e = (struct inotify_event *)ev;
	CHECK(n > 0 && e->wd == 1 && (e->mask & IN_CREATE) && strcmp(e->name, "new") == 0, "create event: %d bytes, wd %d mask %#x", n, n > 0 ? e->wd : -1, n > 0 ? e->mask : 0);
	int w = open("file", O_WRONLY);
	write(w, "x", 1);
	close(w);
	n = read(in, ev, sizeof ev);
	CHECK(n > 0 && e->wd == 3 && (e->mask & IN_MODIFY), "modify event: %d bytes, wd %d mask %#x", n, n > 0 ? e->wd : -1, n > 0 ? e->mask : 0);
	printf("PASS\n");
	return 0;
}
