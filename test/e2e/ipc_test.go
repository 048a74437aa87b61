package e2e

import (
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// inFreshIPCNamespace moves the calling goroutine's thread into a new IPC
// namespace, so that every process the test starts from it (workloads,
// ckpt) lives there and no IPC object reaches the machine's namespace.
// The thread stays locked: the runtime discards it when the test ends,
// and the namespace goes with its last process.
func inFreshIPCNamespace(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWIPC); err != nil {
		t.Fatalf("unshare IPC namespace: %v", err)
	}
}

// ipcWorkloads use SysV IPC in ckpt's own IPC namespace (the "host" case:
// the test gives both a namespace of their own); ipcshm_multi's child has
// a nested IPC namespace, saved whole. The container versions (whole
// namespaces, with semaphores and undo lists) are in containerWorkloads.
func ipcWorkloads() []workload {
	return []workload{
		{name: "ipcshm", argv: cWorkload("ipcshm"), signal: true, settle: 30 * time.Millisecond},
		{name: "ipcmsq", argv: cWorkload("ipcmsq"), signal: true, settle: 30 * time.Millisecond},
		{name: "ipcshm-multi", argv: cWorkload("ipcshm_multi"), signal: true, settle: 30 * time.Millisecond},
	}
}

// TestIPCWorkloads runs the SysV IPC workloads in the three harness modes,
// each in an IPC namespace of its own shared by the workload and ckpt.
func TestIPCWorkloads(t *testing.T) {
	for _, w := range ipcWorkloads() {
		for _, mode := range []string{"kill", "running", "twice"} {
			t.Run(w.name+"/"+mode, func(t *testing.T) {
				inFreshIPCNamespace(t)
				runWorkload(t, w, mode)
			})
		}
	}
}

// TestIPCHostImage checks what a host-namespace image says about SysV IPC,
// and that the workload really ran in the test's namespace.
func TestIPCHostImage(t *testing.T) {
	inFreshIPCNamespace(t)
	p := startWorkload(t, compile(t, "ipcshm"))
	theirs, _ := os.Readlink("/proc/" + itoa(p.pid) + "/ns/ipc")
	if host, _ := os.Readlink("/proc/1/ns/ipc"); theirs == host || theirs == "" {
		t.Fatalf("workload runs in the machine's IPC namespace %s", theirs)
	}
	img := p.dir + "/img"
	if out, err := ckpt(nil, "checkpoint", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	text, err := ckpt(nil, "inspect", img)
	if err != nil {
		t.Fatalf("inspect: %v\n%s", err, text)
	}
	for _, want := range []string{"2 attached shared memory segments; message queues and semaphores not captured", "removed (SHM_DEST)", "/SYSV1c0c0a01 (deleted)"} {
		if !strings.Contains(text, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, text)
		}
	}
	p.verifyExit(p.exit, true, 10*time.Second)
}

// TestIPCHostIDTaken: a segment that must come back under its id, while
// another segment holds that id, fails the restart with a message that
// names the id and what to do, and leaves no process behind.
func TestIPCHostIDTaken(t *testing.T) {
	inFreshIPCNamespace(t)
	p := startWorkload(t, compile(t, "ipcshm"))
	m := regexp.MustCompile(`ids (\d+) (\d+) (\d+)`).FindStringSubmatch(p.logText())
	if m == nil {
		t.Fatalf("no ids in log:\n%s", p.logText())
	}
	img := p.dir + "/img"
	if out, err := ckpt(nil, "checkpoint", "--kill", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	// Segment C (removed while attached) went away with the process; take
	// its id with another segment. This thread is in the test's namespace.
	if err := os.WriteFile("/proc/sys/kernel/shm_next_id", []byte(m[3]), 0); err != nil {
		t.Fatal(err)
	}
	id, err := unix.SysvShmGet(0x1c0c0aff, 4096, unix.IPC_CREAT|0o600)
	if err != nil || strconv.Itoa(id) != m[3] {
		t.Fatalf("take id %s: got %d, %v", m[3], id, err)
	}
	out, err := ckpt(nil, "restart", img)
	if err == nil {
		t.Fatalf("restart succeeded with the id taken:\n%s", out)
	}
	want := "restore shared memory segment " + m[3] + " (key 0x1c0c0a03, removed while attached): id " + m[3] + " is taken by another segment (key 0x1c0c0aff, 4096 bytes); remove it (ipcrm -m " + m[3] + ")"
	if !strings.Contains(out, want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("restart said:\n%s\nwant one line with %q", out, want)
	}
	if alive(p.pid) {
		t.Errorf("process %d runs after a failed restart", p.pid)
	}
	var ds unix.SysvShmDesc
	ida, _ := strconv.Atoi(m[1])
	if _, err := unix.SysvShmCtl(ida, unix.IPC_STAT, &ds); err != nil || ds.Nattch != 0 {
		t.Errorf("segment A (reused, not created) after the failed restart: %v, %d attached", err, ds.Nattch)
	}
}
