// Package checkpoint writes the image of a running process tree.
//
// The data path reads top to bottom: preflight (refuse what ckpt cannot
// handle before touching anything) → freeze every thread of every process
// (PTRACE_SEIZE + INTERRUPT, or a freezer cgroup) → collect (registers and
// /proc from outside; a few injected system calls for what only a process
// itself can read) → put the registers back → write records and pages →
// thaw (detach) or kill.
//
// Nothing is lost on failure: until the image is complete the targets are
// only ever stopped, and every exit path puts their registers, signal masks
// and scratch bytes back and detaches them. If ckpt itself dies, the kernel
// detaches the targets; the only window where that would harm one is the
// short burst of injected system calls, which runs before the (long) memory
// dump.
package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/internal/fault"
	"github.com/ckpt/ckpt/internal/phase"
	"github.com/ckpt/ckpt/proc"
	"github.com/ckpt/ckpt/ptrace"
	"github.com/ckpt/ckpt/resource"
)

// Version is the tool version written into image headers.
var Version = "0.1.0"

// Options control one checkpoint.
type Options struct {
	Pid int
	// Kill ends the target once the image is complete and waits until it
	// has died (its parent reaps it later). If false the target keeps
	// running.
	Kill bool
	// Out receives the image stream.
	Out io.Writer
	// Warn reports non-fatal findings; nil discards them.
	Warn func(string)
	// Fault, for tests, makes the checkpoint fail at a named point (see
	// package fault).
	Fault string
	// Freezer, if set, is a freezer cgroup holding the tree, used to stop
	// it all at once (see freezer.go).
	Freezer string
	// Progress, if set, counts the image bytes written so far.
	Progress *atomic.Uint64
	// Compress writes the image as a zstd stream (for slow links); restart
	// and inspect recognise it.
	Compress bool
	// Container checkpoints a whole container: Pid must be PID 1 of its
	// PID namespace; the image holds PIDs as seen inside it.
	Container bool
	// Interrupt, when closed, stops the checkpoint at the next point where
	// the processes can be put back as they were (never between an
	// injected call and the restoring of its thread), releases them and
	// makes Run return ErrInterrupted: an interrupted ckpt that simply
	// died there would leave threads with all signals blocked and the
	// registers of an injected call.
	Interrupt <-chan struct{}
	// SignalsArmed, if set, is closed once the signals that close
	// Interrupt are caught; Run waits for it before it stops any process.
	// (Catching them takes a while, which this lets overlap the preflight.)
	SignalsArmed <-chan struct{}
	// Reserve, if set, is told before the pages are written about how
	// many bytes of them are coming (the processes' anonymous memory when
	// they were inspected), so that a file destination can allocate the
	// space ahead (image.Preallocate). Not called with Compress.
	Reserve func(n uint64)

	phases *phase.Phases // set by Run
	// undo tells semaphore undo lists apart (set by Run).
	undo *resource.UndoProbe
	// self is ckpt's own status and namespaces (set by Run).
	self *resource.Self
	// cpu is the CPU the tracing thread is bound to, -1 if none (set by
	// dump; see frozenThread.pin).
	cpu int
	// subtreeLeaks waits for the leak scan of a subtree (set by Run).
	subtreeLeaks func() ([]*pb.Leak, error)
	// pre is what preflight read of the tree (set by Run).
	pre *inspected
	// vdso waits for the functions of this kernel's vDSO, read on the
	// side for the header (set by Run).
	vdso func() []*pb.VdsoSymbol
	// SelfTid, if not 0, makes this a self-checkpoint (see self.go):
	// thread SelfTid of Pid is blocked in read() on the pipe whose write
	// end is ckpt's descriptor SelfFd.
	SelfTid int
	SelfFd  int

	id         int64  // the checkpoint id written into the header
	selfReadFd int    // the caller's descriptor it reads the id from
	selfIno    uint64 // the inode of that pipe
}

// Stats describes a finished checkpoint.
type Stats struct {
	// ID is the checkpoint id recorded in the image header.
	ID     int64
	Frozen time.Duration
	Total  time.Duration
	Bytes  uint64
	// Phases is where the time went, in order.
	Phases phase.Phases
}

func (o *Options) fault(point string) error {
	if o.Fault == point+":hang" && o.Interrupt != nil {
		<-o.Interrupt // a test interrupts the checkpoint here
		return o.interrupted()
	}
	return fault.At(o.Fault, point)
}

// ErrInterrupted is what Run returns when Options.Interrupt was closed:
// the processes run on as before, and the image is incomplete.
var ErrInterrupted = errors.New("interrupted")

// interrupted returns ErrInterrupted once Interrupt is closed. It is asked
// only where returning an error puts the processes back as they were.
func (o *Options) interrupted() error {
	select {
	case <-o.Interrupt:
		return ErrInterrupted
	default:
		return nil
	}
}

// mark ends a phase of the checkpoint.
func (o *Options) mark(name string) { o.phases.Mark(name) }

// Preflight checks, without touching them, that ckpt can checkpoint pid
// and its descendants (as a container if container is set).
func Preflight(pid int, container bool) error {
	probe, err := resource.NewUndoProbe()
	if err != nil {
		return err
	}
	defer probe.Close()
	self, err := resource.ReadSelf()
	if err != nil {
		return err
	}
	return preflight(pid, 0, container, probe, self, newInspected())
}

// inspected is what preflight read of the tree, kept for what follows:
// the frozen dump takes each process's memory areas from it (read from
// smaps, with their flags, so that the dump need only read maps; see
// resource.DumpMm), the leak scan the inside's descriptors, shared
// mappings and namespaces, which it would otherwise read again.
type inspected struct {
	pids   []int // the tree, zombies included
	areas  map[int][]proc.Vma
	inside []insideProc
	// ns are the namespaces of the tree's own (a process's that differ
	// from its parent's, the root's from ckpt's), kind name -> id.
	ns map[string]uint64
	// hostIPC says that a process of the tree is in ckpt's IPC namespace.
	hostIPC bool
	// seccomp holds the processes under seccomp filters.
	seccomp map[int]bool
}

func newInspected() *inspected {
	return &inspected{areas: map[int][]proc.Vma{}, ns: map[string]uint64{}, seccomp: map[int]bool{}}
}

