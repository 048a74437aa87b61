// build:
// clonefiles: a parent and a child sharing one descriptor table (CLONE_FS),
// which ckpt must refuse rather than restore as two copies.
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
static char stack[65536];
static int child(void *a) { (void)a; for (;;) pause(); return 0; }
int main(void) { clone(child, stack + sizeof stack, CLONE_FS | SIGCHLD, NULL); for (;;) pause(); }
