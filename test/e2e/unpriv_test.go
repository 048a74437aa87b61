package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nobody is the unprivileged user the tests run workloads and ckpt as.
var nobody = &syscall.Credential{Uid: 65534, Gid: 65534}

// TestUnprivileged checkpoints and restarts workloads as user nobody in
// the three harness modes: ckpt restores them in a user and PID namespace
// of their own, with their original PIDs inside; the second cycle
// checkpoints such a restored tree (its PIDs inside) and restores it again.
func TestUnprivileged(t *testing.T) {
	for _, w := range []workload{
		{name: "busy", argv: cWorkload("busy"), signal: true, settle: 100 * time.Millisecond},
		{name: "files", argv: cWorkload("files"), signal: true, settle: 50 * time.Millisecond},
		{name: "file-locks", argv: cWorkload("locks"), signal: true, settle: 20 * time.Millisecond},
		{name: "tree", argv: cWorkload("tree"), signal: true, settle: 50 * time.Millisecond},
		// pidfd_getfd and sock_diag as the sockets' owner; no SO_*BUFFORCE.
		{name: "sockets", argv: cWorkload("sockets"), signal: true, settle: 20 * time.Millisecond},
		{name: "inet-sockets", argv: cWorkload("inet"), signal: true, settle: 20 * time.Millisecond},
	} {
		w.user = nobody
		for _, mode := range []string{"kill", "running", "twice"} {
			t.Run(w.name+"/"+mode, func(t *testing.T) { runWorkload(t, w, mode) })
		}
	}
}

// checkUserRestore checks an unprivileged restart: pid (as the test sees
// it) is orig inside its PID namespace, runs as nobody without
// capabilities, and the image is private to its owner.
func checkUserRestore(t *testing.T, pid, orig int, img string) {
	t.Helper()
	ns := strings.Fields(status(pid, "NSpid"))
	if len(ns) != 2 || ns[1] != strconv.Itoa(orig) {
		t.Errorf("restored process %d has NSpid %v, want %d inside a new PID namespace", pid, ns, orig)
	}
	if u := strings.Fields(status(pid, "Uid")); len(u) != 4 || u[0] != "65534" || u[1] != "65534" {
		t.Errorf("restored process %d has uids %v, want nobody", pid, u)
	}
	for _, k := range []string{"CapEff", "CapPrm", "CapAmb", "CapInh"} {
		if v := status(pid, k); strings.Trim(v, "0") != "" {
			t.Errorf("restored process %d has %s %s, want none", pid, k, v)
		}
	}
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o600 || st.Uid != nobody.Uid {
		t.Errorf("image %s has mode %v owner %d, want 0600 owned by nobody", img, fi.Mode().Perm(), st.Uid)
	}
}

// TestUnprivilegedExitStatus: the exit status of a process restored as
// nobody reaches ckpt restart through the namespace's init.
func TestUnprivilegedExitStatus(t *testing.T) {
	p := startWorkloadAs(t, nobody, "sh", "-c", "echo READY; sleep 0.5; exit 7")
	img := filepath.Join(p.dir, "img")
	if out, err := ckptAs(nobody, nil, "checkpoint", "--kill", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	r := p.restart(img)
	if !r.exit.wait(10 * time.Second) {
		t.Fatalf("restored shell did not end\n%s", r.stderr.String())
	}
	var ee *exec.ExitError
	if e, ok := r.exit.err.(*exec.ExitError); ok {
		ee = e
	}
	if ee == nil || ee.ExitCode() != 7 {
		t.Fatalf("ckpt restart ended with %v, want exit status 7\n%s", r.exit.err, r.stderr.String())
	}
}

// TestUnprivilegedForeignCreds: an image of root's process restarted as
// nobody is refused before anything is created.
func TestUnprivilegedForeignCreds(t *testing.T) {
	p := startWorkload(t, compile(t, "busy"))
	img := filepath.Join(p.dir, "img")
	if out, err := ckpt(nil, "checkpoint", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	os.Chmod(filepath.Dir(p.dir), 0o755)
	os.Chmod(p.dir, 0o755)
	os.Chown(img, int(nobody.Uid), int(nobody.Gid)) // readable by nobody
	cmd := exec.Command(ckptBin, "restart", img)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("restart as nobody of root's process succeeded:\n%s", out)
	}
	if want := "only root can restore another user's processes"; !strings.Contains(string(out), want) || !strings.Contains(string(out), "process "+itoa(p.pid)) || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Fatalf("restart as nobody: want a one-line refusal naming process %d and %q, got:\n%s", p.pid, want, out)
	}
	if cmd.ProcessState.Pid() > 0 {
		if b, _ := os.ReadFile("/proc/" + itoa(cmd.ProcessState.Pid()) + "/task/" + itoa(cmd.ProcessState.Pid()) + "/children"); len(b) > 0 {
			t.Errorf("refused restart left children: %s", b)
		}
	}
	p.verifyExit(p.exit, true, 10*time.Second)
}

