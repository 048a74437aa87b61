package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// workload describes how to start one test program.
type workload struct {
	name string
	// argv returns the command line.
	argv func(t *testing.T) []string
	// signal: the workload verifies on SIGUSR2; otherwise it ends by itself.
	signal bool
	// settle is how long it runs after READY before the first checkpoint.
	settle time.Duration
	// sleep is "rel" or "abs" for the 3 s sleep workloads, whose timing the
	// harness checks: a relative sleep owes 3 s of running time, downtime
	// excluded; an absolute one ends 3 s after it started, downtime included.
	sleep string
	// verifier, if set, picks the process that gets SIGUSR2 (default: the
	// root).
	verifier func(t *testing.T, root int) int
	// container, if set, runs the workload as a container's init with
	// `ckpt run` and these flags, checkpointed with --container.
	container []string
	// user, if set, runs the workload and ckpt as that user (unpriv_test.go).
	user *syscall.Credential
	// restartFlags are extra flags of each restart; restored, a line of
	// the log must be restoredLine.
	restartFlags []string
	restoredLine string
}

// interp runs the workload test/workloads/script with the interpreter
// prog (its flags first), skipping the test where prog is missing.
func interp(prog, script string, flags ...string) func(t *testing.T) []string {
	return func(t *testing.T) []string {
		path, err := exec.LookPath(prog)
		if err != nil {
			t.Skip("no " + prog)
		}
		return append(append([]string{path}, flags...), filepath.Join(repoRoot, "test", "workloads", script))
	}
}

func cWorkload(name string, extra ...string) func(t *testing.T) []string {
	return func(t *testing.T) []string { return []string{compile(t, name, extra...)} }
}

