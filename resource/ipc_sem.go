package resource

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// SysV semaphore sets and the per-process undo lists (semadj). See ipc.go
// for the mechanism.

// kcmpSysvsem is KCMP_SYSVSEM: do two tasks hold the same undo list?
const kcmpSysvsem = 6

// restoreSemSet creates one semaphore set under its id, with each value
// plus the adjustments the undo lists will take back (adj: semid, num ->
// sum).
//
// Preconditions: on a discardable locked thread inside the namespace.
func restoreSemSet(s *pb.SemSet, adj map[[2]int32]int32) error {
	err := createWithID("sem", s.Id, s.Perm, func() (int, error) {
		return semget(s.Perm.Key, len(s.Values), unix.IPC_CREAT|unix.IPC_EXCL|int(s.Perm.Mode))
	})
	if err != nil {
		return err
	}
	vals := make([]uint16, len(s.Values))
	for i, v := range s.Values {
		n := int64(v) + int64(adj[[2]int32{s.Id, int32(i)}])
		if n < 0 || n > semMaxValue {
			return fmt.Errorf("image damaged: semaphore %d value %d with its undo adjustments", i, n)
		}
		vals[i] = uint16(n)
	}
	if err := semctlAll(int(s.Id), semSetAll, vals); err != nil {
		return fmt.Errorf("set values: %w", err)
	}
	var ds semidDS
	if _, err := semctlDS(int(s.Id), unix.IPC_STAT, &ds); err != nil {
		return err
	}
	ds.Perm.Uid, ds.Perm.Gid, ds.Perm.Mode = s.Perm.Uid, s.Perm.Gid, s.Perm.Mode
	if _, err := semctlDS(int(s.Id), unix.IPC_SET, &ds); err != nil {
		return fmt.Errorf("set owner %d:%d and mode %#o: %w", s.Perm.Uid, s.Perm.Gid, s.Perm.Mode, err)
	}
	return nil
}

// UndoProbe tells tasks that hold a semaphore undo list from those that
// do not, by kcmp KCMP_SYSVSEM against a task known to have none: a
// kernel thread (kthreadd, PID 2) where ckpt may see and compare it (root,
// in the initial PID namespace), otherwise a zombie child of ckpt (an
// exiting task drops its list). Not ckpt itself: the Go runtime creates
// its threads with CLONE_SYSVSEM, which gives the process an (empty)
// list, as glibc's pthread_create does for every multi-threaded program.
type UndoProbe struct {
	ref   int
	child *os.Process
}

// NewUndoProbe finds or makes the reference task. Close releases it.
func NewUndoProbe() (*UndoProbe, error) {
	if st, err := proc.ReadStat(2); err == nil && st.KernelThread() {
		if _, _, e := unix.Syscall6(unix.SYS_KCMP, 2, 2, kcmpSysvsem, 0, 0, 0); e == 0 {
			return &UndoProbe{ref: 2}, nil
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer null.Close()
	// --version ends ckpt at once, and a Go test binary (ckpt's own
	// tests) at its flag parsing, where "help" would run every test.
	child, err := os.StartProcess(exe, []string{exe, "--version"}, &os.ProcAttr{Files: []*os.File{null, null, null}})
	if err != nil {
		return nil, fmt.Errorf("start a reference task for semaphore undo lists: %w", err)
	}
	p := &UndoProbe{ref: child.Pid, child: child}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(500 * time.Microsecond) {
		st, err := proc.ReadStat(child.Pid)
		if err == nil && st.State == 'Z' {
			return p, nil
		}
		if err != nil || time.Now().After(deadline) {
			p.Close()
			return nil, fmt.Errorf("reference task for semaphore undo lists did not end")
		}
	}
}

// Close reaps the reference child, if any.
func (p *UndoProbe) Close() {
	if p != nil && p.child != nil {
		p.child.Kill()
		p.child.Wait()
		p.child = nil
	}
}

// Has reports whether task tid holds a semaphore undo list.
func (p *UndoProbe) Has(tid int) (bool, error) {
	r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(p.ref), uintptr(tid), kcmpSysvsem, 0, 0, 0)
	if e != 0 {
		return false, fmt.Errorf("compare semaphore undo list of %d: %w", tid, e)
	}
	return r != 0, nil
}

// PreflightSemUndo refuses processes (not threads) that share one
// semaphore undo list (clone with CLONE_SYSVSEM but not CLONE_THREAD):
// a restart cannot rebuild that sharing.
func PreflightSemUndo(probe *UndoProbe, pids []int) error {
	var holders []int
	for _, pid := range pids {
		has, err := probe.Has(pid)
		if err != nil {
			return err
		}
		if has {
			holders = append(holders, pid)
		}
	}
	for i, a := range holders {
		for _, b := range holders[i+1:] {
			r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(a), uintptr(b), kcmpSysvsem, 0, 0, 0)
			if e == 0 && r == 0 {
				return fmt.Errorf("processes %d and %d share one semaphore undo list (CLONE_SYSVSEM): %w", a, b, ErrUnsupported)
			}
		}
	}
	return nil
}

