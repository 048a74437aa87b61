package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// containerProc starts the container workload as the init of a container
// with its own PID and UTS namespaces.
func containerProc(t *testing.T) *proc {
	t.Helper()
	return startContainer(t, []string{"--pid", "--uts"}, compile(t, "container"), hostname(t), "0")
}

func hostname(t *testing.T) string {
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// expectRefused runs a checkpoint that must fail with a one-line error
// containing every want, write no image, and leave the target running:
// it must still pass its own check afterwards.
func expectRefused(t *testing.T, p *proc, args []string, want ...string) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "img")
	out, err := ckpt(nil, append(append([]string{"checkpoint"}, args...), "-o", img, itoa(p.pid))...)
	if err == nil {
		t.Fatalf("checkpoint %v succeeded, want a refusal", args)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Fatalf("error %q, want it to contain %q", out, w)
		}
	}
	if strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Fatalf("error is not one line: %q", out)
	}
	if _, err := os.Stat(img); err == nil {
		t.Fatalf("a refused checkpoint left an image")
	}
	if status(p.pid, "TracerPid") != "0" {
		t.Fatalf("process %d is still traced after the refusal", p.pid)
	}
	p.verifyExit(p.exit, true, 10*time.Second)
}

// TestContainerRefusals: --container needs the init of a PID namespace,
// and a process in a PID namespace of its own needs --container.
func TestContainerRefusals(t *testing.T) {
	t.Run("not-in-pid-namespace", func(t *testing.T) {
		p := startWorkload(t, compile(t, "files"))
		expectRefused(t, p, []string{"--container"}, "is in ckpt's own PID namespace", "ckpt run --pid")
	})
	t.Run("own-pid-namespace-without-container", func(t *testing.T) {
		p := containerProc(t)
		expectRefused(t, p, nil, "is in a PID namespace of its own", "--container")
	})
}

// TestContainerLeaks: what a container shares with processes outside it
// makes the checkpoint fail, naming the object and the outside process; in
// a subtree checkpoint the same is a warning, recorded in the image.
func TestContainerLeaks(t *testing.T) {
	t.Run("namespace", func(t *testing.T) {
		if _, err := exec.LookPath("nsenter"); err != nil {
			t.Skip("no nsenter (util-linux)")
		}
		p := containerProc(t)
		// A process outside the container's tree joins its UTS namespace.
		in := exec.Command("nsenter", "--uts", "-t", itoa(p.pid), "sleep", "100")
		if err := in.Start(); err != nil {
			t.Fatal(err)
		}
		inExit := newExited(in.Wait)
		t.Cleanup(func() { in.Process.Kill(); inExit.wait(5 * time.Second) })
		deadline := time.Now().Add(5 * time.Second)
		for status(in.Process.Pid, "Name") != "sleep" && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		expectRefused(t, p, []string{"--container"}, "uts namespace", itoa(in.Process.Pid)+" (sleep)")
	})
	t.Run("pipe", func(t *testing.T) {
		// The container's standard output is a pipe the test reads.
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		dir := t.TempDir()
		pidFile := filepath.Join(dir, "pid")
		cmd := exec.Command(ckptBin, "run", "--pid", "--uts", "--pid-file", pidFile, "--", compile(t, "container"), hostname(t), "0")
		cmd.Dir, cmd.Stdout, cmd.Stderr = dir, w, w
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w.Close()
		exit := newExited(cmd.Wait)
		lines := make(chan string, 16)
		go func() {
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		if l := <-lines; l != "READY" {
			t.Fatalf("container said %q, want READY", l)
		}
		b, _ := os.ReadFile(pidFile)
		pid := strings.TrimSpace(string(b))
		t.Cleanup(func() {
			if n, err := strconv.Atoi(pid); err == nil {
				syscall.Kill(n, syscall.SIGKILL)
			}
			exit.wait(5 * time.Second)
		})
		out, err := ckpt(nil, "checkpoint", "--container", "-o", filepath.Join(dir, "img"), pid)
		if err == nil || !strings.Contains(out, "shares pipe:[") || !strings.Contains(out, itoa(os.Getpid())) {
			t.Fatalf("checkpoint: %v %q, want a refusal naming the pipe and this test (%d) holding it", err, out, os.Getpid())
		}
		n, _ := strconv.Atoi(pid)
		syscall.Kill(n, syscall.SIGUSR2)
		if l := <-lines; l != "PASS" {
			t.Fatalf("container said %q after the refusal, want PASS", l)
		}
	})
	t.Run("subtree-warns", func(t *testing.T) {
		// A plain workload whose output is a pipe to a process outside it.
		dir, _, sleeper := sleeperUnderShell(t, `"$0" rel | cat > out`)
		img := filepath.Join(dir, "img")
		out, err := ckpt(nil, "checkpoint", "-o", img, itoa(sleeper))
		if err != nil || !strings.Contains(out, "warning: process "+itoa(sleeper)+" shares pipe:[") {
			t.Fatalf("checkpoint: %v %q, want success with a warning about the pipe", err, out)
		}
		info, err := ckpt(nil, "inspect", img)
		if err != nil || !strings.Contains(info, "leak: process "+itoa(sleeper)+" shared pipe:[") {
			t.Fatalf("inspect: %v, want the leak recorded:\n%s", err, info)
		}
		// The record does not stand in the way of a restart.
		syscall.Kill(sleeper, syscall.SIGKILL)
		waitPidGone(sleeper, 5*time.Second)
		if out, err := ckpt(nil, "restart", "--detach", img); err != nil {
			t.Fatalf("restart of an image with leaks: %v\n%s", err, out)
		}
		t.Cleanup(func() { syscall.Kill(sleeper, syscall.SIGKILL); waitPidGone(sleeper, 5*time.Second) })
	})
	t.Run("subtree-warns-file", func(t *testing.T) {
		// The workload's output is a file description its parent shell
		// (outside the subtree) holds open too, as descriptor 3.
		dir, shell, sleeper := sleeperUnderShell(t, `exec 3>out; "$0" rel >&3 & wait`)
		out, err := ckpt(nil, "checkpoint", "-o", filepath.Join(dir, "img"), itoa(sleeper))
		want := "warning: process " + itoa(sleeper) + " shares open file " + filepath.Join(dir, "out") + " (fd 1 inside, 3 outside) with " + itoa(shell) + " (sh)"
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("checkpoint: %v %q, want success with the warning %q", err, out, want)
		}
	})
	t.Run("subtree-warns-shm", func(t *testing.T) {
		// The workload holds a POSIX shared memory file that its parent
		// shell opened again by name, a separate open file description:
		// found by the inode, not the link text.
		shm := fmt.Sprintf("/dev/shm/ckpt-leak-%d", os.Getpid())
		t.Cleanup(func() { os.Remove(shm) })
		dir, shell, sleeper := sleeperUnderShell(t, `exec 3<>`+shm+`; "$0" rel & exec 3>&-; exec 4<`+shm+`; wait`)
		out, err := ckpt(nil, "checkpoint", "-o", filepath.Join(dir, "img"), itoa(sleeper))
		want := "warning: process " + itoa(sleeper) + " shares shared memory " + shm + " (fd 3 inside) with " + itoa(shell) + " (sh)"
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("checkpoint: %v %q, want success with the warning %q", err, out, want)
		}
	})
}