func workloads() []workload {
	return []workload{
		{name: "busy", argv: cWorkload("busy"), signal: true, settle: 100 * time.Millisecond},
		{name: "busy-static", argv: cWorkload("busy", "-static"), signal: true, settle: 100 * time.Millisecond},
		{name: "files", argv: cWorkload("files"), signal: true, settle: 50 * time.Millisecond},
		{name: "fpu", argv: cWorkload("fpu"), signal: true, settle: 100 * time.Millisecond},
		{name: "signals", argv: cWorkload("signals"), signal: true, settle: 100 * time.Millisecond},
		{name: "posix-timers", argv: cWorkload("posixtimer"), signal: true, settle: 50 * time.Millisecond},
		{name: "sockets", argv: cWorkload("sockets"), signal: true, settle: 20 * time.Millisecond},
		{name: "inet-sockets", argv: cWorkload("inet"), signal: true, settle: 20 * time.Millisecond},
		{name: "unix-named-sockets", argv: cWorkload("unixnamed"), signal: true, settle: 20 * time.Millisecond},
		{name: "tcp", argv: cWorkload("tcp"), signal: true, settle: 20 * time.Millisecond},
		{name: "eintr", argv: cWorkload("eintr"), signal: true, settle: 20 * time.Millisecond},
		{name: "job-stopped", argv: cWorkload("jobstop"), signal: true, settle: 20 * time.Millisecond},
		{name: "seccomp", argv: cWorkload("seccomp"), signal: true, settle: 20 * time.Millisecond},
		{name: "deleted-files", argv: cWorkload("deleted"), signal: true, settle: 20 * time.Millisecond},
		{name: "deleted-cwd", argv: func(t *testing.T) []string {
			// Its working directory removed while it is in it, and
			// another directory removed while it holds it open.
			return []string{"python3", "-c", `import errno, os, signal, stat
os.mkdir("held", 0o751)
os.chmod("held", 0o751)
dfd = os.open("held", os.O_RDONLY | os.O_DIRECTORY)
wantd = os.path.abspath("held") + " (deleted)"
os.rmdir("held")
os.mkdir("gone")
os.chdir("gone")
want = os.getcwd() + " (deleted)"
os.rmdir("../gone")
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
print("READY", flush=True)
signal.sigwait({signal.SIGUSR2})
fails = []
if os.readlink("/proc/self/cwd") != want:
    fails.append("cwd is " + os.readlink("/proc/self/cwd") + ", want " + want)
if os.stat(".").st_nlink != 0:
    fails.append("cwd has links")
try:
    open("x", "w")
    fails.append("a file could be made in the deleted directory")
except OSError as e:
    if e.errno != errno.ENOENT:
        fails.append("making a file: " + str(e))
st = os.fstat(dfd)
if not stat.S_ISDIR(st.st_mode) or st.st_nlink != 0 or stat.S_IMODE(st.st_mode) != 0o751:
    fails.append("the held directory: mode %o, %d links" % (st.st_mode, st.st_nlink))
if os.readlink("/proc/self/fd/%d" % dfd) != wantd:
    fails.append("the held directory is " + os.readlink("/proc/self/fd/%d" % dfd))
if os.listdir(dfd) != []:
    fails.append("the held directory lists entries")
print("FAIL: " + "; ".join(fails) if fails else "PASS", flush=True)`}
		}, signal: true, settle: 20 * time.Millisecond},
		{name: "vdso", argv: cWorkload("vdso"), signal: true, settle: 50 * time.Millisecond, restoredLine: "vdso in place"},
		// As under another kernel: the program's vDSO functions run from a
		// proxy that jumps to this kernel's.
		{name: "vdso-proxy", argv: cWorkload("vdso"), signal: true, settle: 50 * time.Millisecond, restartFlags: []string{"--vdso-proxy"}, restoredLine: "vdso proxied"},
		{name: "go-vdso-proxy", argv: func(t *testing.T) []string { return []string{compileGo(t, "goprog")} }, signal: true, settle: 200 * time.Millisecond, restartFlags: []string{"--vdso-proxy"}},
		{name: "file-locks", argv: cWorkload("locks"), signal: true, settle: 20 * time.Millisecond},
		{name: "capabilities", argv: cWorkload("caps"), signal: true, settle: 50 * time.Millisecond},
		{name: "threads", argv: cWorkload("threads"), signal: true, settle: 100 * time.Millisecond},
		{name: "threads-trap-ignored", argv: cWorkload("threads", "-DIGNORE_TRAP"), signal: true, settle: 100 * time.Millisecond},
		{name: "stack", argv: cWorkload("stack"), signal: true, settle: 20 * time.Millisecond},
		{name: "advice", argv: cWorkload("advice"), signal: true, settle: 20 * time.Millisecond},
		{name: "prctl", argv: cWorkload("prctl"), signal: true, settle: 20 * time.Millisecond},
		{name: "sched", argv: cWorkload("sched"), signal: true, settle: 20 * time.Millisecond},
		{name: "evloop", argv: cWorkload("evloop"), signal: true, settle: 50 * time.Millisecond},
		{name: "clone-vm", argv: cWorkload("clonevm"), signal: true, settle: 20 * time.Millisecond},
		{name: "clone-files", argv: cWorkload("clonefiles"), signal: true, settle: 20 * time.Millisecond},
		{name: "no-new-privs", argv: func(t *testing.T) []string {
			return []string{"python3", filepath.Join(repoRoot, "test", "workloads", "nonewprivs.py")}
		}, signal: true, settle: 20 * time.Millisecond},
		{name: "dead-group-leader", argv: cWorkload("deadleader"), signal: true, settle: 20 * time.Millisecond},
		{name: "inotify", argv: cWorkload("inotify"), signal: true, settle: 20 * time.Millisecond},
		{name: "fifo", argv: cWorkload("fifo"), signal: true, settle: 20 * time.Millisecond},
		{name: "memfd-seals", argv: cWorkload("memfdseal"), signal: true, settle: 20 * time.Millisecond},
		{name: "shmem", argv: cWorkload("shmem"), signal: true, settle: 50 * time.Millisecond},
		{name: "tree", argv: cWorkload("tree"), signal: true, settle: 50 * time.Millisecond},
		{name: "tree-bigmem", argv: func(t *testing.T) []string { return []string{compile(t, "tree"), "big"} }, signal: true, settle: 50 * time.Millisecond},
		{name: "shell-pipeline", argv: func(t *testing.T) []string {
			return []string{"bash", "-c", "i=0; while :; do echo $i; i=$((i+1)); done | " + compile(t, "seqcheck")}
		}, signal: true, settle: 100 * time.Millisecond, verifier: childNamed("seqcheck")},
		{name: "go", argv: func(t *testing.T) []string { return []string{compileGo(t, "goprog")} }, signal: true, settle: 200 * time.Millisecond},
		{name: "sleep-rel", argv: func(t *testing.T) []string { return []string{compile(t, "sleep"), "rel"} }, settle: time.Second, sleep: "rel"},
		{name: "sleep-abs", argv: func(t *testing.T) []string { return []string{compile(t, "sleep"), "abs"} }, settle: time.Second, sleep: "abs"},
		{name: "uts-namespace", argv: func(t *testing.T) []string {
			// Not a container: a process with a UTS namespace of its own
			// gets a new one back, with its host name.
			return []string{"unshare", "--uts", "python3", "-c", `import signal, socket
socket.sethostname("subtree-uts")
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
print("READY", flush=True)
signal.sigwait({signal.SIGUSR2})  # pause() could miss a signal that came just before it
h = socket.gethostname()
print("PASS" if h == "subtree-uts" else "FAIL: host name " + h, flush=True)`}
		}, signal: true, settle: 20 * time.Millisecond},
		// POSIX semaphores and an arena file, both unlinked, mapped and
		// opened with O_NOFOLLOW (which broke their reopen until the
		// twelfth session), worker processes, pipes.
		{name: "python-multiprocessing", argv: interp("python3", "pool.py"), signal: true, settle: 50 * time.Millisecond},
		{name: "node", argv: interp("node", "server.js"), signal: true, settle: 50 * time.Millisecond},
		{name: "node-vdso-proxy", argv: interp("node", "server.js"), signal: true, settle: 50 * time.Millisecond, restartFlags: []string{"--vdso-proxy"}},
		{name: "java", argv: interp("java", "Counter.java", "-Xmx64m", "-XX:-UsePerfData"), signal: true, settle: 100 * time.Millisecond},
		{name: "python3", argv: interp("python3", "counter.py"), signal: true, settle: 100 * time.Millisecond},
	}
}