// preflight is Preflight leaving out the subtree of process skip (ckpt
// itself in a self-checkpoint), recording what it read in in.
func preflight(pid, skip int, container bool, probe *resource.UndoProbe, self *resource.Self, in *inspected) error {
	if pid <= 0 {
		return fmt.Errorf("invalid pid %d", pid)
	}
	if pid == os.Getpid() {
		return fmt.Errorf("ckpt cannot checkpoint itself from the command line; use the self-checkpoint API")
	}
	st, err := proc.ReadStat(pid)
	if err != nil {
		if proc.Gone(err) {
			return fmt.Errorf("no process %d", pid)
		}
		return fmt.Errorf("read process %d: %w", pid, err)
	}
	if st.State == 'Z' || st.State == 'X' {
		return fmt.Errorf("process %d (%s) is a zombie: nothing left to checkpoint", pid, st.Comm)
	}
	if st.KernelThread() {
		return fmt.Errorf("process %d (%s) is a kernel thread", pid, st.Comm)
	}
	if container {
		if err := checkContainerInit(pid); err != nil {
			return err
		}
	}
	pids, err := tree(pid, skip)
	if err != nil {
		return err
	}
	// A vfork child shares its parent's memory until it execs, usually for
	// a moment: give it that moment before refusing.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		err := checkSharing(pids)
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "CLONE_VM") || time.Now().After(deadline) {
			return err
		}
		if pids, err = tree(pid, skip); err != nil {
			return err
		}
	}
	in.pids = pids
	if err := resource.PreflightSemUndo(probe, pids); err != nil {
		return err
	}
	rootNs, err := resource.ReadNsIds(pid)
	if err != nil {
		if proc.Gone(err) {
			return fmt.Errorf("no process %d", pid)
		}
		return err
	}
	outer, _, err := outerOf(self.Ns, rootNs, pid, container)
	if err != nil {
		return err
	}
	nsOf := map[int]*pb.NsIds{}
	checkedNet := map[uint64]bool{}
	var live []int // processes alive and still in the tree
	for _, p := range pids {
		if p == os.Getpid() {
			return fmt.Errorf("ckpt itself (pid %d) is a descendant of %d; run ckpt from outside the tree it checkpoints", p, pid)
		}
		st, err := proc.ReadStat(p)
		if proc.Gone(err) {
			continue // a short-lived child that is gone already
		}
		if err != nil {
			return fmt.Errorf("read process %d: %w", p, err)
		}
		if st.State == 'Z' {
			continue
		}
		have := outer
		if p != pid {
			if have = nsOf[st.Ppid]; have == nil {
				continue // reparented meanwhile: the freeze re-walks the tree
			}
		}
		if p == pid {
			nsOf[p] = rootNs
		} else if nsOf[p], err = resource.ReadNsIds(p); err != nil && !gone(p) {
			return err
		}
		if nsOf[p] == nil {
			continue // gone
		}
		if err := resource.PreflightNamespaces(p, have, nsOf[p], p == pid, container); err != nil && !gone(p) {
			return err
		}
		if p == pid && nsOf[p].Mnt != have.Mnt {
			if err := resource.PreflightMountNamespace(p); err != nil && !gone(p) {
				return fmt.Errorf("process %d: %w", p, err)
			}
		}
		if nsOf[p].Net != have.Net && !checkedNet[nsOf[p].Net] {
			checkedNet[nsOf[p].Net] = true
			if err := resource.PreflightNetNamespace(p); err != nil && !gone(p) {
				return fmt.Errorf("process %d: %w", p, err)
			}
		}
		live = append(live, p)
		for _, k := range resource.NsKinds {
			if k.Get(nsOf[p]) != k.Get(have) {
				in.ns[k.Name] = k.Get(nsOf[p])
			}
		}
		if nsOf[p].Ipc == self.Ns.Ipc {
			in.hostIPC = true
		}
	}
	return preflightEach(live, nsOf, self, in)
}

// preflightEach reads and checks each process's credentials, descriptors
// and memory areas, two jobs a process (the areas, from smaps, are the
// biggest part; everything else the other), on this goroutine and, for a
// tree, one more: nothing else runs on the second core yet (the leak scan
// follows preflight). The error reported is the first in process order,
// as if the jobs ran one after the other.
func preflightEach(pids []int, nsOf map[int]*pb.NsIds, self *resource.Self, in *inspected) error {
	n := len(pids)
	errs := make([]error, 2*n)
	fds := make([][]resource.FdRef, n)
	vmas := make([][]proc.Vma, n)
	filtered := make([]bool, n)
	var next atomic.Int64
	work := func() {
		for {
			j := int(next.Add(1) - 1)
			if j >= 2*n {
				return
			}
			i, p := j/2, pids[j/2]
			var err error
			if j%2 == 0 {
				if filtered[i], err = resource.PreflightTask(p, nsOf[p], self); err == nil {
					fds[i], err = resource.PreflightFiles(p)
				}
			} else {
				vmas[i], err = resource.PreflightMm(p)
			}
			if err != nil && !gone(p) {
				errs[j] = err
			}
		}
	}
	var wg sync.WaitGroup
	if n > 1 { // one process's two jobs gain less than a thread costs
		wg.Add(1)
		go func() { defer wg.Done(); work() }()
	}
	work()
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	for i, p := range pids {
		if filtered[i] {
			in.seccomp[p] = true
		}
		in.areas[p] = vmas[i]
		in.inside = append(in.inside, insideProc{pid: p, fds: fds[i], shared: sharedFileMaps(vmas[i])})
	}
	return nil
}

// checkSharing refuses processes that share an address space, filesystem
// context or signal handlers (clone flags CLONE_VM, CLONE_FS, CLONE_SIGHAND
// without CLONE_THREAD): ckpt would restore them as separate copies. A
// shared descriptor table (CLONE_FILES) is restored (see filesOwners), when
// each sharer's parent shares it too.
func checkSharing(pids []int) error {
	kinds := []struct {
		kcmp int
		what string
	}{{3, "cwd, root and umask (CLONE_FS)"}, {4, "signal handlers (CLONE_SIGHAND)"}}
	for i, a := range pids {
		for _, b := range pids[i+1:] {
			if r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(a), uintptr(b), 1 /* KCMP_VM */, 0, 0, 0); e == 0 && r == 0 && inVfork(a, b) {
				return fmt.Errorf("process %d is a vfork child of %d that has not exec'd yet (CLONE_VM): %w; retry in a moment", b, a, resource.ErrUnsupported)
			}
			for _, k := range kinds {
				r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(a), uintptr(b), uintptr(k.kcmp), 0, 0, 0)
				if e == 0 && r == 0 {
					return fmt.Errorf("processes %d and %d share one %s: %w yet", a, b, k.what, resource.ErrUnsupported)
				}
			}
		}
	}
	return nil
}

// filesOwners finds the processes that share a descriptor table
// (CLONE_FILES) with an earlier one of the tree, and maps each to the
// first process holding that table. The table is dumped once, with its
// owner; at restart each sharer is cloned with CLONE_FILES by its parent,
// which therefore must share the table as well.
func filesOwners(procs []*frozen) (map[int]int, error) {
	return sharers(procs, 2 /* KCMP_FILES */, "descriptor table")
}

