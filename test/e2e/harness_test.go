// Package e2e checkpoints and restarts real processes with the ckpt binary,
// in the spirit of CRIU's zdtm: each workload (test/workloads) sets up some
// state, says READY, is checkpointed and restarted by the harness, then
// verifies its own state on SIGUSR2 and says PASS or FAIL.
//
// The tests need root (ptrace of any process, clone3 with set_tid). They
// leave nothing behind: every process they start is reaped.
package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	ckptBin  string
	buildDir string
	repoRoot string
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("e2e: skipped, needs root")
		os.Exit(0)
	}
	// Descriptors inherited from whoever ran the tests must not leak into
	// workloads (ckpt would rightly refuse an unknown pipe).
	unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	_, file, _, _ := runtime.Caller(0)
	repoRoot = filepath.Join(filepath.Dir(file), "..", "..")
	var err error
	buildDir, err = os.MkdirTemp("", "ckpt-e2e-")
	if err != nil {
		panic(err)
	}
	os.Chmod(buildDir, 0o755) // workloads also run as other users
	ckptBin = filepath.Join(buildDir, "ckpt")
	build := exec.Command("go", "build", "-o", ckptBin, filepath.Join(repoRoot, "cmd", "ckpt"))
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // as `make build`
	out, err := build.CombinedOutput()
	if err != nil {
		fmt.Printf("build ckpt: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(buildDir)
	os.Exit(code)
}

var compiled sync.Map // source name -> binary path or error

// compile builds test/workloads/NAME.c with the system gcc, once per run.
// Line 1 of the source ("// build: FLAGS") gives extra flags, with paths
// relative to the repository.
func compile(t *testing.T, name string, extra ...string) string {
	t.Helper()
	key := name + strings.Join(extra, " ")
	if v, ok := compiled.Load(key); ok {
		if err, bad := v.(error); bad {
			t.Fatal(err)
		}
		return v.(string)
	}
	src := filepath.Join(repoRoot, "test", "workloads", name+".c")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	flags := strings.Fields(strings.TrimPrefix(first, "// build:"))
	out := filepath.Join(buildDir, name+strings.ReplaceAll(strings.Join(extra, ""), "-", "_"))
	args := append([]string{"-O2", "-Wall", "-o", out, src}, flags...)
	args = append(args, extra...)
	gcc := exec.Command("gcc", args...)
	gcc.Dir = repoRoot // build flags name repository paths (-I include)
	if msg, err := gcc.CombinedOutput(); err != nil {
		err = fmt.Errorf("gcc %v: %v\n%s", args, err, msg)
		compiled.Store(key, err)
		t.Fatal(err)
	}
	compiled.Store(key, out)
	return out
}

// compileGo builds the Go workload test/workloads/NAME, once per run.
func compileGo(t *testing.T, name string) string {
	t.Helper()
	key := "go:" + name
	if v, ok := compiled.Load(key); ok {
		if err, bad := v.(error); bad {
			t.Fatal(err)
		}
		return v.(string)
	}
	out := filepath.Join(buildDir, name)
	cmd := exec.Command("go", "build", "-o", out, "./test/workloads/"+name)
	cmd.Dir = repoRoot
	if msg, err := cmd.CombinedOutput(); err != nil {
		err = fmt.Errorf("go build %s: %v\n%s", name, err, msg)
		compiled.Store(key, err)
		t.Fatal(err)
	}
	compiled.Store(key, out)
	return out
}

// proc is a workload process started by the harness.
type proc struct {
	t   *testing.T
	pid int
	dir string
	log string
	cmd *exec.Cmd
	// exit reports the original process's end (the harness is its parent).
	exit *exited
	// cred, if set, is the user the workload and every ckpt command of it
	// run as (unprivileged checkpoint/restart).
	cred *syscall.Credential
	// restartFlags are extra flags of every `ckpt restart` of it.
	restartFlags []string
}

// exited is closed-channel completion with the result, so that any number
// of waiters (test body and cleanups) can wait for one exit.
type exited struct {
	done chan struct{}
	err  error
}

func newExited(wait func() error) *exited {
	e := &exited{done: make(chan struct{})}
	go func() { e.err = wait(); close(e.done) }()
	return e
}

// wait waits up to timeout and reports whether the process ended.
func (e *exited) wait(timeout time.Duration) bool {
	select {
	case <-e.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// startWorkload starts argv in a fresh directory and its own session, with
// stdout and stderr to a log, and waits for READY.
func startWorkload(t *testing.T, argv ...string) *proc {
	t.Helper()
	return startWorkloadAs(t, nil, argv...)
}

// startWorkloadAs is startWorkload as the user cred (nil: root), in a
// directory that user owns.
func startWorkloadAs(t *testing.T, cred *syscall.Credential, argv ...string) *proc {
	t.Helper()
	p := startWith(t, &syscall.SysProcAttr{Credential: cred}, argv...)
	p.waitLog("READY", 20*time.Second)
	return p
}

// startWith starts argv like startWorkload, with process attributes
// (credentials, clone flags), without waiting for READY; the workload
// always gets a session of its own.
func startWith(t *testing.T, attr *syscall.SysProcAttr, argv ...string) *proc {
	t.Helper()
	cred := attr.Credential
	dir := t.TempDir()
	if cred != nil {
		os.Chmod(filepath.Dir(dir), 0o755)
		os.Chown(dir, int(cred.Uid), int(cred.Gid))
	}
	logPath := filepath.Join(dir, "log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	if cred != nil {
		logf.Chown(int(cred.Uid), int(cred.Gid)) // restart reopens it as that user
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	attr.Setsid = true
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, pid: cmd.Process.Pid, dir: dir, log: logPath, cmd: cmd, exit: newExited(cmd.Wait), cred: cred}
	t.Cleanup(p.cleanup)
	return p
}

// startContainer starts argv as the init of a container made by `ckpt run`
// with the given flags, like startWorkload; the proc's PID is the init's
// PID outside the container, and its exit is that of `ckpt run`.
func startContainer(t *testing.T, flags []string, argv ...string) *proc {
	t.Helper()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	pidFile := filepath.Join(dir, "pid")
	args := append(append([]string{"run", "--pid-file", pidFile}, flags...), "--")
	cmd := exec.Command(ckptBin, append(args, argv...)...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, dir: dir, log: logPath, cmd: cmd, exit: newExited(cmd.Wait)}
	t.Cleanup(p.cleanup)
	deadline := time.Now().Add(10 * time.Second)
	for p.pid == 0 && time.Now().Before(deadline) {
		if b, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(b), "\n") {
			p.pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		time.Sleep(5 * time.Millisecond)
	}
	if p.pid == 0 {
		t.Fatalf("ckpt run wrote no PID; log:\n%s", p.logText())
	}
	p.waitLog("READY", 20*time.Second)
	return p
}

// cleanup kills whatever still runs under the workload's PID and reaps it.
func (p *proc) cleanup() {
	if p.pid == 0 {
		p.cmd.Process.Kill()
	}
	killTree(p.pid)
	p.exit.wait(5 * time.Second)
	waitPidGone(p.pid, 5*time.Second)
}

func (p *proc) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

func (p *proc) waitLog(word string, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if hasLine(p.logText(), word) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.t.Fatalf("workload %d did not print %s within %v; log:\n%s", p.pid, word, timeout, p.logText())
}

func hasLine(text, word string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == word {
			return true
		}
	}
	return false
}

// ckpt runs the ckpt binary and returns its combined output and error.
func ckpt(env []string, args ...string) (string, error) {
	return ckptAs(nil, env, args...)
}

// ckptAs is ckpt run as the user cred (nil: root).
func ckptAs(cred *syscall.Credential, env []string, args ...string) (string, error) {
	cmd := exec.Command(ckptBin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// restarted is a `ckpt restart` run (not detached): the parent of the
// restored process, which exits with its status.
type restarted struct {
	// pid is the restored root's PID as the test sees it.
	pid    int
	cmd    *exec.Cmd
	exit   *exited
	stderr bytes.Buffer
}

// restart starts `ckpt restart -v IMG` and waits until the process runs.
func (p *proc) restart(img string, env ...string) *restarted {
	p.t.Helper()
	r := &restarted{cmd: exec.Command(ckptBin, append(append([]string{"restart", "-v"}, p.restartFlags...), img)...)}
	r.cmd.Env = append(os.Environ(), env...)
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: p.cred}
	stderr, err := r.cmd.StderrPipe()
	if err != nil {
		p.t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	ready := make(chan bool, 1)
	r.exit = newExited(func() error {
		sc := bufio.NewScanner(stderr)
		ok := false
		for sc.Scan() {
			r.stderr.WriteString(sc.Text() + "\n")
			if rest, found := strings.CutPrefix(sc.Text(), "ckpt: restored "); found && !ok {
				ok = true
				// A container comes back with another PID outside.
				if f := strings.Fields(rest); len(f) > 0 {
					if pid, err := strconv.Atoi(f[0]); err == nil {
						r.pid = pid
					}
				}
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
		return r.cmd.Wait()
	})
	if !<-ready {
		r.exit.wait(10 * time.Second)
		p.t.Fatalf("restart of %d failed: %v\n%s\nworkload log:\n%s", p.pid, r.exit.err, r.stderr.String(), p.logText())
	}
	if r.pid != 0 {
		p.pid = r.pid
	}
	p.t.Cleanup(func() {
		killTree(p.pid)
		r.exit.wait(10 * time.Second)
	})
	return r
}

// waitPidGone waits until no process (not even a zombie) has pid.
func waitPidGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); os.IsNotExist(err) {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

// statFields reads a /proc stat file (of a process or a thread) and
// returns its fields after the name, which may hold spaces: state, ppid,
// pgrp, session... nil if it cannot be read.
func statFields(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i > 0 {
		return strings.Fields(s[i+1:])
	}
	return nil
}

// alive reports whether pid runs (exists and is not a zombie).
func alive(pid int) bool {
	f := statFields(fmt.Sprintf("/proc/%d/stat", pid))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// status returns a field of /proc/PID/status.
func status(pid int, key string) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// verifyExit sends SIGUSR2 (when signal is true) and waits for the process
// to end with PASS, through whichever channel reports its exit.
func (p *proc) verifyExit(e *exited, signal bool, timeout time.Duration) {
	p.t.Helper()
	if signal {
		if err := syscall.Kill(p.pid, syscall.SIGUSR2); err != nil {
			p.t.Fatalf("signal workload %d: %v\nlog:\n%s", p.pid, err, p.logText())
		}
	}
	if !e.wait(timeout) {
		p.t.Fatalf("workload %d did not finish within %v\nlog:\n%s\nthreads:\n%s", p.pid, timeout, p.logText(), taskStates(p.pid))
	}
	if e.err != nil || !hasLine(p.logText(), "PASS") {
		p.t.Fatalf("workload %d: exit %v\nlog:\n%s", p.pid, e.err, p.logText())
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// treeOf lists pid and its descendants, parents first.
func treeOf(pid int) []int {
	pids := []int{pid}
	for i := 0; i < len(pids); i++ {
		kids, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pids[i]))
		for _, k := range kids {
			b, _ := os.ReadFile(k)
			for _, f := range strings.Fields(string(b)) {
				if n, err := strconv.Atoi(f); err == nil {
					pids = append(pids, n)
				}
			}
		}
	}
	return pids
}

// killTree kills pid, its descendants and the rest of the session it
// leads: a workload's children outlive a root killed alone, and a daemon's
// grandchild has left the tree. A failed test leaves nothing running.
func killTree(pid int) {
	if pid <= 0 {
		return // (session 0 holds everything whose leader is out of sight)
	}
	for pass := 0; pass < 2; pass++ { // what forked during the first
		pids := treeOf(pid)
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			n, err := strconv.Atoi(e.Name())
			if err != nil || n == pid {
				continue
			}
			if f := statFields("/proc/" + e.Name() + "/stat"); len(f) > 3 && f[3] == strconv.Itoa(pid) {
				pids = append(pids, n) // of the session
			}
		}
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
}

// taskStates describes every thread of pid and its descendants, for
// failure reports.
func taskStates(pid int) string {
	var b strings.Builder
	var tasks []string
	for _, p := range treeOf(pid) {
		ts, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", p))
		tasks = append(tasks, ts...)
	}
	for _, t := range tasks {
		st, _ := os.ReadFile(t + "/status")
		sc, _ := os.ReadFile(t + "/syscall")
		for _, l := range strings.Split(string(st), "\n") {
			for _, k := range []string{"Name:", "State:", "TracerPid:", "SigPnd:", "ShdPnd:", "SigBlk:"} {
				if strings.HasPrefix(l, k) {
					b.WriteString(strings.Join(strings.Fields(l), " ") + "  ")
				}
			}
		}
		b.WriteString("syscall " + strings.TrimSpace(string(sc)) + "\n")
	}
	return b.String()
}
