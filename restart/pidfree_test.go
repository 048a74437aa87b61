package restart

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ckpt/ckpt/proc"
)

// TestCheckPidFree: a PID held by a live process is refused at once; one
// held by a killed child is waited for until its parent reaps it, and
// refused, naming the parent, if that takes too long.
func TestCheckPidFree(t *testing.T) {
	start := func() *exec.Cmd {
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	live := start()
	defer func() { live.Process.Kill(); live.Wait() }()
	if err := checkPidFree(live.Process.Pid); err == nil || !strings.Contains(err.Error(), "is taken by") {
		t.Errorf("live holder: %v, want it refused", err)
	}

	// As checkpoint --kill returns: once the process has died.
	killed := func(c *exec.Cmd) {
		c.Process.Signal(syscall.SIGKILL)
		for i := 0; i < 1000; i++ {
			if st, err := proc.ReadStat(c.Process.Pid); err == nil && st.State == 'Z' {
				return
			}
			time.Sleep(time.Millisecond)
		}
		t.Fatalf("process %d did not die", c.Process.Pid)
	}

	// Killed, reaped 50 ms later: waited for.
	c := start()
	killed(c)
	go func() {
		time.Sleep(50 * time.Millisecond)
		c.Wait()
	}()
	t0 := time.Now()
	if err := checkPidFree(c.Process.Pid); err != nil {
		t.Errorf("holder reaped after 50 ms: %v", err)
	}
	if d := time.Since(t0); d < 20*time.Millisecond {
		t.Errorf("returned after %v, before the reap", d)
	}

	// Killed and left a zombie: refused after the wait, naming the parent.
	z := start()
	defer z.Wait()
	killed(z)
	err := checkPidFree(z.Process.Pid)
	if err == nil || !strings.Contains(err.Error(), "has not reaped") {
		t.Errorf("zombie never reaped: %v, want it refused", err)
	}
}
