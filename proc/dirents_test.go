package proc

import (
	"errors"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestEachFdLink: every descriptor of this process, with the same link
// text as os.Readlink gives, a pipe and a file among them.
func TestEachFdLink(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	f, err := os.CreateTemp(t.TempDir(), "link")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := map[int]string{}
	if err := EachFdLink(os.Getpid(), func(fd int, link []byte) { got[fd] = string(link) }); err != nil {
		t.Fatal(err)
	}
	for _, fd := range []int{int(r.Fd()), int(w.Fd()), int(f.Fd())} {
		want, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
		if err != nil {
			t.Fatal(err)
		}
		if got[fd] != want {
			t.Errorf("fd %d: link %q, want %q", fd, got[fd], want)
		}
	}
	if got[int(f.Fd())] != f.Name() {
		t.Errorf("file fd: %q, want %q", got[int(f.Fd())], f.Name())
	}
	if err := EachFdLink(1<<30, func(int, []byte) {}); err == nil {
		t.Error("descriptors of a process that does not exist: no error")
	}
}

func TestEachPid(t *testing.T) {
	seen := map[int]bool{}
	if err := EachPid(func(pid int) { seen[pid] = true }); err != nil {
		t.Fatal(err)
	}
	if !seen[os.Getpid()] || !seen[1] {
		t.Errorf("listed %d processes, without this one (%d) or init", len(seen), os.Getpid())
	}
}

func TestAtoi(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		ok   bool
	}{{"0\x00", 0, true}, {"4242\x00", 4242, true}, {"self\x00", 0, false}, {"1a\x00", 0, false}, {"\x00", 0, false}, {"1234567890123\x00", 0, false}} {
		n, ok := atoi([]byte(tc.name))
		if n != tc.n || ok != tc.ok {
			t.Errorf("atoi(%q) = %d, %v; want %d, %v", tc.name, n, ok, tc.n, tc.ok)
		}
	}
}

// TestFds: this process's descriptors, in order, the pipe's and the
// listed directory's own among them.
func TestFds(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	dir, err := os.Open("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	fds, err := Fds(int(dir.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.IsSorted(fds) {
		t.Errorf("descriptors %v not in order", fds)
	}
	for _, fd := range []int{0, int(r.Fd()), int(w.Fd()), int(dir.Fd())} {
		if !slices.Contains(fds, fd) {
			t.Errorf("descriptor %d missing from %v", fd, fds)
		}
	}
}

// TestFdAccess runs this test binary again as nobody, which may not
// resolve the descriptors of this (root) process but may its own: the
// probe, and the walks that start with it, must refuse the first and
// allow the second.
func TestFdAccess(t *testing.T) {
	if os.Getenv("CKPT_TEST_FDACCESS") != "" {
		parent := os.Getppid()
		if err := FdAccess(parent); !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EPERM) {
			t.Fatalf("FdAccess(root's %d) as nobody = %v, want EACCES or EPERM", parent, err)
		}
		if err := EachFdLink(parent, func(int, []byte) { t.Error("a link of a refusing process") }); !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EPERM) {
			t.Errorf("EachFdLink(root's %d) as nobody = %v, want EACCES or EPERM", parent, err)
		}
		if err := FdAccess(os.Getpid()); err != nil {
			t.Errorf("FdAccess(own pid) = %v", err)
		}
		return
	}
	if os.Getuid() != 0 {
		t.Skip("needs root to run a copy as nobody")
	}
	if err := FdAccess(os.Getpid()); err != nil {
		t.Fatalf("FdAccess(own pid) = %v", err)
	}
	// A copy that nobody may run: the build directory is root's alone.
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "ckpt-fdaccess")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	exe := dir + "/proc.test"
	if err := os.WriteFile(exe, self, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := exec.Command(exe, "-test.run=^TestFdAccess$", "-test.v")
	c.Env = append(os.Environ(), "CKPT_TEST_FDACCESS=1")
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := c.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("as nobody: %v\n%s", err, out)
	}
}