// TestUnprivilegedShmem: shared memory cannot be read without root
// (map_files); the checkpoint says so and writes nothing.
func TestUnprivilegedShmem(t *testing.T) {
	p := startWorkloadAs(t, nobody, compile(t, "shmem"))
	img := filepath.Join(p.dir, "img")
	out, err := ckptAs(nobody, nil, "checkpoint", "-o", img, itoa(p.pid))
	if err == nil || !strings.Contains(out, "needs root or CAP_CHECKPOINT_RESTORE") {
		t.Fatalf("checkpoint of shared memory as nobody: want a refusal naming the privilege, got %v:\n%s", err, out)
	}
	if _, err := os.Stat(img); err == nil {
		t.Errorf("refused checkpoint left an image")
	}
	p.verifyExit(p.exit, true, 10*time.Second)
}

// TestUnprivilegedSchedRefused: a process that root gave a nice value its
// user may not set (-5) is restarted as that user with ckpt's, and one
// warning per process says so; the restart itself goes through.
func TestUnprivilegedSchedRefused(t *testing.T) {
	p := startWorkloadAs(t, nobody, "sh", "-c", "echo READY; sleep 1; exit 7")
	if err := syscall.Setpriority(syscall.PRIO_PROCESS, p.pid, -5); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(p.dir, "img")
	if out, err := ckptAs(nobody, nil, "checkpoint", "--kill", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	orig := p.pid // the restored process has it inside its PID namespace
	r := p.restart(img)
	if !r.exit.wait(10 * time.Second) {
		t.Fatalf("restored shell did not end\n%s", r.stderr.String())
	}
	if e, ok := r.exit.err.(*exec.ExitError); !ok || e.ExitCode() != 7 {
		t.Fatalf("ckpt restart ended with %v, want exit status 7\n%s", r.exit.err, r.stderr.String())
	}
	want := "process " + itoa(orig) + " (sh) runs with ckpt's scheduling priority: its own could not be set here (thread " + itoa(orig) + ": SCHED_OTHER nice -5: operation not permitted)"
	if out := r.stderr.String(); strings.Count(out, "scheduling priority") != 1 || !strings.Contains(out, want) {
		t.Fatalf("want one warning %q, got:\n%s", want, out)
	}
}

// TestUnprivilegedTCPRefused: a TCP connection needs repair mode
// (CAP_NET_ADMIN) to be read; a user's checkpoint says so, and the process
// runs on untouched, its connection working.
func TestUnprivilegedTCPRefused(t *testing.T) {
	p := startWorkloadAs(t, nobody, compile(t, "tcp"))
	time.Sleep(20 * time.Millisecond)
	maps := mapsOf(t, p.pid)
	img := filepath.Join(p.dir, "img")
	out, err := ckptAs(nobody, nil, "checkpoint", "--kill", "-o", img, itoa(p.pid))
	if err == nil {
		t.Fatalf("checkpoint succeeded, want refusal")
	}
	if !strings.Contains(out, "is a TCP connection: checkpointing one needs CAP_NET_ADMIN (TCP_REPAIR); run ckpt as root") {
		t.Fatalf("error %q does not say what is needed", out)
	}
	assertUntouched(t, p, maps)
	p.verifyExit(p.exit, true, 10*time.Second)
}

// TestUnprivilegedSeccompRefused: reading a process's seccomp filters, and
// keeping them from blocking ckpt's calls, needs CAP_SYS_ADMIN; a user's
// checkpoint says so, and the process runs on untouched.
func TestUnprivilegedSeccompRefused(t *testing.T) {
	p := startWorkloadAs(t, nobody, compile(t, "seccomp"))
	maps := mapsOf(t, p.pid)
	img := filepath.Join(p.dir, "img")
	out, err := ckptAs(nobody, nil, "checkpoint", "--kill", "-o", img, itoa(p.pid))
	if err == nil {
		t.Fatalf("checkpoint succeeded, want refusal")
	}
	if !strings.Contains(out, "only a ckpt with CAP_SYS_ADMIN (not itself under seccomp) can read") || !strings.Contains(out, "run ckpt as root") {
		t.Fatalf("error %q does not say what is needed", out)
	}
	assertUntouched(t, p, maps)
	p.verifyExit(p.exit, true, 10*time.Second)
}
