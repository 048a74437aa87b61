package e2e

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lineReader collects the lines read from a pipe.
type lineReader struct {
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

func readLines(r *os.File) *lineReader {
	lr := &lineReader{done: make(chan struct{})}
	go func() {
		defer close(lr.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lr.mu.Lock()
			lr.lines = append(lr.lines, sc.Text())
			lr.mu.Unlock()
		}
	}()
	return lr
}

func (lr *lineReader) waitFor(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		lr.mu.Lock()
		got := append([]string(nil), lr.lines...)
		lr.mu.Unlock()
		if len(got) >= n {
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("fewer than %d lines within 10 s", n)
	return nil
}

// TestPipelineMember checkpoints the writer of a pipeline whose reader is
// not in the image (`loop | reader`), and a writer whose standard output
// is a unix socket a process outside holds (a service's output to
// journald). Restarted (not detached), it writes to the restart's
// standard output (a new reader), where its numbers go on from the last
// the old reader got, none lost or repeated; before, the pipe came back
// without a reader and the first write killed it (SIGPIPE), and the
// socket was refused. A detached restart gives it nothing of its own (its
// caller, here one that collects the restart's output, would wait for
// the process's end) and says so.
func TestPipelineMember(t *testing.T) {
	for _, tc := range []struct {
		name, what, alone string
		channel           func() (r, w *os.File, err error)
	}{
		{"pipe", "was a pipe to processes outside the image", "it comes back without them, and its next write fails (SIGPIPE)", os.Pipe},
		{"socket", "was a socket connected to a process outside the image", "it comes back with its other end closed", func() (r, w *os.File, err error) {
			fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
			if err != nil {
				return nil, nil, err
			}
			return os.NewFile(uintptr(fds[0]), "outside"), os.NewFile(uintptr(fds[1]), "inside"), nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { pipelineMember(t, tc.what, tc.alone, tc.channel) })
	}
}

func pipelineMember(t *testing.T, what, alone string, channel func() (r, w *os.File, err error)) {
	r1, w1, err := channel()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-c", "i=0; while :; do echo $i; i=$((i+1)); sleep 0.01; done")
	cmd.Stdout = w1
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w1.Close()
	pid := cmd.Process.Pid
	t.Cleanup(func() { killTree(pid); cmd.Wait() })
	old := readLines(r1)
	old.waitFor(t, 5)

	img := filepath.Join(t.TempDir(), "img")
	if out, err := ckpt(nil, "checkpoint", "--kill", "-o", img, strconv.Itoa(pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	cmd.Wait()
	select {
	case <-old.done: // every writer gone: the old reader has all there was
	case <-time.After(5 * time.Second):
		t.Fatal("the old channel has a writer left after the checkpoint --kill")
	}
	before := old.lines

	// Detached, with the restart's output collected: it returns, and the
	// process runs on with a channel of its own.
	out, err := exec.Command(ckptBin, "restart", "--detach", img).CombinedOutput()
	if err != nil {
		t.Fatalf("restart --detach: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "fd 1 of process "+strconv.Itoa(pid)+" (bash) "+what+"; "+alone) {
		t.Errorf("restart --detach does not say what became of fd 1:\n%s", out)
	}
	killTree(pid)
	waitPidGone(pid, 5*time.Second)

	r2, w2, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	rs := exec.Command(ckptBin, "restart", img)
	rs.Stdout = w2
	stderr, err := rs.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Start(); err != nil {
		t.Fatal(err)
	}
	w2.Close()
	t.Cleanup(func() { killTree(pid); rs.Wait() })
	after := readLines(r2).waitFor(t, 5)
	killTree(pid)
	msg, _ := io.ReadAll(stderr)
	rs.Wait()
	if !strings.Contains(string(msg), "fd 1 of process "+strconv.Itoa(pid)+" (bash) "+what+"; it is now this restart's standard output") {
		t.Errorf("restart does not say what became of fd 1:\n%s", msg)
	}
	all := append(append([]string(nil), before...), after...)
	for i, l := range all {
		if l != strconv.Itoa(i) {
			t.Fatalf("line %d is %q, want %d (old reader got %d lines, new one %d)", i, l, i, len(before), len(after))
		}
	}
}