// sharers groups processes by a kernel object they share (kcmp type kind),
// mapping each to the first process of its group, and checks that every
// sharer's parent shares the object too (so that clone can rebuild it).
func sharers(procs []*frozen, kind int, what string) (map[int]int, error) {
	owners := map[int]int{}
	for i, a := range procs {
		for _, b := range procs[:i] {
			if owners[b.pid] != 0 {
				continue // compare with owners only
			}
			r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(b.pid), uintptr(a.pid), uintptr(kind), 0, 0, 0)
			if e == 0 && r == 0 {
				owners[a.pid] = b.pid
				break
			}
		}
	}
	for pid, owner := range owners {
		st, err := proc.ReadStat(pid)
		if err != nil {
			return nil, err
		}
		if st.Ppid != owner && owners[st.Ppid] != owner {
			return nil, fmt.Errorf("process %d shares the %s of %d, but its parent %d does not: %w yet", pid, what, owner, st.Ppid, resource.ErrUnsupported)
		}
	}
	return owners, nil
}

// inVfork reports whether one of two processes sharing an address space
// is blocked in vfork (or a clone with CLONE_VFORK) waiting for the other:
// that kernel wait cannot be rebuilt.
func inVfork(a, b int) bool {
	for _, pid := range []int{a, b} {
		sc, err := proc.ReadFile(proc.Path(pid, "syscall"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(sc))
		if len(f) < 2 {
			continue
		}
		flags, _ := strconv.ParseUint(strings.TrimPrefix(f[1], "0x"), 16, 64)
		switch f[0] {
		case "58": // vfork
			return true
		case "56": // clone
			if flags&unix.CLONE_VFORK != 0 {
				return true
			}
		case "435": // clone3: its flags are in memory; assume the worst
			return true
		}
	}
	return false
}

// mmOwners maps each process that shares an address space (CLONE_VM) with
// an earlier process of the tree to the first one holding it. The address
// space is dumped once, with its owner; at restart each sharer is cloned
// with CLONE_VM by its parent, which therefore must share it as well.
func mmOwners(procs []*frozen) (map[int]int, error) {
	return sharers(procs, 1 /* KCMP_VM */, "address space")
}

// gone reports whether a process has vanished (exited and been reaped).
func gone(pid int) bool {
	_, err := os.Stat(proc.Path(pid, "stat"))
	return errors.Is(err, os.ErrNotExist)
}

// tree lists pid and its descendants, parents before children, leaving
// out process skip and its descendants (skip 0 leaves out nothing).
func tree(pid, skip int) ([]int, error) {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		kids, err := proc.Children(out[i])
		if err != nil {
			if proc.Gone(err) && i > 0 {
				continue // ended meanwhile
			}
			return nil, fmt.Errorf("list children of %d: %w", out[i], err)
		}
		sort.Ints(kids)
		for _, k := range kids {
			if k != skip || skip == 0 {
				out = append(out, k)
			}
		}
	}
	return out, nil
}

// Run checkpoints one process into opts.Out.
func Run(opts Options) (*Stats, error) {
	stats := Stats{}
	start := time.Now()
	stats.Phases.Start()
	opts.phases = &stats.Phases
	opts.vdso = resource.VdsoSymbolsAsync()
	var err error
	if opts.id, err = newID(); err != nil {
		return nil, err
	}
	if opts.self, err = resource.ReadSelf(); err != nil {
		return nil, fmt.Errorf("checkpoint %d: %w", opts.Pid, err)
	}
	if opts.SelfTid != 0 {
		if err := prepareSelf(&opts); err != nil {
			return nil, fmt.Errorf("checkpoint %d: %w", opts.Pid, err)
		}
	}
	if opts.undo, err = resource.NewUndoProbe(); err != nil {
		return nil, fmt.Errorf("checkpoint %d: %w", opts.Pid, err)
	}
	defer opts.undo.Close()
	opts.pre = newInspected()
	if err := preflight(opts.Pid, opts.skip(), opts.Container, opts.undo, opts.self, opts.pre); err != nil {
		return nil, fmt.Errorf("checkpoint %d: %w", opts.Pid, err)
	}
	if !opts.Container {
		wait := startLeakScan(&opts, opts.pre)
		defer wait()
	}
	stats.ID = opts.id
	if opts.SignalsArmed != nil {
		<-opts.SignalsArmed
	}
	stats.Phases.Mark("preflight")
	if err := opts.interrupted(); err != nil {
		return nil, fmt.Errorf("checkpoint %d: %w", opts.Pid, err)
	}
	err = ptrace.Run(func() error { return dump(&opts, &stats) })
	stats.Total = time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %d: %w", opts.Pid, err)
	}
	return &stats, nil
}

// frozen tracks what ckpt changed in the stopped target, so that release
// can undo exactly that.
type frozen struct {
	pid     int
	threads []*frozenThread // in seize order; threads[0] is the main thread
	// syscall is the syscall instruction of the process's own that calls
	// are injected at, code the code page ckpt mapped for them (0: none
	// now).
	syscall, code uint64
	isReleased    bool
	// jobStop is the signal that had the process stopped by job control
	// (Ctrl-Z), 0 if it ran.
	jobStop unix.Signal
	// suspendSeccomp: the process has seccomp filters; each thread gets
	// PTRACE_O_SUSPEND_SECCOMP once stopped, so that they let ckpt's
	// calls through, and they are read for the image.
	suspendSeccomp bool
	// vdso is the process's vDSO (start, end; 0, 0 if none): a thread
	// stopped inside it is stepped out (ptrace.StepOut), so that the image
	// restarts under another kernel's vDSO.
	vdso      [2]uint64
	frozenAt  time.Time
	frozenFor time.Duration
}

// frozenThread is one stopped thread and what ckpt borrowed from it.
type frozenThread struct {
	tid      int
	regs     ptrace.Regs
	sigmask  uint64
	maskSet  bool
	inj      *ptrace.Injector
	savedMem []byte // scratch bytes below the red zone, to put back
	target   *resource.Target
	// affinity is the thread's own CPU set, for the image, once pin has
	// read it; pinned says the thread is bound to the tracer's CPU for
	// now and gets affinity back at restore.
	affinity             ptrace.CPUSet
	affinityRead, pinned bool
}

// release puts every thread back as it was and lets the process run;
// stayFrozen: only detaches it (see frozenTree). Threads on their way back
// into a call are returned, for the caller to finish (ptrace.StartRelease).
func (f *frozen) release(stayFrozen bool) ([]*ptrace.Releasing, error) {
	if len(f.threads) == 0 || f.isReleased {
		return nil, nil
	}
	f.isReleased = true
	var errs []error
	var going []*ptrace.Releasing
	if f.code != 0 {
		errs = append(errs, f.unmapCode())
	}
	for _, th := range f.threads {
		// A process stopped by job control stays so on detach, and makes
		// its call only when continued.
		if err := th.restore(); err != nil || stayFrozen || f.jobStop != 0 {
			errs = append(errs, err, ptrace.Detach(th.tid, 0))
			continue
		}
		g, err := ptrace.StartRelease(th.tid, &th.regs)
		if g != nil {
			going = append(going, g)
		}
		errs = append(errs, err)
	}
	return going, errors.Join(errs...)
}

