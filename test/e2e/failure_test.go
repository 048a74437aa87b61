package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mapsOf returns /proc/PID/maps, to prove a failed checkpoint left no
// mapping behind.
func mapsOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + itoa(pid) + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// assertUntouched checks that a process runs, untraced, with the memory
// layout it had before.
func assertUntouched(t *testing.T, p *proc, maps string) {
	t.Helper()
	// A tracer that died is detached by the kernel; give it a moment.
	deadline := time.Now().Add(3 * time.Second)
	for status(p.pid, "TracerPid") != "0" && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if tp := status(p.pid, "TracerPid"); tp != "0" {
		t.Fatalf("process %d still traced by %s", p.pid, tp)
	}
	if st := status(p.pid, "State"); !strings.HasPrefix(st, "R") && !strings.HasPrefix(st, "S") {
		t.Fatalf("process %d is in state %q after the failed checkpoint", p.pid, st)
	}
	if got := mapsOf(t, p.pid); got != maps {
		t.Fatalf("memory map of %d changed:\nbefore:\n%s\nafter:\n%s", p.pid, maps, got)
	}
}

// TestCheckpointFailureLeavesTargetRunning makes checkpoints fail at each
// stage — with an error, and with ckpt killed by SIGKILL — and checks that
// the target then runs on exactly as before and still passes its own checks.
func TestCheckpointFailureLeavesTargetRunning(t *testing.T) {
	faults := []string{"seized", "injected", "pages", "tail", "seized:kill", "pages:kill", "tail:kill"}
	// signals is injected through a code page without int3 stops (it
	// ignores SIGTRAP), threads through one with them, busy and tree the
	// plain way.
	// tcp's connections are in repair mode from their reading to the kill;
	// if ckpt is killed, its guard process ends repair mode.
	for _, wl := range []string{"signals", "threads", "busy", "tree", "tcp"} {
		for _, fault := range faults {
			if wl == "threads" && strings.HasSuffix(fault, ":kill") {
				// Known gap (docs/features.md): ckpt killed while the
				// threads are bound to its CPU leaves them bound, and
				// threads checks its CPU affinity.
				continue
			}
			t.Run(wl+"/"+fault, func(t *testing.T) {
				p := startWorkload(t, compile(t, wl))
				time.Sleep(50 * time.Millisecond)
				maps := mapsOf(t, p.pid)
				img := filepath.Join(p.dir, "img")
				out, err := ckpt([]string{"CKPT_FAULT=" + fault}, "checkpoint", "--kill", "-o", img, itoa(p.pid))
				if err == nil {
					t.Fatalf("checkpoint with fault %s succeeded:\n%s", fault, out)
				}
				if !strings.HasSuffix(fault, ":kill") && !strings.Contains(out, "injected failure") {
					t.Errorf("error does not name the failure: %s", out)
				}
				if _, err := os.Stat(img); err == nil && !strings.HasSuffix(fault, ":kill") {
					t.Errorf("failed checkpoint left an image file")
				}
				if strings.HasSuffix(fault, ":kill") {
					// The guard ends repair mode once ckpt is gone; the
					// processes may run before it does (see tcp.go).
					waitGuardsGone(t)
				}
				assertUntouched(t, p, maps)
				for _, pid := range descendants(p.pid) {
					if tp := status(pid, "TracerPid"); tp != "0" && tp != "" {
						t.Fatalf("process %d of the tree still traced by %s", pid, tp)
					}
				}
				p.verifyExit(p.exit, true, 10*time.Second)
			})
		}
	}
}

// waitGuardsGone waits until no repair-mode guard (ckpt __repair-guard)
// runs, 5 s at most.
func waitGuardsGone(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		found := false
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && strings.Contains(string(b), "__repair-guard") {
				found = true
				break
			}
		}
		if !found {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a repair-mode guard still runs 5 s after ckpt died")
		}
	}
}

// descendants lists pid's descendants.
func descendants(pid int) []int {
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", queue[0], queue[0]))
		queue = queue[1:]
		for _, f := range strings.Fields(string(b)) {
			var n int
			fmt.Sscan(f, &n)
			out = append(out, n)
			queue = append(queue, n)
		}
	}
	return out
}

