package e2e

import (
	"bufio"
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
// not in the image (`loop | reader`): restarted, it writes to the
// restart's standard output (a new reader), where its numbers go on from
// the last the old reader got, none lost or repeated; before, the pipe
// came back without a reader and the first write killed it (SIGPIPE).
func TestPipelineMember(t *testing.T) {
	r1, w1, err := os.Pipe()
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
		t.Fatal("the old pipe has a writer left after the checkpoint --kill")
	}
	before := old.lines

	r2, w2, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	rs := exec.Command(ckptBin, "restart", "--detach", img)
	rs.Stdout = w2
	var stderr strings.Builder
	rs.Stderr = &stderr
	err = rs.Run()
	w2.Close()
	if err != nil {
		t.Fatalf("restart: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "fd 1 of process "+strconv.Itoa(pid)+" (bash) was a pipe to processes outside the image; it is now this restart's standard output") {
		t.Errorf("restart does not say what became of fd 1:\n%s", stderr.String())
	}
	after := readLines(r2).waitFor(t, 5)
	all := append(append([]string(nil), before...), after...)
	for i, l := range all {
		if l != strconv.Itoa(i) {
			t.Fatalf("line %d is %q, want %d (old reader got %d lines, new one %d)", i, l, i, len(before), len(after))
		}
	}
	if !alive(pid) {
		t.Error("the restarted writer died")
	}
}