// childNamed finds the descendant of root whose name is comm.
func childNamed(comm string) func(t *testing.T, root int) int {
	return func(t *testing.T, root int) int {
		t.Helper()
		for _, pid := range treeOf(root) {
			if status(pid, "Name") == comm {
				return pid
			}
		}
		t.Fatalf("no process named %s under %d", comm, root)
		return 0
	}
}

// TestWorkloads runs every workload in the three harness modes:
// kill — checkpoint --kill, then restart from the image;
// running — checkpoint and leave it running: the original must carry on;
// twice — two kill+restart cycles in a row.
func TestWorkloads(t *testing.T) {
	for _, w := range workloads() {
		for _, mode := range []string{"kill", "running", "twice"} {
			t.Run(w.name+"/"+mode, func(t *testing.T) { runWorkload(t, w, mode) })
		}
	}
}

// TestAMX checks AMX tile registers and their permission (amx.c) on a CPU
// that has them.
func TestAMX(t *testing.T) {
	if info, _ := os.ReadFile("/proc/cpuinfo"); !strings.Contains(string(info), " amx_tile") {
		t.Skip("this CPU has no AMX")
	}
	w := workload{name: "amx", argv: cWorkload("amx"), signal: true, settle: 20 * time.Millisecond}
	for _, mode := range []string{"kill", "running", "twice"} {
		t.Run(mode, func(t *testing.T) { runWorkload(t, w, mode) })
	}
}