// afterRelease notes the frozen time once every thread is detached, and waits
// for a process stopped by job control to show it.
func (f *frozen) afterRelease(stayFrozen bool) {
	if len(f.threads) == 0 || f.frozenFor != 0 {
		return
	}
	f.frozenFor = time.Since(f.frozenAt)
	if f.jobStop != 0 && !stayFrozen {
		tids := make([]int, len(f.threads))
		for i, th := range f.threads {
			tids[i] = th.tid
		}
		proc.WaitJobStopped(f.pid, tids, time.Second)
	}
}

// restore undoes injection: scratch bytes, back into the interrupt stop,
// registers, signal mask.
func (th *frozenThread) restore() error {
	var errs []error
	if th.inj != nil {
		if th.savedMem != nil {
			errs = append(errs, th.target.WriteMem(th.target.Scratch, th.savedMem))
			th.savedMem = nil
		}
		errs = append(errs, th.inj.ReturnToInterruptStop())
		errs = append(errs, ptrace.SetRegs(th.tid, &th.regs))
		th.inj = nil
	}
	if th.maskSet {
		errs = append(errs, ptrace.SetSigmask(th.tid, th.sigmask))
		th.maskSet = false
	}
	if th.pinned {
		errs = append(errs, ptrace.SetAffinity(th.tid, &th.affinity))
		th.pinned = false
	}
	return errors.Join(errs...)
}

// pinTracer binds the tracing thread to its CPU for the freeze and the
// injected calls, which threads are then bound to as well
// (frozenThread.pin), and returns the function that unbinds it. Only for
// those: bound for the whole checkpoint, the tracer would compete for its
// one CPU with ckpt's other goroutines (the page writer, the leak scan).
func (o *Options) pinTracer() (unpin func()) {
	cpu, cpus, err := ptrace.PinSelf()
	if err != nil {
		return func() {}
	}
	o.cpu = cpu
	return func() {
		if o.cpu >= 0 {
			ptrace.SetAffinity(0, &cpus)
			o.cpu = -1
		}
	}
}

// pin reads the thread's CPU set, which the image records, and binds the
// thread to cpu, ckpt's tracing thread's, until the injected calls are
// done: each resume and stop is then a context switch rather than a
// cross-CPU wakeup (see ptrace/cpu.go). Bound before its interrupt, even
// the thread's wakeup into its first stop happens on the tracer's CPU: a
// wakeup on the other CPU, idle and so halted in a VM, cost ~1 ms there
// half of the time. A thread that cannot be bound there (a cpuset without
// that CPU) is left as it is, only slower.
func (th *frozenThread) pin(cpu int) (ptrace.CPUSet, error) {
	set, err := ptrace.Affinity(th.tid)
	if err != nil {
		return set, err
	}
	th.affinity, th.affinityRead = set, true
	if cpu < 0 || !set.IsSet(cpu) {
		return set, nil
	}
	th.pinned = ptrace.Pin(th.tid, cpu) == nil
	return set, nil
}

// freeze seizes and stops every thread of pid, listing the threads again
// until no new one appears (a running thread may start others meanwhile;
// stopped ones cannot).
func (f *frozen) freeze(cpu int) error {
	seen := map[int]bool{}
	for {
		tids, err := proc.Tasks(f.pid)
		if err != nil {
			return fmt.Errorf("list threads: %w", err)
		}
		fresh := 0
		for _, tid := range tids {
			if seen[tid] {
				continue
			}
			seen[tid] = true
			fresh++
			if err := ptrace.Seize(tid); err != nil {
				if errors.Is(err, unix.ESRCH) {
					continue // the thread ended meanwhile
				}
				if errors.Is(err, unix.EPERM) {
					return fmt.Errorf("%w (run ckpt as root or as the owner, and check kernel.yama.ptrace_scope)", err)
				}
				return err
			}
			if len(f.threads) == 0 {
				f.frozenAt = time.Now()
			}
			th := &frozenThread{tid: tid}
			f.threads = append(f.threads, th)
			if _, err := th.pin(cpu); err != nil {
				return err
			}
			if err := ptrace.Interrupt(tid); err != nil {
				return err
			}
			if err := f.waitInterrupted(tid); err != nil {
				return err
			}
		}
		if fresh == 0 {
			break
		}
	}
	return f.readRegs(true)
}

// readRegs records each stopped thread's registers and mask; with step,
// a thread inside the vDSO is first stepped out of it (not in a process
// stopped by job control, which must not run, nor under a freezer
// cgroup, where it cannot).
func (f *frozen) readRegs(step bool) error {
	if len(f.threads) == 0 || f.threads[0].tid != f.pid {
		return fmt.Errorf("main thread of %d has exited; processes whose main thread ended are %w", f.pid, resource.ErrUnsupported)
	}
	for _, th := range f.threads {
		var err error
		if th.regs, err = ptrace.GetRegs(th.tid); err != nil {
			return err
		}
		if th.sigmask, err = ptrace.GetSigmask(th.tid); err != nil {
			return err
		}
		if step && f.jobStop == 0 && th.regs.Rip >= f.vdso[0] && th.regs.Rip < f.vdso[1] {
			if err := ptrace.SetSigmask(th.tid, ^uint64(0)); err != nil {
				return err
			}
			th.maskSet = true
			r, err := ptrace.StepOut(f.pid, th.tid, f.vdso[0], f.vdso[1])
			if err != nil {
				return err
			}
			th.regs = r
		}
	}
	return nil
}

// seizeAll seizes and interrupts every thread of a process frozen by a
// cgroup (which cannot start threads), without waiting for the stops.
func (f *frozen) seizeAll() error {
	tids, err := proc.Tasks(f.pid)
	if err != nil {
		return fmt.Errorf("list threads: %w", err)
	}
	f.frozenAt = time.Now()
	for _, tid := range tids {
		if err := ptrace.Seize(tid); err != nil {
			return err
		}
		f.threads = append(f.threads, &frozenThread{tid: tid})
		if err := ptrace.Interrupt(tid); err != nil {
			return err
		}
	}
	return nil
}

// waitStopped waits for the interrupt stops seizeAll asked for.
func (f *frozen) waitStopped() error {
	for _, th := range f.threads {
		if err := f.waitInterrupted(th.tid); err != nil {
			return err
		}
	}
	return f.readRegs(false)
}

// waitInterrupted waits for thread tid's interrupt stop and notes
// whether job control has the process stopped.
func (f *frozen) waitInterrupted(tid int) error {
	sig, err := ptrace.WaitInterrupted(tid)
	if sig != 0 {
		f.jobStop = sig
	}
	if err == nil && f.suspendSeccomp {
		err = ptrace.SuspendSeccomp(tid, ptrace.TargetOptions)
	}
	return err
}

// frozenTree is every process of the checkpoint, in tree order.
type frozenTree struct {
	procs   []*frozen
	zombies []*proc.Stat
	// canSuspend says ckpt may set PTRACE_O_SUSPEND_SECCOMP; pre is what
	// preflight saw (which processes have seccomp filters).
	canSuspend bool
	pre        *inspected
	// stayFrozen says a freezer cgroup holds the processes on release:
	// they cannot run into their calls (ptrace.StartRelease) and are only
	// detached.
	stayFrozen bool
}

