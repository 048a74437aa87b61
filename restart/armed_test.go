package restart

import (
	"bytes"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/checkpoint"
)

// TestRunWaitsForSignalsArmed checks that Run creates no process before
// the caller's signals are caught: ckpt restart forwards signals to the
// restored process, and one that came between its release and the
// catching would be lost or end ckpt.
func TestRunWaitsForSignalsArmed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to checkpoint and restart")
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	var img bytes.Buffer
	_, err := checkpoint.Run(checkpoint.Options{Pid: pid, Out: &img})
	cmd.Process.Kill()
	cmd.Wait()
	if err != nil {
		t.Fatal(err)
	}
	// Whatever happens, the restored process goes with the test.
	t.Cleanup(func() {
		unix.Kill(pid, unix.SIGKILL)
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, 0, nil)
	})
	armed := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := Run(Options{In: &img, SignalsArmed: armed})
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	if err := unix.Kill(pid, 0); err != unix.ESRCH {
		t.Errorf("process %d exists before the signals were armed (kill: %v)", pid, err)
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned before the signals were armed: %v", err)
	default:
	}
	close(armed)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not finish once the signals were armed")
	}
}
