package restart

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/ptrace"
	"github.com/ckpt/ckpt/resource"
)

// withStub runs f on the tracing thread with a first stub, ready for
// injected calls, and kills the stub afterwards.
func withStub(f func(s *stub) error) error {
	return ptrace.Run(func() error {
		s, err := startStub0(nil)
		if err != nil {
			return err
		}
		defer s.kill()
		if err := ptrace.SetSigmask(s.pid, stubMask); err != nil {
			return err
		}
		return f(s)
	})
}

// TestStubBatch runs batches in a real stub: more calls than one scratch
// area holds (several rounds of the loop), and a batch whose third call
// fails, which must stop there with that call's own error.
func TestStubBatch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace of a stub)")
	}
	err := withStub(func(s *stub) error {
		var calls []resource.Call
		for range 100 {
			calls = append(calls, resource.Call{Nr: unix.SYS_GETPID})
		}
		res, err := s.t.Batch(calls)
		if err != nil {
			return err
		}
		if len(res) != len(calls) {
			return fmt.Errorf("%d results for %d calls", len(res), len(calls))
		}
		for i, r := range res {
			if r != uint64(s.pid) {
				return fmt.Errorf("getpid %d returned %d, want %d", i, r, s.pid)
			}
		}
		const at = 0x7000_0000
		res, err = s.t.Batch([]resource.Call{
			{Nr: unix.SYS_MMAP, Args: []uint64{at, 4096, unix.PROT_READ, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_FIXED, ^uint64(0), 0}},
			{Nr: unix.SYS_GETPID},
			{Nr: unix.SYS_MUNMAP, Args: []uint64{at + 1, 4096},
				Err: func(err error) error { return fmt.Errorf("unmap the odd one: %w", err) }},
			{Nr: unix.SYS_MUNMAP, Args: []uint64{at, 4096}},
		})
		if !errors.Is(err, unix.EINVAL) || !strings.HasPrefix(err.Error(), "unmap the odd one: ") {
			return fmt.Errorf("failing batch: got error %v, want the third call's EINVAL", err)
		}
		if len(res) != 2 || res[0] != at || res[1] != uint64(s.pid) {
			return fmt.Errorf("failing batch: results %#x, want [%#x %d]", res, at, s.pid)
		}
		// The fourth call did not run: the area is still mapped.
		if _, err := s.t.Syscall(unix.SYS_MSYNC, at, 4096, unix.MS_ASYNC); err != nil {
			return fmt.Errorf("area after the failed batch: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPullAll pulls descriptors into a real stub in one batch, and checks
// that a batch with a bad one in the middle leaves none of them open.
func TestPullAll(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace of a stub)")
	}
	fdsOf := func(pid int) int {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	a, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	gone, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	gone.Close() // its Fd() is now -1: pidfd_getfd fails with EBADF
	err = withStub(func(s *stub) error {
		pl, err := resource.NewFdPuller(s.t, stubPidfd, 100, nil)
		if err != nil {
			return err
		}
		before := fdsOf(s.pid)
		got, err := pl.PullAll([]*os.File{a, a})
		if err != nil {
			return err
		}
		if len(got) != 2 || got[0] == got[1] || fdsOf(s.pid) != before+2 {
			return fmt.Errorf("pulled %v: %d descriptors, want two new ones beside %d", got, fdsOf(s.pid), before)
		}
		if err := pl.CloseAll(got); err != nil {
			return err
		}
		if _, err := pl.PullAll([]*os.File{a, gone, a}); !errors.Is(err, unix.EBADF) {
			return fmt.Errorf("pull of a closed file: got %v, want EBADF", err)
		}
		if n := fdsOf(s.pid); n != before {
			return fmt.Errorf("%d descriptors after a failed pull, want %d", n, before)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