// TestRestartFailureLeavesNothing makes restarts of a process tree fail at
// each stage and checks that no process is left with any of the image's
// PIDs, and that a clean restart from the same image then works.
func TestRestartFailureLeavesNothing(t *testing.T) {
	p := startWorkload(t, compile(t, "tree"))
	time.Sleep(50 * time.Millisecond)
	tree := append([]int{p.pid}, descendants(p.pid)...)
	img := filepath.Join(p.dir, "img")
	if out, err := ckpt(nil, "checkpoint", "--kill", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	for _, fault := range []string{"stub", "mapped", "pages", "final", "pages:kill", "final:kill"} {
		out, err := ckpt([]string{"CKPT_FAULT=" + fault}, "restart", img)
		if err == nil {
			t.Fatalf("restart with fault %s succeeded:\n%s", fault, out)
		}
		if !strings.HasSuffix(fault, ":kill") && !strings.Contains(out, "injected failure") {
			t.Errorf("fault %s: error does not name the failure: %s", fault, out)
		}
		// Stubs die with ckpt (PTRACE_O_EXITKILL); an orphaned zombie may
		// wait for init to reap it.
		for _, pid := range tree {
			if !waitPidGone(pid, 5*time.Second) {
				t.Fatalf("fault %s: pid %d still exists after the failed restart (state %s)", fault, pid, status(pid, "State"))
			}
		}
	}
	r := p.restart(img)
	p.verifyExit(r.exit, true, 10*time.Second)
}

// TestRestartLockTaken takes, between checkpoint and restart, a lock the
// checkpointed process held: the restart must fail naming the file and
// what to do, leave nothing behind, and work once the lock is free.
func TestRestartLockTaken(t *testing.T) {
	p := startWorkload(t, compile(t, "locks"))
	time.Sleep(20 * time.Millisecond)
	img := filepath.Join(p.dir, "img")
	if out, err := ckpt(nil, "checkpoint", "--kill", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	for _, tc := range []struct {
		name, file, want string
		take             func(fd int) error
	}{
		{"flock", "flock-sh", "take back the flock read lock on", func(fd int) error { return syscall.Flock(fd, syscall.LOCK_EX) }},
		{"posix", "posix", "take back the POSIX write lock on bytes 10-29 on", func(fd int) error {
			return syscall.FcntlFlock(uintptr(fd), syscall.F_SETLK, &syscall.Flock_t{Type: syscall.F_WRLCK, Start: 15, Len: 1})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.OpenFile(filepath.Join(p.dir, tc.file), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.take(int(f.Fd())); err != nil {
				t.Fatal(err)
			}
			out, err := ckpt(nil, "restart", img)
			f.Close() // and the lock with it
			if err == nil {
				t.Fatalf("restart succeeded while the lock was taken:\n%s", out)
			}
			if !strings.Contains(out, tc.want) || !strings.Contains(out, "another process holds a conflicting lock") {
				t.Errorf("error does not name the lock and what to do:\n%s", out)
			}
			if !waitPidGone(p.pid, 5*time.Second) {
				t.Fatalf("pid %d still exists after the failed restart", p.pid)
			}
		})
	}
	r := p.restart(img)
	p.verifyExit(r.exit, true, 10*time.Second)
}

// TestRefusesUnsupported checks that processes ckpt cannot handle yet are
// refused before anything is touched, with the object named.
func TestRefusesUnsupported(t *testing.T) {
	tests := []struct {
		name string
		cmd  func() *exec.Cmd
		want string
	}{
		{"clone-fs", func() *exec.Cmd { return exec.Command(compile(t, "clonefs")) }, "share one cwd, root and umask (CLONE_FS)"},
		{"user-namespace", func() *exec.Cmd { return exec.Command("unshare", "--user", "sleep", "100") }, "is in a user namespace of its own"},
		{"pid-namespace-for-children", func() *exec.Cmd { return exec.Command("unshare", "--pid", "--fork", "sleep", "100") }, "has unshared a pid namespace for its children"},
		{"capabilities-per-thread", func() *exec.Cmd {
			return exec.Command("python3", "-c", "import ctypes,threading,time\nlibc=ctypes.CDLL(None)\nev=threading.Event()\ndef drop():\n    libc.prctl(24, 13, 0, 0, 0)\n    ev.set()\n    time.sleep(100)\nthreading.Thread(target=drop, daemon=True).start()\nev.wait()\nprint('READY', flush=True)\ntime.sleep(100)")
		}, "has capabilities of its own"},
		{"pty-master", func() *exec.Cmd {
			return exec.Command("python3", "-c", "import os,time\nm, s = os.openpty()\nprint('READY', flush=True)\ntime.sleep(100)")
		}, "is a pseudo-terminal master (/dev/ptmx)"},
		{"file-lease", func() *exec.Cmd {
			f := filepath.Join(t.TempDir(), "leased")
			if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			return exec.Command("python3", "-c", "import fcntl,sys,time\nf=open(sys.argv[1])\nfcntl.fcntl(f, fcntl.F_SETLEASE, fcntl.F_RDLCK)\nprint('READY', flush=True)\ntime.sleep(100)", f)
		}, "holds a file lease (F_SETLEASE)"},
		{"netlink-socket", func() *exec.Cmd {
			return exec.Command("python3", "-c", "import socket,time\ns=socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)\nprint('READY', flush=True)\ntime.sleep(100)")
		}, "is a netlink socket"},
		{"tcp-connection-closing", func() *exec.Cmd {
			return exec.Command("python3", "-c", "import socket,time\nl=socket.create_server(('127.0.0.1',0))\nc=socket.create_connection(l.getsockname())\na=l.accept()\nc.close()\ntime.sleep(0.1)\nprint('READY', flush=True)\ntime.sleep(100)")
		}, "in state CLOSE_WAIT"},
		{"tcp-accept-queue", func() *exec.Cmd {
			return exec.Command("python3", "-c", "import socket,time\nl=socket.create_server(('127.0.0.1',0))\nc=socket.create_connection(l.getsockname())\nprint('READY', flush=True)\ntime.sleep(100)")
		}, "has 1 connections waiting to be accepted"},
		{"unix-connection-not-accepted", func() *exec.Cmd {
			return connectToTestListener(t, false)
		}, "is connected to a listener that has not accepted the connection yet"},
		{"unix-connection-accepted-outside", func() *exec.Cmd {
			return connectToTestListener(t, true)
		}, "which a process outside the checkpoint holds"},
		{"unix-socket-in-flight", func() *exec.Cmd {
			return exec.Command("python3", "-c", "import socket,time\na,b=socket.socketpair()\nsocket.send_fds(a,[b'x'],[0])\nprint('READY', flush=True)\ntime.sleep(100)")
		}, "descriptors in flight"},
		{"unix-socket-peer-outside", func() *exec.Cmd {
			fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			ours, theirs := os.NewFile(uintptr(fds[0]), "ours"), os.NewFile(uintptr(fds[1]), "theirs")
			t.Cleanup(func() { ours.Close() })
			c := exec.Command("python3", "-c", "import time\nprint('READY', flush=True)\ntime.sleep(100)")
			c.ExtraFiles = []*os.File{theirs} // fd 3; the test keeps the other end
			return c
		}, "which a process outside the checkpoint holds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cmd()
			c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			stdout, err := c.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			e := newExited(c.Wait)
			t.Cleanup(func() { syscall.Kill(-c.Process.Pid, syscall.SIGKILL); e.wait(5 * time.Second) })
			if c.Args[0] == "python3" {
				// Wait until it has set up what must be refused (python
				// can take a while to start on a loaded machine).
				ready := make(chan bool, 1)
				go func() {
					line, _ := bufio.NewReader(stdout).ReadString('\n')
					ready <- strings.TrimSpace(line) == "READY"
				}()
				select {
				case ok := <-ready:
					if !ok {
						t.Fatalf("%s did not say READY", tt.name)
					}
				case <-time.After(20 * time.Second):
					t.Fatalf("%s did not say READY within 20 s", tt.name)
				}
			} else {
				time.Sleep(300 * time.Millisecond)
			}
			maps := mapsOf(t, c.Process.Pid)
			img := filepath.Join(t.TempDir(), "img")
			out, err := ckpt(nil, "checkpoint", "--kill", "-o", img, itoa(c.Process.Pid))
			if err == nil {
				t.Fatalf("checkpoint succeeded, want refusal")
			}
			if !strings.Contains(out, tt.want) || strings.Count(strings.TrimSpace(out), "\n") != 0 {
				t.Fatalf("error %q, want one line containing %q", out, tt.want)
			}
			if _, err := os.Stat(img); err == nil {
				t.Errorf("refused checkpoint left an image")
			}
			assertUntouched(t, &proc{t: t, pid: c.Process.Pid}, maps)
		})
	}
}

// connectToTestListener listens on an abstract unix name in the test's
// process and returns a command whose process connects to it; accept says
// whether the test accepts the connection.
func connectToTestListener(t *testing.T, accept bool) *exec.Cmd {
	name := "ckpt-e2e-outside-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatBool(accept)
	l, err := net.Listen("unix", "@"+name)
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 1)
	t.Cleanup(func() {
		l.Close()
		select {
		case c := <-conns:
			c.Close()
		default:
		}
	})
	if accept {
		go func() {
			if c, err := l.Accept(); err == nil {
				conns <- c
			}
		}()
	}
	return exec.Command("python3", "-c", "import socket,time\nc=socket.socket(socket.AF_UNIX)\nc.connect('\\0"+name+"')\ntime.sleep(0.2)\nprint('READY', flush=True)\ntime.sleep(100)")
}

// TestDamagedImages feeds truncated, corrupted and foreign images to
// restart and inspect: one-line errors, no process left.
func TestDamagedImages(t *testing.T) {
	p := startWorkload(t, compile(t, "busy"))
	img := filepath.Join(p.dir, "img")
	if out, err := ckpt(nil, "checkpoint", "--kill", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	good, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(off int) []byte {
		b := append([]byte(nil), good...)
		b[off] ^= 0x55
		return b
	}
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "not a ckpt image"},
		{"foreign", []byte("\x7fELF\x02\x01\x01 this is not an image at all"), "not a ckpt image"},
		{"truncated-header", good[:100], "truncated"},
		{"truncated-pages", good[:len(good)/2], "truncated"},
		{"truncated-tail", good[:len(good)-8], "truncated"},
		{"corrupt-metadata", flip(200), "damaged"},
		{"corrupt-page", flip(len(good) - 5000), "damaged"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bad := filepath.Join(t.TempDir(), "bad")
			if err := os.WriteFile(bad, c.data, 0o600); err != nil {
				t.Fatal(err)
			}
			for _, cmd := range [][]string{{"restart", bad}, {"inspect", bad}} {
				out, err := ckpt(nil, cmd...)
				if err == nil {
					t.Fatalf("%s accepted a %s image", cmd[0], c.name)
				}
				if cmd[0] == "inspect" {
					// inspect prints what it could read before the error.
					lines := strings.Split(strings.TrimSpace(out), "\n")
					out = lines[len(lines)-1]
				}
				if !strings.Contains(out, c.want) || strings.Count(strings.TrimSpace(out), "\n") != 0 || strings.Contains(out, "panic") {
					t.Fatalf("%s: error %q, want one line containing %q", cmd[0], out, c.want)
				}
			}
			if !waitPidGone(p.pid, 5*time.Second) {
				t.Fatalf("pid %d exists after restarting a %s image", p.pid, c.name)
			}
		})
	}
}