func (ft *frozenTree) release() error {
	var errs []error
	var going []*ptrace.Releasing
	for _, f := range ft.procs {
		g, err := f.release(ft.stayFrozen)
		going = append(going, g...)
		errs = append(errs, err)
	}
	for _, g := range going {
		errs = append(errs, g.Finish())
	}
	for _, f := range ft.procs {
		f.afterRelease(ft.stayFrozen)
	}
	return errors.Join(errs...)
}

// add records pid as a process of the tree: nil for a zombie (recorded as
// such) or a descendant that is gone already, otherwise a process to freeze.
func (ft *frozenTree) add(pid, root int) (*frozen, error) {
	st, err := proc.ReadStat(pid)
	if err != nil {
		if pid != root && proc.Gone(err) {
			return nil, nil
		}
		return nil, err
	}
	if st.State == 'Z' {
		ft.zombies = append(ft.zombies, st)
		return nil, nil
	}
	f := &frozen{pid: pid, suspendSeccomp: ft.filtered(pid), vdso: ft.vdsoOf(pid)}
	ft.procs = append(ft.procs, f)
	return f, nil
}

// vdsoOf returns the bounds of process pid's vDSO, as preflight saw them,
// or for a process started since, as its maps say now.
func (ft *frozenTree) vdsoOf(pid int) [2]uint64 {
	vmas, seen := []proc.Vma(nil), false
	if ft.pre != nil {
		vmas, seen = ft.pre.areas[pid]
	}
	if !seen {
		vmas, _ = proc.ReadMaps(pid)
	}
	for _, v := range vmas {
		if v.Name == "[vdso]" {
			return [2]uint64{v.Start, v.End}
		}
	}
	return [2]uint64{}
}

// filtered reports whether process pid has seccomp filters, as preflight
// saw, or for one started since, as /proc says now (it inherited them).
func (ft *frozenTree) filtered(pid int) bool {
	if !ft.canSuspend {
		return false // preflight refused any
	}
	if ft.pre != nil {
		if _, seen := ft.pre.areas[pid]; seen {
			return ft.pre.seccomp[pid]
		}
	}
	st, err := proc.ReadStatus(pid)
	return err == nil && st["Seccomp"] == "2"
}

// freezeWith seizes and interrupts every task of a tree frozen by a
// cgroup, calls thaw, and waits for all the interrupt stops.
func (ft *frozenTree) freezeWith(root int, thaw func() error) error {
	pids, err := tree(root, 0)
	if err != nil {
		return err
	}
	for _, pid := range pids {
		f, err := ft.add(pid, root)
		if err != nil {
			return err
		}
		if f == nil {
			continue
		}
		if err := f.seizeAll(); err != nil {
			return fmt.Errorf("process %d: %w", pid, err)
		}
	}
	if err := thaw(); err != nil {
		return err
	}
	for _, f := range ft.procs {
		if err := f.waitStopped(); err != nil {
			return fmt.Errorf("process %d: %w", f.pid, err)
		}
	}
	return nil
}

// freeze stops the whole tree but the subtree of skip, walking it again
// until no process appears that is not frozen (a running process can fork
// until it is stopped).
func (ft *frozenTree) freeze(root, skip, cpu int) error {
	seen := map[int]bool{}
	for {
		pids, err := tree(root, skip)
		if err != nil {
			return err
		}
		fresh := false
		for _, pid := range pids {
			if seen[pid] {
				continue
			}
			seen[pid], fresh = true, true
			f, err := ft.add(pid, root)
			if err != nil {
				return err
			}
			if f == nil {
				continue
			}
			if err := f.freeze(cpu); err != nil {
				return fmt.Errorf("process %d: %w", pid, err)
			}
		}
		if !fresh {
			return nil
		}
	}
}

