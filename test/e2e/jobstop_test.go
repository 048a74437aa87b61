package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// threadStates is the state letter of each thread of pid.
func threadStates(pid int) string {
	var s strings.Builder
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	for _, t := range tasks {
		if f := statFields(t); len(f) > 0 {
			s.WriteString(f[0])
		}
	}
	return s.String()
}

// TestJobStoppedRoot checkpoints a process stopped by job control (the
// workload's own checks cover a stopped child; here the checkpointed
// process itself is stopped): left running, it stays stopped; killed and
// restarted, it comes back stopped, every thread, and runs on SIGCONT.
func TestJobStoppedRoot(t *testing.T) {
	p := startWith(t, &syscall.SysProcAttr{}, compile(t, "threads"))
	p.waitLog("READY", 20*time.Second)
	if err := syscall.Kill(p.pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitState := func(what string, want func(string) bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !want(threadStates(p.pid)); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: thread states %q", what, threadStates(p.pid))
			}
		}
	}
	allStopped := func(s string) bool { return len(s) > 1 && strings.Trim(s, "T") == "" }
	waitState("stopped before the checkpoint", allStopped)
	img := filepath.Join(p.dir, "img")
	if out, err := ckpt(nil, "checkpoint", "-o", img, fmt.Sprint(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	if s := threadStates(p.pid); !allStopped(s) {
		t.Errorf("after a checkpoint that left it running: thread states %q, want all T", s)
	}
	if out, err := ckpt(nil, "checkpoint", "--kill", "-o", img, fmt.Sprint(p.pid)); err != nil {
		t.Fatalf("checkpoint --kill: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	r := p.restart(img)
	if s := threadStates(p.pid); !allStopped(s) {
		t.Errorf("after the restart: thread states %q, want all T", s)
	}
	if err := syscall.Kill(p.pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitState("continued after the restart", func(s string) bool { return s != "" && !strings.Contains(s, "T") })
	p.verifyExit(r.exit, true, 10*time.Second)
}