// readSemValues reads every semaphore value of the sets of ns, in pid's
// namespace.
func readSemValues(pid int, ns *pb.IpcNamespace) (map[int32][]uint16, error) {
	out := map[int32][]uint16{}
	err := inIPCNamespace(pid, func() error {
		for _, s := range ns.Sem {
			v := make([]uint16, len(s.Values))
			if err := semctlAll(int(s.Id), semGetAll, v); err != nil {
				return fmt.Errorf("semaphore set %d: read values: %w", s.Id, err)
			}
			out[s.Id] = v
		}
		return nil
	})
	return out, err
}

// DumpSemUndo finds the semaphore undo list of process pid and adds it to
// ns.undo: with the values read before and after, the list is applied by
// an injected unshare(CLONE_SYSVSEM) in each of the process's threads
// (threads[0] its main thread), then given back to the main thread with
// injected semop(-adj, SEM_UNDO|IPC_NOWAIT) calls, which restore the
// values. Threads that shared the list no longer do afterwards (a thread
// that uses SEM_UNDO again gets a list of its own); a restarted process
// has one list again.
//
// The kernel clamps a value at 0 when it applies a list; an adjustment
// that would go below that is recorded as far as it went.
//
// Preconditions: ns comes from DumpIPCNamespace of the process's
// namespace; every process using the namespace's semaphores is frozen
// (so nothing else changes a value meanwhile, and no process is queued
// on a semaphore); called during the injected burst (threads can run
// injected system calls); PreflightSemUndo passed.
func DumpSemUndo(probe *UndoProbe, ns *pb.IpcNamespace, pid int, threads []*Target, tids []int) error {
	var holders []int
	for i, tid := range tids {
		has, err := probe.Has(tid)
		if err != nil {
			return err
		}
		if has {
			holders = append(holders, i)
		}
	}
	if len(holders) == 0 || len(ns.Sem) == 0 {
		return nil
	}
	before, err := readSemValues(pid, ns)
	if err != nil {
		return err
	}
	for _, i := range holders {
		if _, err := threads[i].Syscall(unix.SYS_UNSHARE, unix.CLONE_SYSVSEM); err != nil {
			return fmt.Errorf("thread %d: apply semaphore undo list (unshare CLONE_SYSVSEM): %w", tids[i], err)
		}
	}
	after, err := readSemValues(pid, ns)
	if err != nil {
		return err
	}
	u := &pb.SemUndo{Pid: uint32(pid)}
	for _, s := range ns.Sem {
		for n := range s.Values {
			if d := int32(after[s.Id][n]) - int32(before[s.Id][n]); d != 0 {
				u.Adj = append(u.Adj, &pb.SemAdj{Semid: s.Id, Num: uint32(n), Adj: d})
			}
		}
	}
	if len(u.Adj) == 0 {
		return nil
	}
	ns.Undo = append(ns.Undo, u)
	if err := semUndoOps(threads[0], u); err != nil {
		return fmt.Errorf("give the semaphore undo list back: %w", err)
	}
	return nil
}

// semUndoOps makes the process of t take the undo list u: one semop
// (-adj, SEM_UNDO|IPC_NOWAIT) per semaphore, grouped by set. Each
// semaphore gets one operation that takes back what its adjustment
// added, so none can block.
func semUndoOps(t *Target, u *pb.SemUndo) error {
	perCall := min(semMaxOps, int(t.ScratchLen/6))
	for i := 0; i < len(u.Adj); {
		id := u.Adj[i].Semid
		var ops []semBuf
		for i < len(u.Adj) && u.Adj[i].Semid == id && len(ops) < perCall {
			ops = append(ops, semBuf{Num: uint16(u.Adj[i].Num), Op: int16(-u.Adj[i].Adj), Flg: semUndo | unix.IPC_NOWAIT})
			i++
		}
		addr, err := t.Put(0, semBufBytes(ops))
		if err != nil {
			return err
		}
		if _, err := t.Syscall(unix.SYS_SEMOP, uint64(id), addr, uint64(len(ops))); err != nil {
			return fmt.Errorf("semop on set %d (%d operations): %w", id, len(ops), err)
		}
	}
	return nil
}

// RestoreSemUndo gives each process of the namespace its undo list back:
// main(pid) is the stub of that process (its main thread), before its
// other threads are created (they share the list, CLONE_SYSVSEM). The
// lists are taken back in the reverse of the order they were found in, so
// that every value stays in range (RestoreIPCNamespace set each to its
// value plus all adjustments).
//
// Preconditions: after RestoreIPCNamespace, every process of the
// namespace exists; called from inside ptrace.Run.
func RestoreSemUndo(ns *pb.IpcNamespace, main func(pid uint32) *Target) error {
	for i := len(ns.Undo) - 1; i >= 0; i-- {
		u := ns.Undo[i]
		t := main(u.Pid)
		if t == nil {
			return fmt.Errorf("image damaged: semaphore undo list of process %d, which is not in the image", u.Pid)
		}
		if err := semUndoOps(t, u); err != nil {
			return fmt.Errorf("process %d: restore semaphore undo list: %w", u.Pid, err)
		}
	}
	return nil
}
