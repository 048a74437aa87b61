package checkpoint

import (
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ckpt/ckpt/proc"
)

// TestRunWaitsForSignalsArmed checks that Run stops nothing before the
// caller's signals are caught: a SIGINT that came while the process was
// frozen would otherwise end ckpt with the process left stopped.
func TestRunWaitsForSignalsArmed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to trace")
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	armed := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := Run(Options{Pid: cmd.Process.Pid, Out: io.Discard, SignalsArmed: armed})
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	b, err := proc.ReadFile(proc.Path(cmd.Process.Pid, "status"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "TracerPid:\t0\n") {
		t.Fatalf("the process was attached before the signals were armed:\n%s", b)
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
