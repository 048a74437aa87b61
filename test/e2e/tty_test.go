package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pty is a pseudo-terminal whose output the test collects.
type pty struct {
	master *os.File
	slave  *os.File
	mu     sync.Mutex
	out    bytes.Buffer
}

func openPty(t *testing.T) *pty {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := &pty{master: m, slave: s}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := m.Read(buf)
			p.mu.Lock()
			p.out.Write(buf[:n])
			p.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { s.Close(); m.Close() })
	return p
}

func (p *pty) text() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *pty) waitFor(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.text(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("terminal did not show %q within %v; it shows:\n%s", s, timeout, p.text())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sessionOn starts cmd as the leader of a new session whose controlling
// terminal is p.
func sessionOn(t *testing.T, p *pty, cmd *exec.Cmd) *exited {
	t.Helper()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = p.slave, p.slave, p.slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e := newExited(cmd.Wait)
	t.Cleanup(func() { cmd.Process.Kill(); e.wait(5 * time.Second) })
	return e
}

// TestTerminal checkpoints a foreground job of an interactive shell on one
// terminal and restarts it from another: its terminal descriptors move to
// the terminal ckpt restart runs in, and it is that terminal's foreground
// job (it can read what is typed there). In the three harness modes: kill
// and restart, leave running (it keeps its own terminal), and two cycles
// (terminal A, then B, then C).
func TestTerminal(t *testing.T) {
	for _, mode := range []string{"kill", "running", "twice"} {
		t.Run(mode, func(t *testing.T) { terminalMode(t, mode) })
	}
}

func terminalMode(t *testing.T, mode string) {
	a := openPty(t)
	shell := exec.Command(compile(t, "jobshell"), compile(t, "tty"))
	shell.Dir = t.TempDir()
	sessionOn(t, a, shell)
	a.waitFor(t, "READY", 10*time.Second)
	var pid int
	for deadline := time.Now().Add(5 * time.Second); pid == 0 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if kids := descendants(shell.Process.Pid); len(kids) > 0 && status(kids[0], "Name") == "tty" {
			pid = kids[0]
		}
	}
	if pid == 0 {
		t.Fatal("job did not start")
	}
	img := filepath.Join(t.TempDir(), "img")
	if mode == "running" {
		if out, err := ckpt(nil, "checkpoint", "-o", img, itoa(pid)); err != nil {
			t.Fatalf("checkpoint: %v\n%s", err, out)
		}
		a.master.Write([]byte("hello\n"))
		syscall.Kill(pid, syscall.SIGUSR2)
		a.waitFor(t, "PASS", 10*time.Second)
		return
	}
	cycles := 1
	if mode == "twice" {
		cycles = 2
	}
	var term *pty
	var done *exited
	for i := 0; i < cycles; i++ {
		if out, err := ckpt(nil, "checkpoint", "--kill", "-o", img, itoa(pid)); err != nil {
			t.Fatalf("checkpoint %d: %v\n%s", i+1, err, out)
		}
		if !waitPidGone(pid, 10*time.Second) {
			t.Fatalf("job %d still exists", pid)
		}
		term = openPty(t)
		restart := exec.Command(ckptBin, "restart", "-v", img)
		done = sessionOn(t, term, restart)
		term.waitFor(t, "ckpt: restored", 10*time.Second)
	}
	if _, err := term.master.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	term.waitFor(t, "PASS", 10*time.Second)
	if !done.wait(10 * time.Second) {
		t.Fatalf("ckpt restart did not end with the job; terminal:\n%s", term.text())
	}
	if done.err != nil {
		t.Fatalf("ckpt restart: %v; terminal:\n%s", done.err, term.text())
	}
}

// TestProgress: on a terminal, checkpoint and restart show their progress
// (forced to show at once; normally only after a second). Elsewhere they
// are silent, which every other test checks by reading one-line outputs.
func TestProgress(t *testing.T) {
	p := startWorkload(t, compile(t, "busy"))
	img := filepath.Join(p.dir, "img")
	term := openPty(t)
	cmd := exec.Command(ckptBin, "checkpoint", "--kill", "-o", img, itoa(p.pid))
	cmd.Env = append(os.Environ(), "CKPT_PROGRESS=now")
	cmd.Stderr = term.slave
	if out, err := cmd.Output(); err != nil {
		t.Fatalf("checkpoint: %v %s", err, out)
	}
	p.exit.wait(10 * time.Second)
	term.waitFor(t, "ckpt: checkpoint ", 5*time.Second)
	term.waitFor(t, "GB/s", 5*time.Second)

	term2 := openPty(t)
	r := exec.Command(ckptBin, "restart", "--detach", img)
	r.Env = append(os.Environ(), "CKPT_PROGRESS=now")
	r.Stderr = term2.slave
	if out, err := r.Output(); err != nil {
		t.Fatalf("restart: %v %s", err, out)
	}
	t.Cleanup(func() { syscall.Kill(p.pid, syscall.SIGKILL); waitPidGone(p.pid, 5*time.Second) })
	term2.waitFor(t, "ckpt: restart ", 5*time.Second)
	term2.waitFor(t, "%)", 5*time.Second) // a file image shows its share done
}