// TestPipeline is the README's migration pipeline: checkpoint to stdout
// through gzip, then restart from stdin.
func TestPipeline(t *testing.T) {
	if _, err := exec.LookPath("gzip"); err != nil {
		t.Skip("no gzip")
	}
	p := startWorkload(t, compile(t, "busy"))
	gz := filepath.Join(p.dir, "img.gz")
	out, err := exec.Command("sh", "-c", ckptBin+" checkpoint --kill "+itoa(p.pid)+" | gzip -1 > "+gz).CombinedOutput()
	if err != nil {
		t.Fatalf("checkpoint | gzip: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	r := &restarted{cmd: exec.Command("sh", "-c", "zcat "+gz+" | "+ckptBin+" restart")}
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.exit = newExited(r.cmd.Wait)
	t.Cleanup(func() { syscall.Kill(p.pid, syscall.SIGKILL); r.exit.wait(5 * time.Second) })
	deadline := time.Now().Add(10 * time.Second)
	for !(alive(p.pid) && status(p.pid, "TracerPid") == "0") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	p.verifyExit(r.exit, true, 10*time.Second)
}

// TestPidTaken restarts an image while its process still runs: the error
// names the PID and its holder.
func TestPidTaken(t *testing.T) {
	p := startWorkload(t, compile(t, "busy"))
	img := filepath.Join(p.dir, "img")
	if out, err := ckpt(nil, "checkpoint", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	out, err := ckpt(nil, "restart", img)
	if err == nil {
		t.Fatal("restart over a running process succeeded")
	}
	want := "pid " + itoa(p.pid) + " is taken by \"busy\""
	if !strings.Contains(out, want) {
		t.Fatalf("error %q, want it to contain %q", out, want)
	}
	p.verifyExit(p.exit, true, 10*time.Second)
}

// TestPidIsGroup restarts an image whose PID has no process left but is
// still the session and process group of a process that left the tree
// (a daemon): the error names that process, and once it is gone the
// restart works.
func TestPidIsGroup(t *testing.T) {
	p := startWorkload(t, "sh", "-c", "(sleep 100 &); exec "+compile(t, "busy"))
	var daemon int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && status(pid, "NSsid") == itoa(p.pid) && status(pid, "Name") == "sleep" {
			daemon = pid
		}
	}
	if daemon == 0 {
		t.Fatal("no sleep left in the workload's session")
	}
	t.Cleanup(func() { syscall.Kill(daemon, syscall.SIGKILL) })
	img := filepath.Join(p.dir, "img")
	if out, err := ckpt(nil, "checkpoint", "--kill", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	out, err := ckpt(nil, "restart", "--detach", img)
	want := "pid " + itoa(p.pid) + " is still the process group or session of " + itoa(daemon) + " (sleep)"
	if err == nil || !strings.Contains(out, want) {
		t.Fatalf("restart: %v %q, want an error containing %q", err, out, want)
	}
	syscall.Kill(daemon, syscall.SIGKILL)
	waitPidGone(daemon, 10*time.Second)
	if out, err := ckpt(nil, "restart", "--detach", img); err != nil {
		t.Fatalf("restart once the group is gone: %v\n%s", err, out)
	}
	t.Cleanup(func() { syscall.Kill(p.pid, syscall.SIGKILL); waitPidGone(p.pid, 10*time.Second) })
}

// TestInspect checks the text and JSON views of an image and its mode.
func TestInspect(t *testing.T) {
	p := startWorkload(t, compile(t, "busy"))
	img := filepath.Join(p.dir, "img")
	if out, err := ckpt(nil, "checkpoint", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	text, err := ckpt(nil, "inspect", img)
	if err != nil {
		t.Fatalf("inspect: %v\n%s", err, text)
	}
	for _, want := range []string{"process " + itoa(p.pid) + " (busy)", "[heap]", "[vdso]", "[noreserve]", "rip ", "xstate ", "complete:"} {
		if !strings.Contains(text, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, text)
		}
	}
	js, err := ckpt(nil, "inspect", "--json", img)
	if err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, js)
	}
	for _, want := range []string{`"type":"header"`, `"type":"process"`, `"type":"pages"`, `"type":"tail"`} {
		if !strings.Contains(js, want) {
			t.Errorf("inspect --json lacks %s", want)
		}
	}
	if img, err := os.Stat(img); err != nil || img.Mode().Perm() != 0o600 {
		t.Errorf("image mode %v, want 0600", img.Mode())
	}
	p.verifyExit(p.exit, true, 10*time.Second)
}

// TestRestartIsParent checks `ckpt restart` without --detach: it forwards
// signals to the restored process and dies of the signal that killed it.
func TestRestartIsParent(t *testing.T) {
	p := startWorkload(t, compile(t, "busy"))
	img := filepath.Join(p.dir, "img")
	if out, err := ckpt(nil, "checkpoint", "--kill", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	r := p.restart(img)
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !r.exit.wait(10 * time.Second) {
		t.Fatal("ckpt restart did not exit after SIGTERM")
	}
	ws := r.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("ckpt restart ended with %v, want death by SIGTERM", r.cmd.ProcessState)
	}
	if !waitPidGone(p.pid, 5*time.Second) {
		t.Fatalf("restored process %d survived the forwarded SIGTERM", p.pid)
	}
}

// TestCredentials checkpoints a process of another user and checks that it
// comes back with its own uids, gids and groups, not ckpt's.
func TestCredentials(t *testing.T) {
	bin := compile(t, "busy")
	dir := t.TempDir()
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin)
	cmd.Dir, cmd.Stdout, cmd.Stderr = "/", logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: &syscall.Credential{Uid: 65534, Gid: 65533, Groups: []uint32{65532}}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, pid: cmd.Process.Pid, dir: dir, log: logf.Name(), cmd: cmd, exit: newExited(cmd.Wait)}
	t.Cleanup(p.cleanup)
	p.waitLog("READY", 20*time.Second)
	before := []string{status(p.pid, "Uid"), status(p.pid, "Gid"), status(p.pid, "Groups")}
	img := filepath.Join(dir, "img")
	if out, err := ckpt(nil, "checkpoint", "--kill", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	r := p.restart(img)
	after := []string{status(p.pid, "Uid"), status(p.pid, "Gid"), status(p.pid, "Groups")}
	if strings.Join(before, "|") != strings.Join(after, "|") {
		t.Fatalf("credentials %q after restart, want %q", after, before)
	}
	p.verifyExit(r.exit, true, 10*time.Second)
}

