// Package fault lets tests make a checkpoint or restart fail at a named
// point, to prove that failures leave nothing behind. The spec comes from
// the CKPT_FAULT environment variable: "POINT" returns an error there,
// "POINT:kill" makes ckpt SIGKILL itself there, "POINT:hang" makes it wait
// there (for tests that interrupt it).
package fault

import (
	"fmt"
	"os"
	"syscall"
	"time"
)

// At acts on spec if it names point, and returns the injected error.
func At(spec, point string) error {
	switch spec {
	case point:
		return fmt.Errorf("injected failure at %q", point)
	case point + ":kill":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Hour)
	case point + ":hang":
		time.Sleep(time.Hour)
	}
	return nil
}