func dump(opts *Options, stats *Stats) (err error) {
	opts.cpu = -1
	ft := &frozenTree{canSuspend: opts.self.SuspendsSeccomp(), pre: opts.pre}
	var leaks []*pb.Leak
	subtreeLeaks := opts.subtreeLeaks
	// The tracer is bound to its CPU from the freeze to the end of the
	// injected calls (see pinTracer).
	unpin := opts.pinTracer()
	defer unpin()
	var fz *freezer
	if opts.Freezer != "" {
		if fz, err = openFreezer(opts.Freezer); err != nil {
			return err
		}
		if !fz.contains(opts.Pid) {
			return fmt.Errorf("process %d is not in the freezer cgroup %s", opts.Pid, opts.Freezer)
		}
	}
	defer func() {
		// Tasks the user froze stay frozen: freeze again before releasing.
		if fz != nil && fz.wasFrozen && !opts.Kill {
			if ferr := fz.set(true); ferr != nil && err == nil {
				err = ferr
			}
			ft.stayFrozen = true
		}
		if rerr := ft.release(); rerr != nil && err == nil {
			err = fmt.Errorf("release processes: %w", rerr)
		}
		if fz != nil && fz.wasFrozen && opts.Kill {
			fz.set(false) // killed tasks must be thawed to die
		}
		if len(ft.procs) > 0 {
			stats.Frozen = ft.procs[0].frozenFor
		}
	}()
	if fz != nil && !fz.wasFrozen {
		if err := fz.set(true); err != nil {
			return err
		}
	}
	if fz != nil {
		// Seize the frozen tasks (the interrupt stops wait for the thaw),
		// then thaw: every task goes straight into its ptrace stop.
		err := ft.freezeWith(opts.Pid, func() error { return fz.set(false) })
		if err != nil {
			fz.set(false)
			return err
		}
	} else if err := ft.freeze(opts.Pid, opts.skip(), opts.cpu); err != nil {
		return err
	}
	opts.mark("freeze")
	if err := opts.fault("seized"); err != nil {
		return err
	}
	if err := opts.interrupted(); err != nil {
		return err
	}
	if err := checkSelf(opts, ft); err != nil {
		return err
	}
	files := resource.NewFileSet()
	// TCP connections stay in repair mode until the processes are killed
	// (then they close without a word to their peers); otherwise, or if
	// the checkpoint fails, they leave it before the processes run on.
	files.KeepRepair = opts.Kill
	defer func() {
		if rerr := files.EndRepair(opts.Kill && err == nil); rerr != nil && err == nil {
			err = rerr
		}
	}()
	var procs []*pb.Process
	var mms []*pb.Mm
	// IPC namespaces of the tree's own, before the injected burst reads
	// their undo lists.
	ipc, err := dumpOwnIPC(ft, opts.self.Ns.Ipc)
	if err != nil {
		return err
	}
	owners, err := filesOwners(ft.procs)
	if err != nil {
		return err
	}
	vmOwners, err := mmOwners(ft.procs)
	if err != nil {
		return err
	}
	procs, mms, dumped, err := collect(opts, ft.procs, files, owners, vmOwners, ipc.of)
	if err != nil {
		return err
	}
	stdio := map[uint32]bool{}
	for _, fd := range procs[0].Fds {
		if fd.Fd <= 2 {
			stdio[fd.FileId] = true
		}
	}
	if err := files.CheckSocketPeers(stdio); err != nil {
		return err
	}
	for _, z := range ft.zombies {
		procs = append(procs, &pb.Process{Pid: uint32(z.Pid), Ppid: uint32(z.Ppid), Pgid: uint32(z.Pgrp), Sid: uint32(z.Session),
			Comm: z.Comm, ExitSignal: uint32(z.ExitSignal), Zombie: true, ExitCode: uint32(z.ExitCode)})
	}
	unpin()
	opts.mark("collect")
	if err := ipc.dumpHostIPC(opts, ft, procs, mms); err != nil {
		return err
	}
	var rootNs *pb.NsIds
	for _, p := range procs {
		if int(p.Pid) == opts.Pid {
			rootNs = p.Ns
		}
	}
	if rootNs == nil {
		return fmt.Errorf("process %d is not among those dumped", opts.Pid)
	}
	outer, nested, err := outerOf(opts.self.Ns, rootNs, opts.Pid, opts.Container)
	if err != nil {
		return err
	}
	namespaces, nets, err := collectNamespaces(procs, outer)
	if err != nil {
		return err
	}
	if opts.Container {
		// Correctness matters here: scan with the container frozen.
		var pids []int
		for _, f := range ft.procs {
			pids = append(pids, f.pid)
		}
		for _, z := range ft.zombies {
			pids = append(pids, z.Pid)
		}
		if leaks, err = findLeaks(pids, ownNamespaces(namespaces), opts.self.Ns.Ipc); err != nil {
			return err
		}
	}
	opts.mark("namespaces")
	if len(leaks) > 0 && opts.Container {
		return fmt.Errorf("the container shares with processes outside it what a restart cannot share again: %s; end the sharing, then checkpoint again", describeLeaks(leaks))
	}

	rootPid := uint32(opts.Pid)
	if opts.Container || nested {
		inner, err := translatePids(procs)
		if err != nil {
			return err
		}
		ipc.translate(inner)
		rootPid = procs[0].Pid
	}
	hdr := newHeader(rootPid, outer, opts.Container)
	// Without them a restart under another kernel could not tell that its
	// vDSO differs (only by its size); an image without them is still whole.
	hdr.VdsoSymbols = opts.vdso()
	hdr.CheckpointId, hdr.SelfTid = opts.id, uint32(opts.SelfTid)

	out := opts.Out
	var enc *zstd.Encoder
	if opts.Compress {
		if enc, err = image.NewCompressor(out); err != nil {
			return err
		}
		out = enc
	}
	w, err := image.NewWriter(out)
	if err != nil {
		return err
	}
	w.Progress = opts.Progress
	// Without --kill (and a freezer to re-freeze), the processes may run
	// on as soon as their memory is in the image, before its last records.
	var thaw func() error
	if !opts.Kill && fz == nil {
		thaw = ft.release
	}
	if err := writeImage(opts, w, hdr, namespaces, nets, subtreeLeaks, thaw, dumped, procs, mms, files, ipc); err != nil {
		if ferr := w.Fail(err); ferr != nil && opts.Warn != nil {
			opts.Warn("could not record the failure in the image: " + ferr.Error())
		}
		if enc != nil {
			enc.Close()
		}
		return err
	}
	if enc != nil {
		// The image is complete only once the compressed stream is.
		if err := enc.Close(); err != nil {
			return fmt.Errorf("write compressed image: %w", err)
		}
	}
	stats.Bytes = w.Offset()
	opts.mark("finish image")
	if opts.Kill {
		// The last moment to change one's mind: the image is whole, the
		// processes still stopped.
		if err := opts.interrupted(); err != nil {
			return err
		}
		defer opts.mark("kill")
		// Kill while still stopped: no process runs past the image.
		// Freeing a big address space takes the dying process a while
		// (~0.1 s for 1 GiB here); process_mrelease frees it from this
		// thread at the same time, on the other core (1 GiB: 106 -> 58
		// ms). Best effort: a kernel without it, or memory shared with
		// another process, just leaves the work to the exit.
		var pidfds []int
		defer func() {
			for _, fd := range pidfds {
				unix.Close(fd)
			}
		}()
		for _, f := range ft.procs {
			if fd, err := unix.PidfdOpen(f.pid, 0); err == nil {
				pidfds = append(pidfds, fd)
			}
		}
		for _, f := range ft.procs {
			f.isReleased = true
			f.frozenFor = time.Since(f.frozenAt)
			if err := unix.Kill(f.pid, unix.SIGKILL); err != nil {
				return fmt.Errorf("kill %d: %w", f.pid, err)
			}
		}
		for _, fd := range pidfds {
			unix.Syscall(unix.SYS_PROCESS_MRELEASE, uintptr(fd), 0, 0)
		}
		// Consume the tracer's exit reports so that parents can reap,
		// as they come (ptrace.ReapKilled: a dying PID-namespace init
		// waits for the rest of its namespace to be reaped, ckpt's traced
		// zombies included).
		var tids []int
		for _, f := range ft.procs {
			for _, th := range f.threads {
				tids = append(tids, th.tid)
			}
		}
		ptrace.ReapKilled(tids, 10*time.Second)
		// The processes are dead now, their memory freed. Their parents
		// reap them in their own time: a restart that follows at once
		// waits for that (restart's checkPidFree), not ckpt, which thus
		// returns a parent's reaction time (0.2-0.9 ms here) sooner.
	}
	return nil
}