// TestCheck runs `ckpt check` on this machine, which has every required
// feature.
func TestCheck(t *testing.T) {
	out, err := ckpt(nil, "check")
	if err != nil {
		t.Fatalf("check: %v\n%s", err, out)
	}
	for _, want := range []string{"ok       ptrace", "ok       POSIX timer IDs", "ok       TCP repair mode", "ok       vDSO functions"} {
		if !strings.Contains(out, want) {
			t.Fatalf("check output lacks %q:\n%s", want, out)
		}
	}
}

// TestBrokenPipe: the reader of the image goes away mid-stream; the
// checkpoint fails and the target runs on untouched.
func TestBrokenPipe(t *testing.T) {
	p := startWorkload(t, compile(t, "busy"))
	maps := mapsOf(t, p.pid)
	out, err := exec.Command("bash", "-c", "set -o pipefail; "+ckptBin+" checkpoint --kill "+itoa(p.pid)+" | head -c 100000 >/dev/null").CombinedOutput()
	if err == nil {
		t.Fatalf("checkpoint into a closed pipe succeeded: %s", out)
	}
	if !strings.Contains(string(out), "broken pipe") {
		t.Errorf("error does not say the pipe broke: %s", out)
	}
	assertUntouched(t, p, maps)
	p.verifyExit(p.exit, true, 10*time.Second)
}

