package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/ptrace"
)

// TestReleaseInRestartWindow puts a thread blocked in read() into the
// state a detached thread passes through on its way back into the call
// (the kernel's restart set up, the call not yet made again) with a
// SIGUSR2 pending, and releases it with ptrace.StartRelease and Finish.
// The read must fail with EINTR, as it would have had the signal come
// while it blocked; a plain detach runs the handler and then blocks in the
// read again.
func TestReleaseInRestartWindow(t *testing.T) {
	// Not startWorkload: its waiting goroutine (the test is the
	// workload's parent) would take the ptrace stops Release waits for.
	cmd := exec.Command(compile(t, "eintr"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		killTree(pid)
		cmd.Wait()
	})
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "READY" {
		t.Fatalf("workload: %q, want READY", lines.Text())
	}
	// READY comes just before the read: wait until the workload is in it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", pid)); strings.HasPrefix(string(b), "0 ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workload not in read() 5 s after READY:\n%s", taskStates(pid))
		}
	}
	err = ptrace.Run(func() error {
		if err := ptrace.Seize(pid); err != nil {
			return err
		}
		if err := ptrace.Interrupt(pid); err != nil {
			return err
		}
		if _, err := ptrace.WaitInterrupted(pid); err != nil {
			return err
		}
		orig, err := ptrace.GetRegs(pid)
		if err != nil {
			return err
		}
		if orig.Orig_rax != unix.SYS_READ || -int64(orig.Rax) != ptrace.ErrRestartSys {
			t.Errorf("interrupted workload: orig_rax %d rax %d, want read with -ERESTARTSYS", int64(orig.Orig_rax), int64(orig.Rax))
		}
		window := orig
		window.Rip -= 2 // back at the syscall instruction
		window.Rax, window.Orig_rax = orig.Orig_rax, ^uint64(0)
		if err := ptrace.SetRegs(pid, &window); err != nil {
			return err
		}
		if err := unix.Tgkill(pid, pid, unix.SIGUSR2); err != nil {
			return err
		}
		rl, err := ptrace.StartRelease(pid, &orig)
		if err != nil || rl == nil {
			return fmt.Errorf("start release: %v (nothing to finish: %v)", err, rl == nil)
		}
		return rl.Finish()
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan string, 1)
	go func() {
		var rest []string
		for lines.Scan() {
			rest = append(rest, lines.Text())
		}
		done <- strings.Join(rest, "\n")
	}()
	select {
	case rest := <-done:
		if err := cmd.Wait(); err != nil || !strings.HasSuffix(rest, "PASS") {
			t.Fatalf("workload: %v\n%s", err, rest)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("workload still blocked 5 s after its release:\n%s", taskStates(pid))
	}
}