// collect reads the frozen processes: each one's injected calls, one
// process after another, on this (the tracing) thread, and meanwhile, for
// a tree, their /proc files on another goroutine (readProc), which the
// second core runs (the tracer and its targets are bound to the first);
// once its calls are done, this thread reads the /proc files of the
// processes the other has not reached, from the last back. owners and
// vmOwners map the processes that share a descriptor table or an address
// space with an earlier one to it; a sharer gets no Mm of its own. It
// returns the processes, the address spaces, and the processes these
// belong to.
func collect(opts *Options, procs []*frozen, files *resource.FileSet, owners, vmOwners map[int]int, ipcOf map[int]*pb.IpcNamespace) (out []*pb.Process, mms []*pb.Mm, dumped []*frozen, err error) {
	n := len(procs)
	out = make([]*pb.Process, n)
	mmID := make([]uint32, n)
	var next uint32
	for i, f := range procs {
		out[i] = &pb.Process{Pid: uint32(f.pid), FilesOwner: uint32(owners[f.pid]), MmOwner: uint32(vmOwners[f.pid]), JobStop: uint32(f.jobStop)}
		if vmOwners[f.pid] == 0 {
			next++
			mmID[i] = next
		} else {
			for j := range procs[:i] {
				if procs[j].pid == vmOwners[f.pid] {
					mmID[i] = mmID[j]
				}
			}
		}
		out[i].MmId = mmID[i]
	}
	// synced[i] is closed once readProc may read process i's descriptors
	// and maps (see collectInjected); abort stops readProc.
	synced := make([]chan struct{}, n)
	for i := range synced {
		synced[i] = make(chan struct{})
	}
	abort := make(chan struct{})
	mmOf := make([]*pb.Mm, n)
	// Each process's /proc files are read once, by whichever goroutine
	// claims it first: the reader from the first process on, and the
	// tracer, once its injected calls are done, from the last back (the
	// reader shares its core with the leak scan and is the longer path).
	claimed := make([]atomic.Bool, n)
	rerrs := make([]error, n)
	readFrom := func(i, step int) {
		for ; i >= 0 && i < n; i += step {
			if !claimed[i].CompareAndSwap(false, true) {
				continue
			}
			f := procs[i]
			var err error
			if mmOf[i], err = readProc(f.pid, out[i], files, synced[i], abort, vmOwners[f.pid] == 0, opts.pre.areas[f.pid]); err != nil {
				rerrs[i] = fmt.Errorf("process %d: %w", f.pid, err)
				return
			}
		}
	}
	// One process gains nothing: its /proc files take as long as its
	// injected calls, and the goroutine would share the second core
	// with the leak scan.
	read := make(chan struct{})
	if n > 1 {
		go func() { readFrom(0, 1); close(read) }()
	}
	brk := make([]uint64, n)
	for i, f := range procs {
		if err = opts.interrupted(); err != nil {
			break
		}
		if err = collectInjected(opts, f, out[i], &brk[i], ipcOf[f.pid], synced[i]); err != nil {
			err = fmt.Errorf("process %d: %w", f.pid, err)
			break
		}
	}
	close(abort)
	if err == nil {
		readFrom(n-1, -1)
	}
	if n > 1 {
		<-read
	}
	for _, rerr := range rerrs {
		if err == nil {
			err = rerr
		}
	}
	if err != nil {
		return nil, nil, nil, err
	}
	for i, mm := range mmOf {
		if mm != nil {
			mm.Id, mm.Brk = mmID[i], brk[i]
			mms, dumped = append(mms, mm), append(dumped, procs[i])
		}
	}
	return out, mms, dumped, nil
}

// sessionOrphan reports whether pid's session sid has lost its leader,
// so that a restart must re-create the session around it (a daemon that
// forked twice). Session 0 is not one: its leader lives in an ancestor PID
// namespace, out of ckpt's sight (a process started by a container's
// init that never called setsid), and the restored process stays in
// ckpt's session, as one whose leader is outside the image does.
func sessionOrphan(pid, sid int) bool {
	if sid == pid || sid == 0 {
		return false
	}
	leader, err := proc.ReadStat(sid)
	return err != nil || leader.Session != sid
}

// readProc reads what /proc tells of the frozen process pid into p, and,
// when withMm, its address space. Its descriptors and maps wait for
// synced (the injected timerfd_gettime calls done, no code page mapped);
// abort ends the wait.
func readProc(pid int, p *pb.Process, files *resource.FileSet, synced, abort chan struct{}, withMm bool, pre []proc.Vma) (*pb.Mm, error) {
	st, err := proc.ReadStat(pid)
	if err != nil {
		return nil, err
	}
	p.Ppid, p.Pgid, p.Sid, p.ExitSignal = uint32(st.Ppid), uint32(st.Pgrp), uint32(st.Session), uint32(st.ExitSignal)
	if st.TtyNr != 0 && st.Tpgid > 0 {
		p.TtyFgPgid = uint32(st.Tpgid)
	}
	p.SessionOrphan = sessionOrphan(pid, st.Session)
	if err := resource.DumpTask(pid, p); err != nil {
		return nil, err
	}
	if p.Ns, err = resource.ReadNsIds(pid); err != nil {
		return nil, err
	}
	select {
	case <-synced:
	case <-abort:
		select {
		case <-synced: // both closed: the injected side is done
		default:
			return nil, errAborted
		}
	}
	if p.FilesOwner == 0 {
		if err := resource.DumpFiles(pid, p, files); err != nil {
			return nil, err
		}
	}
	if !withMm {
		return nil, nil
	}
	// The program break is set by the caller, from an injected brk(0).
	return resource.DumpMm(pid, 0, files, pre)
}

// errAborted ends a readProc whose injected side failed.
var errAborted = errors.New("aborted")

// collectInjected reads what only the process itself can tell, with
// system calls injected into each thread, and puts the registers back.
// The calls run in a code page mapped for them where that pays (see
// codeWorthIt); synced is closed for readProc, which reads the process's
// descriptors and maps, once the timerfds are synced and no code page is
// mapped.
func collectInjected(opts *Options, f *frozen, p *pb.Process, brk *uint64, ipcNs *pb.IpcNamespace, synced chan struct{}) error {
	addr, err := syscallInsn(f.pid, &f.threads[0].regs)
	if err != nil {
		return err
	}
	sets, err := resource.ReadSignalSets(f.pid)
	if err != nil {
		return err
	}
	f.syscall = addr
	// readProc may read the descriptors once the timerfds are synced, and
	// the maps once the code page is gone (never mapped, for most).
	release := sync.OnceFunc(func() { close(synced) })
	for i, th := range f.threads {
		if err := th.prepare(opts, f.pid, addr); err != nil {
			return err
		}
		if i == 0 && codeWorthIt(sets, len(f.threads)) {
			if err := f.mapCode(); err != nil {
				return err
			}
		}
		if err := f.useCode(th, sets); err != nil {
			return err
		}
		if i == 0 {
			// Timerfds first: their expirations are counted when read.
			if err := resource.SyncTimerfds(th.target); err != nil {
				return err
			}
			if f.code == 0 {
				release()
			}
			if *brk, err = resource.DumpPrctls(th.target, p); err != nil {
				return err
			}
			if err := resource.DumpSignals(th.target, p, sets); err != nil {
				return err
			}
			if err := resource.DumpPosixTimers(th.target, p); err != nil {
				return err
			}
		}
		dt, err := resource.DumpThread(th.target, th.tid, th.regs, th.sigmask)
		if err != nil {
			return fmt.Errorf("thread %d: %w", th.tid, err)
		}
		if f.suspendSeccomp {
			if err := resource.DumpSeccomp(p, th.tid, len(p.Threads) == 0); err != nil {
				return err
			}
		}
		dt.Cpus = resource.CPUWords(&th.affinity)
		if opts.SelfTid == th.tid {
			if err := resource.SelfReturn(dt, th.regs, opts.selfReadFd); err != nil {
				return err
			}
		}
		p.Threads = append(p.Threads, dt)
	}
	if ipcNs != nil {
		var targets []*resource.Target
		var tids []int
		for _, th := range f.threads {
			targets, tids = append(targets, th.target), append(tids, th.tid)
		}
		if err := resource.DumpSemUndo(opts.undo, ipcNs, f.pid, targets, tids); err != nil {
			return err
		}
	}
	if err := opts.fault("injected"); err != nil {
		return err
	}
	if err := f.unmapCode(); err != nil {
		return err
	}
	release()
	for _, th := range f.threads {
		if err := th.restore(); err != nil {
			return fmt.Errorf("thread %d: %w", th.tid, err)
		}
	}
	return nil
}