// TestTreePidsTaken restarts a tree while it still runs: the error names
// every PID that is taken, and nothing is created.
func TestTreePidsTaken(t *testing.T) {
	p := startWorkload(t, compile(t, "tree"))
	img := filepath.Join(p.dir, "img")
	if out, err := ckpt(nil, "checkpoint", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	out, err := ckpt(nil, "restart", img)
	if err == nil {
		t.Fatal("restart over a running tree succeeded")
	}
	for _, pid := range append([]int{p.pid}, descendants(p.pid)...) {
		if status(pid, "State") == "Z (zombie)" {
			continue
		}
		if want := "pid " + itoa(pid) + " is taken by"; !strings.Contains(out, want) {
			t.Errorf("error does not name pid %d: %s", pid, out)
		}
	}
	p.verifyExit(p.exit, true, 10*time.Second)
}

// TestRestartInterrupted sends SIGTERM to ckpt restart while it is
// restoring a tree: ckpt ends and leaves none of the tree behind.
func TestRestartInterrupted(t *testing.T) {
	p := startWorkload(t, compile(t, "tree"))
	tree := append([]int{p.pid}, descendants(p.pid)...)
	img := filepath.Join(p.dir, "img")
	if out, err := ckpt(nil, "checkpoint", "--kill", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	cmd, out, e := startHung(t, "pages", "restart", img)
	for deadline := time.Now().Add(10 * time.Second); !alive(p.pid) || status(p.pid, "TracerPid") == "0"; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("restore did not start")
		}
	}
	time.Sleep(100 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGTERM)
	if !e.wait(10 * time.Second) {
		t.Fatal("ckpt restart ignored SIGTERM")
	}
	if !strings.Contains(out.String(), "restart interrupted by terminated") {
		t.Errorf("no word about the interruption: %q", out.String())
	}
	for _, pid := range tree {
		if !waitPidGone(pid, 5*time.Second) {
			t.Fatalf("pid %d survived the interrupted restart (state %s)", pid, status(pid, "State"))
		}
	}
}

