package resource

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
)

func TestParseLimitsMatchesGetrlimit(t *testing.T) {
	b, err := os.ReadFile("/proc/self/limits")
	if err != nil {
		t.Skip(err)
	}
	lims, err := parseLimits(string(b))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lims {
		var want unix.Rlimit
		if err := unix.Getrlimit(int(l.Resource), &want); err != nil {
			t.Fatal(err)
		}
		if l.Cur != want.Cur || l.Max != want.Max {
			t.Errorf("rlimit %d: parsed %d/%d, getrlimit says %d/%d", l.Resource, l.Cur, l.Max, want.Cur, want.Max)
		}
	}
}

// TestRestoreSchedDamaged: a scheduling or I/O priority a damaged image
// made up is reported back, never an error or a panic, and leaves the
// thread as it was; a real one is set.
func TestRestoreSchedDamaged(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	th := &pb.Thread{Tid: 1, Sched: &pb.Sched{Policy: 99, Nice: 3}, Ioprio: 7<<13 | 1}
	unset := RestoreSched(pid, th)
	if !strings.Contains(unset, "policy 99 nice 3: invalid argument") || !strings.Contains(unset, "I/O class 7 level 1: invalid argument") {
		t.Errorf("RestoreSched of made-up values = %q, want both named with EINVAL", unset)
	}
	if a, err := unix.SchedGetAttr(pid, 0); err != nil || a.Policy != 0 || a.Nice != 0 {
		t.Errorf("after refused values: %+v, %v; want SCHED_OTHER nice 0", a, err)
	}
	th = &pb.Thread{Tid: 1, Sched: &pb.Sched{Policy: unix.SCHED_BATCH, Nice: 4}, Ioprio: 3 << 13}
	if unset := RestoreSched(pid, th); unset != "" {
		t.Fatalf("RestoreSched(SCHED_BATCH nice 4, idle I/O) = %q", unset)
	}
	a, err := unix.SchedGetAttr(pid, 0)
	if err != nil || a.Policy != unix.SCHED_BATCH || a.Nice != 4 {
		t.Errorf("after SCHED_BATCH nice 4: %+v, %v", a, err)
	}
	if io, _, _ := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, uintptr(pid), 0); io != 3<<13 {
		t.Errorf("I/O priority %#x, want the idle class %#x", io, 3<<13)
	}
}

// TestRestoreOomScoreAdjDamaged: an adjustment out of the kernel's range
// is refused as damage before anything is written.
func TestRestoreOomScoreAdjDamaged(t *testing.T) {
	adj := int32(5000)
	err := RestoreOomScoreAdj(os.Getpid(), &pb.Process{OomScoreAdj: &adj}, nil)
	if err == nil || !strings.Contains(err.Error(), "image damaged: oom_score_adj 5000") {
		t.Fatalf("RestoreOomScoreAdj(5000) = %v, want image damaged", err)
	}
}