// prepare readies a stopped thread for injected calls at the syscall
// instruction addr: signals blocked, so that none is delivered at our
// calls, and the thread bound to the tracer's CPU.
func (th *frozenThread) prepare(opts *Options, pid int, addr uint64) error {
	if err := ptrace.SetSigmask(th.tid, ^uint64(0)); err != nil {
		return err
	}
	th.maskSet = true
	if !th.affinityRead { // seized by a freezer cgroup's path
		if _, err := th.pin(opts.cpu); err != nil {
			return err
		}
	}
	th.inj = &ptrace.Injector{Tid: th.tid, SyscallAddr: addr, Base: th.regs}
	th.target = &resource.Target{Pid: pid, Inj: th.inj}
	return nil
}

// newHeader describes the image and the machine it comes from.
func newHeader(rootPid uint32, outer *pb.NsIds, container bool) *pb.Header {
	host, _ := os.Hostname()
	var uts unix.Utsname
	unix.Uname(&uts)
	hdr := &pb.Header{
		FormatVersion: image.FormatVersion, Arch: runtime.GOARCH, PageSize: image.PageSize,
		Kernel:      unix.ByteSliceToString(uts.Release[:]) + " " + unix.ByteSliceToString(uts.Version[:]),
		ToolVersion: Version, TimeUnixNano: time.Now().UnixNano(), Hostname: host, RootPid: rootPid,
		OuterNs: outer, Container: container, XstateLayout: xstateLayout(),
	}
	return hdr
}

// xstateLayout is this CPU's XSAVE layout, for a restart on another CPU
// to move the threads' vector registers (ptrace.XstateFitter).
func xstateLayout() []*pb.XstateComponent {
	var l []*pb.XstateComponent
	for _, c := range ptrace.XstateLayout() {
		l = append(l, &pb.XstateComponent{Feature: c.Feature, Offset: c.Offset, Size: c.Size})
	}
	return l
}

// thaw, if set, lets the processes go once everything of theirs is in
// the image, before the leaks record (which may still be being looked for)
// and the tail.
func writeImage(opts *Options, w *image.Writer, hdr *pb.Header, namespaces []*pb.Namespace, nets []*pb.NetNamespace, leaks func() ([]*pb.Leak, error), thaw func() error, dumped []*frozen, procs []*pb.Process, mms []*pb.Mm, files *resource.FileSet, ipc *ipcDump) error {
	if err := w.Message(image.TypeHeader, hdr); err != nil {
		return err
	}

	// The root's own mount table (and tmpfs contents) first: restart
	// mounts it before it opens any file.
	if root := procs[0]; root.Ns != nil && hdr.OuterNs != nil && root.Ns.Mnt != hdr.OuterNs.Mnt {
		if _, err := resource.DumpMountNamespace(opts.Pid, w); err != nil {
			return err
		}
	}
	// Namespaces first: restart creates them before it opens any file.
	for _, ns := range namespaces {
		if err := w.Message(image.TypeNamespace, ns); err != nil {
			return err
		}
	}
	for _, ns := range nets {
		if err := w.Message(image.TypeNetNamespace, ns); err != nil {
			return err
		}
	}
	if err := files.Write(w); err != nil {
		return err
	}
	// SysV IPC objects before the areas that attach them.
	for _, rec := range ipc.recs {
		if err := w.Message(image.TypeIPC, rec); err != nil {
			return err
		}
	}
	// Every process before any page, so that a restorer can build the
	// whole tree, then stream pages into it.
	for _, mm := range mms {
		if err := w.Message(image.TypeMm, mm); err != nil {
			return err
		}
	}
	for _, p := range procs {
		if err := w.Message(image.TypeProcess, p); err != nil {
			return err
		}
	}
	opts.mark("metadata")
	if err := opts.fault("pages"); err != nil {
		return err
	}
	if opts.Reserve != nil && !opts.Compress {
		var n uint64
		for _, f := range dumped {
			for _, v := range opts.pre.areas[f.pid] {
				if !v.Shared() {
					n += v.Anon
				}
			}
		}
		opts.Reserve(n)
	}
	pw := resource.NewPageWriter(w)
	pw.Stop = opts.interrupted
	for i, f := range dumped {
		t := &resource.Target{Pid: f.pid} // pages are read by host PID
		if err := resource.DumpPages(t, mms[i], pw); err != nil {
			pw.Close()
			return fmt.Errorf("process %d: %w", f.pid, err)
		}
	}
	if err := pw.Close(); err != nil {
		return err
	}
	opts.mark("memory")
	if err := resource.DumpShmem(files, w); err != nil {
		return err
	}
	for _, rec := range ipc.recs {
		if err := resource.DumpIPCShmPages(ipc.pidIn[rec.Ns], rec, w); err != nil {
			return err
		}
	}
	if thaw != nil {
		if err := thaw(); err != nil {
			return fmt.Errorf("release processes: %w", err)
		}
	}
	if leaks != nil {
		l, err := leaks()
		if err != nil {
			return fmt.Errorf("look for what the tree shares with other processes: %w", err)
		}
		if len(l) > 0 {
			if err := w.Message(image.TypeLeaks, &pb.Leaks{Leaks: l}); err != nil {
				return err
			}
		}
	}
	if err := opts.fault("tail"); err != nil {
		return err
	}
	return w.Close()
}

// syscallInsn finds a `syscall` instruction in the target to inject at:
// the one the thread is stopped behind, or one in the vDSO.
func syscallInsn(pid int, regs *ptrace.Regs) (uint64, error) {
	t := &resource.Target{Pid: pid}
	var b [2]byte
	if int64(regs.Orig_rax) >= 0 && t.ReadMem(regs.Rip-2, b[:]) == nil && b == [2]byte{0x0f, 0x05} {
		return regs.Rip - 2, nil
	}
	vmas, err := proc.ReadMaps(pid)
	if err != nil {
		return 0, err
	}
	// Prefer the vDSO, then any other executable area.
	for pass := 0; pass < 2; pass++ {
		for _, v := range vmas {
			if !v.Exec() || !v.Read() || (pass == 0) != (v.Name == "[vdso]") || v.End-v.Start > 64<<20 {
				continue
			}
			buf := make([]byte, v.End-v.Start)
			if t.ReadMem(v.Start, buf) != nil {
				continue
			}
			for i := 0; i+1 < len(buf); i++ {
				if buf[i] == 0x0f && buf[i+1] == 0x05 {
					return v.Start + uint64(i), nil
				}
			}
		}
	}
	return 0, fmt.Errorf("no syscall instruction found in process %d to run system calls with", pid)
}
