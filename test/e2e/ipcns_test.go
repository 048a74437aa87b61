package e2e

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/ptrace"
	"github.com/ckpt/ckpt/resource"
)

// startInNewIPC starts argv like startWorkload, in an IPC namespace of its
// own (gone with its processes).
func startInNewIPC(t *testing.T, argv ...string) *proc {
	t.Helper()
	p := startWith(t, &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWIPC}, argv...)
	t.Cleanup(func() { // before p's own cleanup
		if c := p.logInt(`child (\d+)`); c > 0 {
			syscall.Kill(c, syscall.SIGKILL)
		}
	})
	p.waitLog("READY", 20*time.Second)
	return p
}

// logInt returns the first number the pattern's group matches in the log.
func (p *proc) logInt(pattern string) int {
	m := regexp.MustCompile(pattern).FindStringSubmatch(p.logText())
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// seized is a thread stopped under ptrace, ready for injected calls.
type seized struct {
	tid  int
	regs ptrace.Regs
	t    *resource.Target
}

// seize stops a process sitting in pause() (so that the instruction before
// its rip is a syscall) for injected calls.
//
// Preconditions: called from inside ptrace.Run.
func seize(pid int) (*seized, error) {
	if err := ptrace.Seize(pid); err != nil {
		return nil, err
	}
	if err := ptrace.Interrupt(pid); err != nil {
		return nil, err
	}
	if _, err := ptrace.WaitInterrupted(pid); err != nil {
		return nil, err
	}
	regs, err := ptrace.GetRegs(pid)
	if err != nil {
		return nil, err
	}
	if int64(regs.Orig_rax) < 0 {
		return nil, fmt.Errorf("process %d is not in a system call", pid)
	}
	inj := &ptrace.Injector{Tid: pid, SyscallAddr: regs.Rip - 2, Base: regs}
	return &seized{tid: pid, regs: regs, t: &resource.Target{Pid: pid, Inj: inj, Scratch: regs.Rsp - 128 - 256, ScratchLen: 256}}, nil
}

// release puts the registers back and detaches.
func (s *seized) release() error {
	if err := s.t.Inj.ReturnToInterruptStop(); err != nil {
		return err
	}
	if err := ptrace.SetRegs(s.tid, &s.regs); err != nil {
		return err
	}
	return ptrace.Detach(s.tid, 0)
}

// TestIPCNamespaceDumpRestore dumps a whole IPC namespace (segments, one
// removed while attached, message queues, semaphores and a process's undo
// list) and restores it into another fresh namespace, where a program
// checks every object from inside, and that the restored undo list is
// applied when its process exits.
func TestIPCNamespaceDumpRestore(t *testing.T) {
	bin := compile(t, "ipcns")
	src := startInNewIPC(t, bin, "fill")
	ids := regexp.MustCompile(`ids (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)`).FindStringSubmatch(src.logText())
	child := src.logInt(`child (\d+)`)
	if ids == nil || child == 0 {
		t.Fatalf("no ids in log:\n%s", src.logText())
	}
	mm, err := resource.DumpMm(src.pid, 0, resource.NewFileSet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	attached := resource.AttachedShm(mm)
	if len(attached) != 2 {
		t.Fatalf("attached segments %v, want A and D", attached)
	}
	ns, err := resource.DumpIPCNamespace(src.pid, attached)
	if err != nil {
		t.Fatal(err)
	}
	if len(ns.Shm) != 3 || len(ns.Msg) != 2 || len(ns.Sem) != 1 || len(ns.Sysctls) == 0 {
		t.Fatalf("dumped %d segments, %d queues, %d semaphore sets, %d limits; want 3, 2, 1, some", len(ns.Shm), len(ns.Msg), len(ns.Sem), len(ns.Sysctls))
	}
	if v := ns.Sem[0].Values; len(v) != 2 || v[0] != 2 || v[1] != 11 {
		t.Fatalf("semaphore values %v, want [2 11]", v)
	}
	// The child's undo list: found, and given back.
	err = ptrace.Run(func() error {
		s, err := seize(child)
		if err != nil {
			return err
		}
		probe, err := resource.NewUndoProbe()
		if err != nil {
			return err
		}
		defer probe.Close()
		if err := resource.DumpSemUndo(probe, ns, child, []*resource.Target{s.t}, []int{child}); err != nil {
			return err
		}
		return s.release()
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ns.Undo) != 1 || ns.Undo[0].Pid != uint32(child) || len(ns.Undo[0].Adj) != 2 || ns.Undo[0].Adj[0].Adj != 1 || ns.Undo[0].Adj[1].Adj != -2 {
		t.Fatalf("undo lists %v, want process %d with +1 and -2", ns.Undo, child)
	}
	again, err := resource.DumpIPCNamespace(src.pid, attached)
	if err != nil {
		t.Fatal(err)
	}
	if v := again.Sem[0].Values; v[0] != 2 || v[1] != 11 {
		t.Fatalf("after the undo list was given back the values are %v, want [2 11]", v)
	}
	var img bytes.Buffer
	w, err := image.NewWriter(&img)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Message(image.TypeHeader, &pb.Header{FormatVersion: image.FormatVersion, PageSize: image.PageSize}); err != nil {
		t.Fatal(err)
	}
	if err := w.Message(image.TypeIPC, ns); err != nil {
		t.Fatal(err)
	}
	if err := resource.DumpIPCShmPages(src.pid, ns, w); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// The child exits: its (given back) undo list puts the values back.
	syscall.Kill(child, syscall.SIGKILL)
	src.cleanup()

	dst := startInNewIPC(t, append([]string{bin, "check"}, ids[1:]...)...)
	r, err := image.NewReader(&img)
	if err != nil {
		t.Fatal(err)
	}
	var rest *resource.IPCRestore
	var pm *pb.PageMap
	buf := make([]byte, 1<<20)
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch rec.Type {
		case image.TypeIPC:
			rns := &pb.IpcNamespace{}
			if err := image.Unmarshal(rec, rns); err != nil {
				t.Fatal(err)
			}
			if rest, err = resource.RestoreIPCNamespace(dst.pid, rns); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(rest.Abort)
		case image.TypePageMap:
			pm = &pb.PageMap{}
			if err := image.Unmarshal(rec, pm); err != nil {
				t.Fatal(err)
			}
		case image.TypePages:
			if err := rest.RestorePages(pm, r, buf); err != nil {
				t.Fatal(err)
			}
		}
	}
	syscall.Kill(dst.pid, syscall.SIGUSR1)
	dst.waitLog("ATTACHED", 10*time.Second)
	if err := rest.Finish(); err != nil {
		t.Fatal(err)
	}
	newChild := dst.logInt(`child (\d+)`)
	err = ptrace.Run(func() error {
		s, err := seize(newChild)
		if err != nil {
			return err
		}
		err = resource.RestoreSemUndo(rest.Image, func(pid uint32) *resource.Target {
			if pid == uint32(child) {
				return s.t
			}
			return nil
		})
		if err != nil {
			return err
		}
		return s.release()
	})
	if err != nil {
		t.Fatal(err)
	}
	dst.verifyExit(dst.exit, true, 10*time.Second)
}