// sleeperUnderShell runs script with sh -c in a session of its own and a
// fresh directory, $0 being the sleep workload, and returns the directory,
// the shell's PID and the sleep workload's; all are killed at cleanup.
func sleeperUnderShell(t *testing.T, script string) (dir string, shell, sleeper int) {
	t.Helper()
	dir = t.TempDir()
	cmd := exec.Command("sh", "-c", script, compile(t, "sleep"))
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exit := newExited(cmd.Wait)
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); exit.wait(5 * time.Second) })
	time.Sleep(300 * time.Millisecond)
	return dir, cmd.Process.Pid, childNamed("sleep")(t, cmd.Process.Pid)
}

// TestContainerRestartFailure: a container restart that fails partway
// (at each fault point) leaves no process of it behind, and a later
// restart of the same image works.
func TestContainerRestartFailure(t *testing.T) {
	p := containerProc(t)
	img := filepath.Join(p.dir, "img")
	if out, err := ckpt(nil, "checkpoint", "--container", "--kill", "-o", img, itoa(p.pid)); err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	p.exit.wait(10 * time.Second)
	before := inChildPidNamespaces()
	for _, fault := range []string{"stub", "mapped", "pages", "final"} {
		out, err := ckpt([]string{"CKPT_FAULT=" + fault}, "restart", img)
		if err == nil {
			t.Fatalf("restart with fault %s succeeded", fault)
		}
		if n := inChildPidNamespaces(); n != before {
			t.Fatalf("restart failed at %s (%s) but left %d processes in PID namespaces (%d before)", fault, strings.TrimSpace(out), n, before)
		}
	}
	r := p.restart(img)
	p.verifyExit(r.exit, true, 10*time.Second)
}

// inChildPidNamespaces counts live processes in PID namespaces below the
// test's (a container's, or a failed restart's leftovers).
func inChildPidNamespaces() int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && len(strings.Fields(status(pid, "NSpid"))) > 1 && alive(pid) {
			n++
		}
	}
	return n
}