func runWorkload(t *testing.T, w workload, mode string) {
	argv := w.argv(t)
	var p *proc
	var how []string // extra checkpoint flags
	if w.container != nil {
		p = startContainer(t, w.container, argv...)
		how = []string{"--container"}
	} else {
		p = startWorkloadAs(t, w.user, argv...)
	}
	p.restartFlags = w.restartFlags
	ready := time.Now()
	started := ready
	time.Sleep(w.settle)
	img := filepath.Join(p.dir, "img")
	switch mode {
	case "running":
		if out, err := ckptAs(w.user, nil, append(append([]string{"checkpoint"}, how...), "-o", img, itoa(p.pid))...); err != nil {
			t.Fatalf("checkpoint: %v\n%s", err, out)
		}
		p.verifyExitOf(p.exit, w, 10*time.Second)
		if w.sleep != "" {
			if el := time.Since(started); el > 4*time.Second {
				t.Errorf("sleep took %v with a checkpoint in the middle, want about 3 s", el)
			}
		}
	case "kill", "twice":
		cycles := 1
		if mode == "twice" {
			cycles = 2
		}
		var r *restarted
		orig := p.pid           // the PID the workload keeps (inside, after an unprivileged restart)
		ran := time.Duration(0) // time the workload has run, for the sleep check
		for i := 0; i < cycles; i++ {
			ran += time.Since(started)
			if out, err := ckptAs(w.user, nil, append(append([]string{"checkpoint"}, how...), "--kill", "-o", img, itoa(p.pid))...); err != nil {
				t.Fatalf("checkpoint %d: %v\n%s\nlog:\n%s", i+1, err, out, p.logText())
			}
			if i == 0 {
				p.exit.wait(10 * time.Second) // the harness was its parent and reaps it
			}
			if alive(p.pid) {
				t.Fatalf("process %d still runs after checkpoint --kill", p.pid)
			}
			r = p.restart(img)
			started = time.Now()
			if w.user != nil {
				checkUserRestore(t, p.pid, orig, img)
			}
			if i+1 < cycles {
				time.Sleep(w.settle / 2)
			}
		}
		p.verifyExitOf(r.exit, w, 10*time.Second)
		if w.restoredLine != "" && !hasLine(p.logText(), w.restoredLine) {
			t.Errorf("restored, the workload does not say %q; log:\n%s", w.restoredLine, p.logText())
		}
		if w.sleep != "" {
			want := 3*time.Second - ran
			got := time.Since(started)
			if w.sleep == "abs" {
				want, got = 3*time.Second, time.Since(ready)
			}
			if got < want-300*time.Millisecond || got > want+700*time.Millisecond {
				t.Errorf("after the last restart it slept %v more, want about %v (3 s minus the %v it ran before)", got, want, ran)
			}
		}
	}
	if !strings.Contains(p.logText(), "PASS") {
		t.Fatalf("no PASS in log:\n%s", p.logText())
	}
}

// verifyExitOf asks the workload's verifier process to check itself and
// waits for the workload's end with PASS.
func (p *proc) verifyExitOf(e *exited, w workload, timeout time.Duration) {
	p.t.Helper()
	if w.verifier == nil {
		p.verifyExit(e, w.signal, timeout)
		return
	}
	v := w.verifier(p.t, p.pid)
	if err := syscall.Kill(v, syscall.SIGUSR2); err != nil {
		p.t.Fatalf("signal verifier %d: %v", v, err)
	}
	p.verifyExit(e, false, timeout)
}