// startHung starts ckpt with args, made to hang at fault point (package
// fault) until it is signalled, and returns it, its output so far and its
// end.
func startHung(t *testing.T, point string, args ...string) (*exec.Cmd, *strings.Builder, *exited) {
	t.Helper()
	cmd := exec.Command(ckptBin, args...)
	cmd.Env = append(os.Environ(), "CKPT_FAULT="+point+":hang")
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e := newExited(cmd.Wait)
	t.Cleanup(func() { cmd.Process.Kill(); e.wait(5 * time.Second) })
	return cmd, out, e
}

// TestCheckpointInterrupted sends SIGTERM to a checkpoint held at each of
// its stages (the freeze, the injected calls, the pages, the tail) and
// checks that ckpt says so and exits 143, that no image file is left, and
// that the process runs on exactly as before: a ckpt that just died in the
// middle of the injected calls left threads with all signals blocked and
// the registers of an injected call.
func TestCheckpointInterrupted(t *testing.T) {
	for _, wl := range []string{"threads", "busy"} {
		for _, point := range []string{"seized", "injected", "pages", "tail"} {
			t.Run(wl+"/"+point, func(t *testing.T) {
				p := startWorkload(t, compile(t, wl))
				time.Sleep(50 * time.Millisecond)
				maps := mapsOf(t, p.pid)
				img := filepath.Join(p.dir, "img")
				cmd, out, e := startHung(t, point, "checkpoint", "--kill", "-o", img, itoa(p.pid))
				for deadline := time.Now().Add(10 * time.Second); status(p.pid, "TracerPid") == "0"; time.Sleep(2 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatal("checkpoint did not start")
					}
				}
				time.Sleep(200 * time.Millisecond) // to the point it hangs at
				cmd.Process.Signal(syscall.SIGTERM)
				if !e.wait(10 * time.Second) {
					t.Fatal("ckpt checkpoint ignored SIGTERM")
				}
				if code := cmd.ProcessState.ExitCode(); code != 128+int(syscall.SIGTERM) {
					t.Errorf("exit code %d, want %d", code, 128+int(syscall.SIGTERM))
				}
				if !strings.Contains(out.String(), "interrupted by terminated; the process runs on as before") {
					t.Errorf("no word about the interruption: %q", out.String())
				}
				if _, err := os.Stat(img); err == nil {
					t.Errorf("interrupted checkpoint left an image file")
				}
				assertUntouched(t, p, maps)
				p.verifyExit(p.exit, true, 10*time.Second)
			})
		}
	}
}

