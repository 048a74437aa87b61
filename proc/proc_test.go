package proc

import (
	"errors"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseSmaps(t *testing.T) {
	text := `55ccffb32000-55ccffb34000 r--p 00000000 fe:00 247766                     /usr/bin/my prog
Size:                  8 kB
Anonymous:             4 kB
VmFlags: rd mr mw me sd
7ffe9be4c000-7ffe9be6d000 rw-p 00000000 00:00 0                          [stack]
Anonymous:           132 kB
VmFlags: rd wr mr mw me gd ac
7f8590164000-7f8590167000 rw-p 00000000 00:00 0 
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
Rss:                   0 kB
VmFlags: rd ex
7f0000000000-7f0000001000 rw-p 00000000 00:00 0`
	vmas, err := ParseSmaps([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name  string
		start uint64
		gd    bool
		anon  uint64
	}{
		{"/usr/bin/my prog", 0x55ccffb32000, false, 4 << 10},
		{"[stack]", 0x7ffe9be4c000, true, 132 << 10},
		{"", 0x7f8590164000, false, 0},
		{"[vsyscall]", 0xffffffffff600000, false, 0},
		{"", 0x7f0000000000, false, 0}, // the last line, without a newline
	}
	if len(vmas) != len(want) {
		t.Fatalf("got %d vmas, want %d", len(vmas), len(want))
	}
	for i, w := range want {
		if vmas[i].Name != w.name || vmas[i].Start != w.start || vmas[i].HasFlag("gd") != w.gd || vmas[i].Anon != w.anon {
			t.Errorf("vma %d = %+v, want %+v", i, vmas[i], w)
		}
	}
}

func TestParseStat(t *testing.T) {
	line := "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 96 0 0 0 0 0 0 0 20 0 1 0 123 2240512 211 18446744073709551615 94 95 140 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 96 97 98 99 100 101 102 0\n"
	st, err := ParseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if st.Pid != 1234 || st.Comm != "a b) c)" || st.State != 'S' || st.Ppid != 1 || st.StartCode != 94 || st.StartBrk != 98 || st.EnvEnd != 102 || st.ExitSignal != 17 {
		t.Fatalf("got %+v", st)
	}
}

func TestInnerIDOfSelf(t *testing.T) {
	ids, err := NsIDs(os.Getpid(), "NSpid")
	if err != nil {
		t.Fatal(err)
	}
	// The tests run in the PID namespace of /proc's mount: one level.
	if len(ids) != 1 || int(ids[0]) != os.Getpid() {
		t.Fatalf("NSpid of self = %v, want [%d]", ids, os.Getpid())
	}
	if _, err := InnerID(os.Getpid(), "NSnone"); err == nil {
		t.Fatal("a missing key gave no error")
	}
}

func TestReadFile(t *testing.T) {
	for _, tc := range []struct {
		path    string
		missing bool
	}{
		{path: "/proc/self/limits"}, // one read
		{path: "/proc/self/smaps"},  // many reads, beyond the first buffer
		{path: "/proc/self/no-such-file", missing: true},
	} {
		got, err := ReadFile(tc.path)
		if tc.missing {
			if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), tc.path) {
				t.Errorf("%s: got %v, want a not-exist error naming the file", tc.path, err)
			}
			continue
		}
		want, werr := os.ReadFile(tc.path)
		if err != nil || werr != nil {
			t.Fatalf("%s: %v, %v", tc.path, err, werr)
		}
		// smaps changes as the test allocates; compare its first line and size.
		if first := func(b []byte) string { l, _, _ := strings.Cut(string(b), "\n"); return l }; first(got) != first(want) || len(got) < len(want)/2 {
			t.Errorf("%s: read %d bytes starting %q, os.ReadFile %d bytes starting %q", tc.path, len(got), first(got), len(want), first(want))
		}
	}
}

// TestGone checks both ways a vanished process shows: a missing /proc
// directory, and a read of a file opened before the process was reaped,
// which is how restart's PID check once failed on a process reaped at that
// moment.
func TestGone(t *testing.T) {
	c := exec.Command("sleep", "60")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(Path(c.Process.Pid, "stat"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c.Process.Kill()
	c.Wait()
	_, readErr := f.Read(make([]byte, 512))
	_, openErr := ReadFile(Path(c.Process.Pid, "stat"))
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"read after reap", readErr, true},
		{"open after reap", openErr, true},
		{"permission", &os.PathError{Op: "open", Path: "x", Err: unix.EACCES}, false},
		{"nil", nil, false},
	} {
		if got := Gone(tc.err); got != tc.want {
			t.Errorf("%s: Gone(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// TestStatFlags: this process is neither a kernel thread nor exiting;
// kthreadd (PID 2 outside a PID namespace) is a kernel thread.
func TestStatFlags(t *testing.T) {
	self, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if self.KernelThread() || self.Exiting() {
		t.Errorf("this process: kernel thread %v, exiting %v (flags %#x)", self.KernelThread(), self.Exiting(), self.Flags)
	}
	if kt, err := ReadStat(2); err == nil && kt.Comm == "kthreadd" && !kt.KernelThread() {
		t.Errorf("kthreadd not a kernel thread (flags %#x)", kt.Flags)
	}
}

func TestParseFdInfoLocks(t *testing.T) {
	head := "pos:\t0\nflags:\t0100002\nmnt_id:\t27\nino:\t9978377\n"
	tests := []struct {
		name  string
		lines string
		want  []FdLock
		bad   bool
	}{
		{"none", "", nil, false},
		{"posix", "lock:\t1: POSIX  ADVISORY  WRITE 21162 fe:00:9978377 10 29\nlock:\t2: POSIX  ADVISORY  READ 21162 fe:00:9978377 100 EOF\n",
			[]FdLock{{"POSIX", true, 10, 29}, {"POSIX", false, 100, -1}}, false},
		{"flock", "lock:\t1: FLOCK  ADVISORY  WRITE 21162 fe:00:9978376 0 EOF\n", []FdLock{{"FLOCK", true, 0, -1}}, false},
		{"ofd", "lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:9978378 0 4\n", []FdLock{{"OFDLCK", false, 0, 4}}, false},
		{"lease", "lock:\t1: LEASE  ACTIVE    READ 5 fe:00:1 0 EOF\n", []FdLock{{"LEASE", false, 0, -1}}, false},
		{"short", "lock:\t1: POSIX  ADVISORY  WRITE 21162\n", nil, true},
		{"end before start", "lock:\t1: POSIX  ADVISORY  WRITE 1 fe:00:1 10 9\n", nil, true},
		{"negative start", "lock:\t1: POSIX  ADVISORY  WRITE 1 fe:00:1 -1 EOF\n", nil, true},
		{"bad end", "lock:\t1: POSIX  ADVISORY  WRITE 1 fe:00:1 0 x\n", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fi, err := ParseFdInfo([]byte(head + tt.lines))
			if (err != nil) != tt.bad {
				t.Fatalf("error %v, want error %v", err, tt.bad)
			}
			if !tt.bad && !reflect.DeepEqual(fi.Locks, tt.want) {
				t.Errorf("locks %+v, want %+v", fi.Locks, tt.want)
			}
		})
	}
}