// containerWorkloads run as the init of a container (`ckpt run`) and are
// checkpointed whole (--container).
func containerWorkloads() []workload {
	return []workload{
		{name: "container", argv: func(t *testing.T) []string {
			return []string{compile(t, "container"), "box", "100000"}
		}, signal: true, settle: 20 * time.Millisecond,
			container: []string{"--pid", "--uts", "--ipc", "--time", "--hostname", "box", "--time-offset", "100000s"}},
		{name: "container-net", argv: func(t *testing.T) []string {
			if _, err := exec.LookPath("ip"); err != nil {
				t.Skip("no ip (iproute2)")
			}
			// The kernel may lack the dummy driver; ifb is as simple.
			setup := `set -e
ip addr add 127.0.0.2/8 dev lo
ip link add dummy0 type dummy 2>/dev/null || ip link add dummy0 type ifb
ip link set dummy0 mtu 1400 up
ip addr add 10.1.2.3/24 dev dummy0
ip addr add fd00::1/64 dev dummy0 nodad
ip route add 10.9.0.0/16 via 10.1.2.1
exec "$0" "$(hostname)" 0 "ip -o addr; ip -o link; ip route; ip -6 route"`
			return []string{"sh", "-c", setup, compile(t, "container")}
		}, signal: true, settle: 20 * time.Millisecond, container: []string{"--pid", "--net"}},
		{name: "container-mounts", argv: func(t *testing.T) []string {
			// A tmpfs with files, a read-only bind mount and the
			// container's own /proc (ckpt run --mount --pid); the state
			// compared is the mount table (without ids) and the files.
			// The container's /proc shows a few processes (not a count:
			// the shell's pipeline may or may not be forked yet).
			setup := `set -e
mkdir -p m b
mount -t tmpfs -o size=4m,mode=755 tmpfs m
echo hello > m/f
mkdir m/d
echo deep > m/d/g
ln -s f m/l
chmod 640 m/f
mount --bind -o ro "$(dirname "$0")" b
exec "$0" "$(hostname)" 0 "awk '{print \$5, \$6, \$9, \$10}' /proc/self/mountinfo | sort; ls -lnR m; cat m/f m/d/g; if [ $(ls /proc | grep -c '^[0-9]') -lt 20 ]; then echo own /proc; else echo host /proc; fi; touch b/x 2>&1 | grep -c Read-only"`
			return []string{"sh", "-c", setup, compile(t, "container")}
		}, signal: true, settle: 20 * time.Millisecond, container: []string{"--pid", "--mount"}},
		{name: "tree", argv: cWorkload("tree"), signal: true, settle: 50 * time.Millisecond, container: []string{"--pid", "--mount", "--ipc", "--uts"}},
		// A timer notifies a thread by its TID, which the image keeps as
		// seen inside.
		{name: "posix-timers", argv: cWorkload("posixtimer"), signal: true, settle: 50 * time.Millisecond, container: []string{"--pid"}},
		// POSIX locks name their owner by its PID inside.
		{name: "file-locks", argv: cWorkload("locks"), signal: true, settle: 20 * time.Millisecond, container: []string{"--pid"}},
		// In a network namespace of its own: sock_diag is asked from there.
		{name: "sockets", argv: cWorkload("sockets"), signal: true, settle: 20 * time.Millisecond, container: []string{"--pid", "--net"}},
		// Ports of its own namespace, bound again there.
		{name: "inet-sockets", argv: cWorkload("inet"), signal: true, settle: 20 * time.Millisecond, container: []string{"--pid", "--net"}},
		// Abstract names belong to the network namespace.
		{name: "unix-named-sockets", argv: cWorkload("unixnamed"), signal: true, settle: 20 * time.Millisecond, container: []string{"--pid", "--net"}},
		{name: "tcp", argv: cWorkload("tcp"), signal: true, settle: 20 * time.Millisecond, container: []string{"--pid", "--net"}},
		{name: "ipcsem", argv: cWorkload("ipcsem"), signal: true, settle: 20 * time.Millisecond, container: []string{"--pid", "--ipc"}},
		{name: "ipcmsq", argv: cWorkload("ipcmsq"), signal: true, settle: 20 * time.Millisecond, container: []string{"--pid", "--ipc"}},
		{name: "ipcshm", argv: cWorkload("ipcshm"), signal: true, settle: 20 * time.Millisecond, container: []string{"--pid", "--ipc"}},
		// A mount namespace of its own: the deleted files' content waits
		// for the container's mounts before it has a place.
		{name: "deleted-files", argv: cWorkload("deleted"), signal: true, settle: 20 * time.Millisecond, container: []string{"--pid", "--mount"}},
		// A multi-threaded init: its last thread to die waits for the
		// rest of the namespace, ckpt's traced zombies included (a
		// checkpoint --kill hung on it until the twelfth session).
		{name: "threads", argv: cWorkload("threads"), signal: true, settle: 100 * time.Millisecond, container: []string{"--pid"}},
		{name: "node", argv: interp("node", "server.js"), signal: true, settle: 50 * time.Millisecond, container: []string{"--pid", "--net", "--mount"}},
		// Like a container runtime's: filters on the init itself.
		{name: "seccomp", argv: cWorkload("seccomp"), signal: true, settle: 20 * time.Millisecond, container: []string{"--pid"}},
	}
}

// TestContainers runs the container workloads in the three harness modes
// (in "running" mode the restarted copy is not needed: the original must
// simply carry on).
func TestContainers(t *testing.T) {
	for _, w := range containerWorkloads() {
		for _, mode := range []string{"kill", "running", "twice"} {
			t.Run(w.name+"/"+mode, func(t *testing.T) { runWorkload(t, w, mode) })
		}
	}
}
