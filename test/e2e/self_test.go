package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Self-checkpoint: programs that checkpoint themselves through
// include/ckpt.h (test/workloads/self.c) and package self
// (test/workloads/goself). Each counts iterations 0..7, checkpoints itself
// at 2 (and 4), and checks itself. The harness modes map to:
//
//	after-exit       the program runs to its end; its image is restarted
//	                 afterwards and counts on from 2
//	while-running    a restart while the program still runs is refused
//	                 (its PID is taken); once it has ended, the restart works
//	restarted-again  the restarted program checkpoints itself again; that
//	                 image restarts too; all three ids differ
//	failure          a checkpoint to an unwritable path fails, and the
//	                 program carries on
func TestSelf(t *testing.T) {
	for _, lang := range []struct {
		name string
		bin  func(t *testing.T) string
	}{
		{"c", func(t *testing.T) string { return compile(t, "self") }},
		{"go", func(t *testing.T) string { return compileGo(t, "goself") }},
	} {
		t.Run(lang.name+"/after-exit", func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "img")
			p := startSelf(t, lang.bin(t), img)
			p.verifyExit(p.exit, false, 20*time.Second)
			id := selfID(t, p.logText(), 2)
			checkInspect(t, img, id)
			waitPidGone(p.pid, 5*time.Second)
			before := len(p.logText())
			r := p.restart(img)
			p.verifyExit(r.exit, false, 20*time.Second)
			wantLines(t, p.logText()[before:], "restarted at 2", "iteration 3", "iteration 4", "iteration 5", "iteration 6", "iteration 7", "done: 1 restart(s)", "PASS")
		})
		t.Run(lang.name+"/while-running", func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "img")
			p := startSelf(t, lang.bin(t), "-w", img)
			p.waitLog("done: 0 restart(s)", 20*time.Second)
			out, err := ckpt(nil, "restart", img)
			if err == nil || !strings.Contains(out, "is taken") {
				t.Fatalf("restart while the program runs: %v\n%s", err, out)
			}
			if !alive(p.pid) {
				t.Fatalf("the program died of a refused restart; log:\n%s", p.logText())
			}
			p.verifyExit(p.exit, true, 10*time.Second)
			waitPidGone(p.pid, 5*time.Second)
			before := len(p.logText())
			r := p.restart(img)
			p.waitLog("done: 1 restart(s)", 20*time.Second)
			p.verifyExit(r.exit, true, 10*time.Second)
			wantLines(t, p.logText()[before:], "restarted at 2", "iteration 3", "iteration 4", "iteration 5", "iteration 6", "iteration 7", "done: 1 restart(s)", "PASS")
		})
		t.Run(lang.name+"/restarted-again", func(t *testing.T) {
			dir := t.TempDir()
			img2, img4 := filepath.Join(dir, "img2"), filepath.Join(dir, "img4")
			p := startSelf(t, lang.bin(t), img2, img4)
			p.verifyExit(p.exit, false, 20*time.Second)
			id2, id4 := selfID(t, p.logText(), 2), selfID(t, p.logText(), 4)
			if id2 == id4 {
				t.Fatalf("two checkpoints of one run share id %s", id2)
			}
			waitPidGone(p.pid, 5*time.Second)
			before := len(p.logText())
			r := p.restart(img2)
			p.verifyExit(r.exit, false, 20*time.Second)
			again := p.logText()[before:]
			id := selfID(t, again, 4)
			if id == id2 || id == id4 {
				t.Fatalf("the restarted program's checkpoint got id %s again", id)
			}
			wantLines(t, again, "restarted at 2", "iteration 3", "iteration 4", "checkpoint at 4: id "+id, "iteration 5", "iteration 6", "iteration 7", "done: 1 restart(s)", "PASS")
			checkInspect(t, img4, id)
			waitPidGone(p.pid, 5*time.Second)
			before = len(p.logText())
			r = p.restart(img4)
			p.verifyExit(r.exit, false, 20*time.Second)
			wantLines(t, p.logText()[before:], "restarted at 4", "iteration 5", "iteration 6", "iteration 7", "done: 2 restart(s)", "PASS")
		})
		t.Run(lang.name+"/failure", func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "missing", "img")
			p := startSelf(t, lang.bin(t), "-f", img)
			p.verifyExit(p.exit, false, 20*time.Second)
			log := p.logText()
			if !strings.Contains(log, "checkpoint at 2 failed") || !strings.Contains(log, img) {
				t.Fatalf("no failure naming %s; log:\n%s", img, log)
			}
			if _, err := os.Stat(img); !os.IsNotExist(err) {
				t.Fatalf("a failed checkpoint left %s: %v", img, err)
			}
		})
	}
}

// startSelf starts a self-checkpointing workload with CKPT set to the
// ckpt under test. Its log is opened O_APPEND, so that a restarted program
// (whose stdout comes back with O_APPEND) writes after the original's
// output instead of over it from the offset it had at the checkpoint.
func startSelf(t *testing.T, argv ...string) *proc {
	t.Helper()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CKPT="+ckptBin)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, pid: cmd.Process.Pid, dir: dir, log: logPath, cmd: cmd, exit: newExited(cmd.Wait)}
	t.Cleanup(p.cleanup)
	p.waitLog("READY", 20*time.Second)
	return p
}

var selfIDLine = regexp.MustCompile(`(?m)^checkpoint at (\d+): id (\d+)$`)

// selfID returns the id the program reported for its checkpoint at
// iteration it.
func selfID(t *testing.T, log string, it int) string {
	t.Helper()
	for _, m := range selfIDLine.FindAllStringSubmatch(log, -1) {
		if m[1] == itoa(it) {
			return m[2]
		}
	}
	t.Fatalf("no checkpoint id for iteration %d in log:\n%s", it, log)
	return ""
}

// checkInspect checks that `ckpt inspect` shows the id the program got.
func checkInspect(t *testing.T, img, id string) {
	t.Helper()
	out, err := ckpt(nil, "inspect", img)
	if err != nil || !strings.Contains(out, "checkpoint id "+id+"\n") || !strings.Contains(out, "self-checkpoint by thread ") {
		t.Fatalf("inspect %s (want id %s): %v\n%s", img, id, err, out)
	}
}

// wantLines checks that text consists of exactly these lines.
func wantLines(t *testing.T, text string, lines ...string) {
	t.Helper()
	got := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if strings.Join(got, "\n") != strings.Join(lines, "\n") {
		t.Fatalf("restarted program printed:\n%s\nwant:\n%s", text, strings.Join(lines, "\n"))
	}
}
