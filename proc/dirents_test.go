package proc

import (
	"os"
	"slices"
	"strconv"
	"testing"
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
