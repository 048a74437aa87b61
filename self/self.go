// Package self lets a Go program checkpoint itself with the ckpt tool and
// carry on, like the self-checkpoint of the 2009 kernel patchset
// (checkpoint(0, fd, flags)).
//
// Checkpoint returns twice in the life of a program, like fork: once in
// the running program, with the id of the image it wrote, and once in
// every program restarted from that image (`ckpt restart IMAGE`), with
// Restarted set.
//
// In a nutshell, it works as follows. Checkpoint locks its goroutine to
// its OS thread and runs the ckpt binary as a child,
//
//	ckpt checkpoint --self-tid TID --self-fd 3 -o IMAGE PID
//
// with the write end of a pipe as descriptor 3, then blocks the thread in
// read(2) on the read end. ckpt freezes every thread of the program (and
// its children, but not ckpt), writes the image, lets the program run
// again and writes "ckpt-id ID" (or "ckpt-error MESSAGE") into the pipe,
// which the read returns. In the image the blocked read() has returned 0
// and the pipe has no writer, and ckpt is not in it: a restarted program
// reads end of file at once and finds no child to wait for (ECHILD). That
// pair is what Restarted means. The same protocol serves C programs
// through include/ckpt.h.
//
// The program must be one ckpt can checkpoint (see ckpt's
// docs/features.md) and ckpt must be allowed to ptrace it (root, or the
// same user; Checkpoint calls PR_SET_PTRACER for its child). A restarted
// program gets its original PID back, so an image can only be restarted
// once the program that wrote it has ended.
package self

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Result tells which of its two returns a Checkpoint call made.
type Result struct {
	// ID is the checkpoint id of the image (a positive number, also
	// shown by `ckpt inspect`) in the program that wrote it; 0 in a
	// restarted program.
	ID int64
	// Restarted is true in a program restarted from the image.
	Restarted bool
}

// Option configures a Checkpoint.
type Option func(*config)

type config struct {
	bin      string
	compress bool
}

// Binary names the ckpt binary to run. Without it Checkpoint runs $CKPT
// if set, else ckpt from $PATH.
func Binary(path string) Option { return func(c *config) { c.bin = path } }

// Compress writes a zstd-compressed image (`ckpt checkpoint --compress`).
func Compress() Option { return func(c *config) { c.compress = true } }

// one serialises Checkpoint calls: two ckpt children at once would each
// find the other in the tree they freeze. It is process-wide state by
// nature, since the process is what is checkpointed.
var one sync.Mutex

// Checkpoint writes an image of the calling process to path and returns
// its id; in a process restarted from that image, the same call returns
// with Restarted set. It blocks for as long as the checkpoint takes; other
// goroutines run until ckpt freezes the process, and on afterwards. On
// failure no image is left at path and the program simply carries on; the
// error holds ckpt's message.
//
// A program that reaps every child itself (SIGCHLD ignored, or waiting for
// any child as they end) would take a ckpt killed before it answered for a
// restart: Checkpoint tells the two apart by its child.
func Checkpoint(path string, opts ...Option) (Result, error) {
	cfg := config{bin: os.Getenv("CKPT")}
	for _, o := range opts {
		o(&cfg)
	}
	if path == "" {
		return Result{}, errors.New("self-checkpoint: no image path")
	}
	bin := cfg.bin
	if bin == "" {
		bin = "ckpt"
	}
	if !strings.Contains(bin, "/") {
		p, err := exec.LookPath(bin)
		if err != nil {
			return Result{}, fmt.Errorf("self-checkpoint: %w (set CKPT to the ckpt binary or put it on PATH)", err)
		}
		bin = p
	}
	one.Lock()
	defer one.Unlock()
	// ckpt finds the caller by its thread id, which must not change
	// while it waits.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return Result{}, fmt.Errorf("self-checkpoint: pipe: %w", err)
	}
	rd, wr := p[0], p[1]
	null, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(rd)
		unix.Close(wr)
		return Result{}, fmt.Errorf("self-checkpoint: %w", err)
	}
	// ckpt's warnings go to our stderr; a closed stderr gets /dev/null.
	stderr := uintptr(2)
	if _, err := unix.FcntlInt(2, unix.F_GETFD, 0); err != nil {
		stderr = uintptr(null)
	}
	args := []string{bin, "checkpoint", "--self-tid", strconv.Itoa(unix.Gettid()), "--self-fd", "3", "-o", path}
	if cfg.compress {
		args = append(args, "--compress")
	}
	args = append(args, strconv.Itoa(os.Getpid()))
	// syscall.ForkExec, not os/exec: os.Process holds a pidfd, which would
	// be in the image.
	pid, err := syscall.ForkExec(bin, args, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{uintptr(null), uintptr(null), stderr, uintptr(wr)},
	})
	// Only ckpt may hold the write end: a restarted program must read
	// end of file.
	unix.Close(wr)
	unix.Close(null)
	if err != nil {
		unix.Close(rd)
		return Result{}, fmt.Errorf("self-checkpoint: run %s: %w", bin, err)
	}
	unix.Prctl(unix.PR_SET_PTRACER, uintptr(pid), 0, 0, 0)

	// Here the thread blocks until ckpt answers; a restarted program
	// starts here, reading end of file.
	answer, rerr := readAll(rd)
	unix.Close(rd)
	var ws unix.WaitStatus
	_, werr := unix.Wait4(pid, &ws, 0, nil)
	for werr == unix.EINTR {
		_, werr = unix.Wait4(pid, &ws, 0, nil)
	}
	if rerr == nil && len(answer) == 0 && werr == unix.ECHILD {
		return Result{Restarted: true}, nil
	}
	return parseAnswer(path, answer, rerr, ws, werr)
}

// readAll reads the pipe to its end, up to 64 KiB.
func readAll(fd int) ([]byte, error) {
	var out []byte
	buf := make([]byte, 4096)
	for len(out) < 64<<10 {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return out, err
		}
		if n == 0 {
			break
		}
		out = append(out, buf[:n]...)
	}
	return out, nil
}

// parseAnswer turns ckpt's answer and exit into a result or an error.
func parseAnswer(path string, answer []byte, rerr error, ws unix.WaitStatus, werr error) (Result, error) {
	line, _, _ := bytes.Cut(answer, []byte("\n"))
	if s, ok := strings.CutPrefix(string(line), "ckpt-id "); ok {
		if id, err := strconv.ParseInt(s, 10, 64); err == nil && id > 0 {
			return Result{ID: id}, nil
		}
	}
	if msg, ok := strings.CutPrefix(string(line), "ckpt-error "); ok {
		return Result{}, fmt.Errorf("self-checkpoint to %s: %s", path, msg)
	}
	switch {
	case rerr != nil:
		return Result{}, fmt.Errorf("self-checkpoint to %s: read ckpt's answer: %w", path, rerr)
	case werr != nil:
		return Result{}, fmt.Errorf("self-checkpoint to %s: wait for ckpt: %w", path, werr)
	case ws.Signaled():
		return Result{}, fmt.Errorf("self-checkpoint to %s: ckpt was killed by %v", path, ws.Signal())
	default:
		return Result{}, fmt.Errorf("self-checkpoint to %s: ckpt exited with status %d (its message is on stderr)", path, ws.ExitStatus())
	}
}