// TestDaemon checkpoints a daemon whose session leader is gone (fork,
// setsid, fork, exit) and restarts it in a re-created session of the same
// id.
func TestDaemon(t *testing.T) {
	launcher := startWorkload(t, compile(t, "daemon"))
	launcher.exit.wait(10 * time.Second)
	b, err := os.ReadFile(filepath.Join(launcher.dir, "daemon.pid"))
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	fmt.Sscan(string(b), &pid)
	p := &proc{t: t, pid: pid, dir: launcher.dir, log: launcher.log, exit: newExited(func() error { return nil })}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	img := filepath.Join(p.dir, "img")
	if out, err := ckpt(nil, "checkpoint", "--kill", "-o", img, itoa(pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	r := p.restart(img)
	p.verifyExit(r.exit, true, 10*time.Second)
}

// TestZeroPagesNotStored: anonymous pages that hold only zeros are not in
// the image, and come back as zeros.
func TestZeroPagesNotStored(t *testing.T) {
	p := startWorkload(t, compile(t, "zeros"))
	img := filepath.Join(p.dir, "img")
	if out, err := ckpt(nil, "checkpoint", "--kill", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	// 64 MiB of zeros and 1 MiB of data: the image holds the data, the
	// program and libc's own pages, and metadata.
	if st.Size() > 4<<20 {
		t.Errorf("image is %d bytes: the 64 MiB of zero pages were stored", st.Size())
	}
	// ckpt allocated the file's space ahead for the 65 MiB of anonymous
	// memory it expected (image.Preallocate), and must give back what the
	// image did not use.
	if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used > 8<<20 {
		t.Errorf("image is %d bytes but holds %d bytes of disk space: the space allocated ahead was not given back", st.Size(), used)
	}
	r := p.restart(img)
	p.verifyExit(r.exit, true, 20*time.Second)
}

// TestCompressed: --compress writes a zstd image that inspect and restart
// read as they are.
func TestCompressed(t *testing.T) {
	p := startWorkload(t, compile(t, "busy"))
	img := filepath.Join(p.dir, "img.zst")
	if out, err := ckpt(nil, "checkpoint", "--compress", "--kill", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint --compress: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 4 || string(b[:4]) != "\x28\xb5\x2f\xfd" {
		t.Fatalf("image does not start with the zstd magic")
	}
	if out, err := ckpt(nil, "inspect", img); err != nil || !strings.Contains(out, "complete:") {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	r := p.restart(img)
	p.verifyExit(r.exit, true, 10*time.Second)
}

// TestTracedRefused: a process another tracer (a debugger, strace) holds
// is refused, naming the tracer, and runs on untouched.
func TestTracedRefused(t *testing.T) {
	p := startWorkload(t, compile(t, "busy"))
	// The tracer: a Python process that seizes the workload (PTRACE_SEIZE)
	// and waits.
	tracer := exec.Command("python3", "-c", "import ctypes,sys,time\nlibc=ctypes.CDLL(None, use_errno=True)\nif libc.ptrace(0x4206, int(sys.argv[1]), 0, 0) != 0: sys.exit(ctypes.get_errno())\nprint('SEIZED', flush=True)\ntime.sleep(100)", itoa(p.pid))
	out, err := tracer.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := tracer.Start(); err != nil {
		t.Skip("no python3:", err)
	}
	defer func() { tracer.Process.Kill(); tracer.Wait() }()
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "SEIZED\n" {
		t.Fatalf("the tracer could not seize %d", p.pid)
	}
	msg, err := ckpt(nil, "checkpoint", "-o", filepath.Join(p.dir, "img"), itoa(p.pid))
	if err == nil || !strings.Contains(msg, "is traced by process "+itoa(tracer.Process.Pid)+" (python3), a debugger or strace") {
		t.Fatalf("checkpoint of a traced process: %v\n%s", err, msg)
	}
	tracer.Process.Kill()
	tracer.Wait()
	p.verifyExit(p.exit, true, 10*time.Second)
}
