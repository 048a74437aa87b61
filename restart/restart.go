// Package restart rebuilds processes from an image stream.
//
// The restorer never runs target code in its own (multi-threaded Go)
// process. Each process is built inside a stub (see stub.go): ckpt creates
// the tree with the original PIDs by injecting clone3 with set_tid into the
// parents' stubs, then in each stub moves the stub's own code to a free
// spot, unmaps the rest, maps the image's areas, streams pages in as they
// arrive, restores files, signals, limits, credentials, threads and
// registers, and finally lets every process go.
//
// A failed restart kills every stub it created: nothing half-built remains.
package restart

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/internal/fault"
	"github.com/ckpt/ckpt/internal/phase"
	"github.com/ckpt/ckpt/proc"
	"github.com/ckpt/ckpt/ptrace"
	"github.com/ckpt/ckpt/resource"
)

// Options control one restart.
type Options struct {
	In io.Reader
	// phases, set by Run, times the restart.
	phases *phase.Phases
	// Warn reports non-fatal findings; nil discards them.
	Warn func(string)
	// Fault, for tests: fail at a named point (see package fault).
	Fault string
	// Terminal, if set, is the terminal descriptors that were on a terminal
	// are reopened on (the one ckpt restart runs in).
	Terminal *os.File
	// Stdio are ckpt's own descriptors 0, 1 and 2 that the root process
	// may inherit in place of pipes to processes outside the image
	// (resource.OpenFiles.InheritStdio); nil entries are not given.
	Stdio [3]*os.File
	// Foreground makes the restored job the terminal's foreground process
	// group, if it was the foreground of its terminal at checkpoint.
	Foreground bool
	// Progress, if set, counts the image bytes read so far.
	Progress *atomic.Uint64
	// SignalsArmed, if set, is closed once the caller catches the signals
	// it forwards to the restored process or stops the restart with; Run
	// waits for it before it creates any process. (Catching them takes a
	// while, which this lets overlap the reading of the image.)
	SignalsArmed <-chan struct{}
	// IgnoreCPU restarts an image from a CPU with vector registers this one
	// lacks, dropping their state (see ptrace.CheckFeatures).
	IgnoreCPU bool
	// VdsoProxy, for tests, puts a vDSO proxy in place even when the
	// image's vDSO is this kernel's (see resource/vdso.go).
	VdsoProxy bool

	// xstate lays the image's vector registers out for this CPU (set by
	// restore once the header is read).
	xstate *ptrace.XstateFitter
	// vdso waits for the functions of this kernel's vDSO, read on the side
	// (set by Run).
	vdso func() []*pb.VdsoSymbol
	// user is the state of an unprivileged restart (nil for root).
	user *userNS
	// selfCaps are ckpt's capability sets, which its stubs inherit: read
	// at the first process whose image records its own.
	selfCaps *pb.Caps
	// cpus, if set, is the CPU set ckpt's tracing thread had before it was
	// bound to one CPU. The stubs inherit the binding; before they run,
	// restored threads get their recorded set back, or cpus when the image
	// has none or this machine cannot honour it (restoreCPUs).
	cpus *ptrace.CPUSet
}

// Result describes a restored process.
type Result struct {
	Pid   int
	Comm  string
	Total time.Duration
	// Phases is where the time went, in order.
	Phases phase.Phases
	// init, in an unprivileged restart, is the first stub that stays the
	// init of the new PID namespace (ckpt's child instead of the root),
	// and status the pipe it reports the root's wait status on.
	init   int
	status *os.File
}

func (o *Options) fault(point string) error { return fault.At(o.Fault, point) }

// Run restores the image read from opts.In and releases the process. It
// is ckpt's child afterwards.
func Run(opts Options) (*Result, error) {
	start := time.Now()
	var phases phase.Phases
	phases.Start()
	opts.phases = &phases
	opts.vdso = resource.VdsoSymbolsAsync()
	var res *Result
	err := ptrace.Run(func() error {
		var err error
		res, err = restore(&opts)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("restart: %w", err)
	}
	res.Total = time.Since(start)
	res.Phases = phases
	return res, nil
}

// mark ends a phase of the restart.
func (o *Options) mark(name string) { o.phases.Mark(name) }

// warn reports a non-fatal finding through Warn, if set.
func (o *Options) warn(msg string) {
	if o.Warn != nil {
		o.Warn(msg)
	}
}

// task is one process of the image during its restore.
type task struct {
	p        *pb.Process
	mm       *pb.Mm
	s        *stub
	pull     *resource.FdPuller
	children []*task
	targets  []*resource.Target // one per thread, filled by finish
	// table is the descriptor table the process uses: its own, or that of
	// the process it shares it with (CLONE_FILES).
	table      []*pb.Fd
	filesOwner *task
	// mmOwner is the task whose address space this one shares (CLONE_VM),
	// and mmSharers the tasks sharing this one's.
	mmOwner   *task
	mmSharers []*task
	// root is the tree's first process, whose parent at restart is ckpt.
	root bool
}

func restore(opts *Options) (res *Result, err error) {
	r, err := image.NewReader(opts.In)
	if err != nil {
		return nil, err
	}
	if err := r.CheckCurrent(); err != nil {
		return nil, err
	}
	r.Progress = opts.Progress
	opts.xstate = ptrace.NewXstateFitter(xstateLayout(r.Header), opts.IgnoreCPU)
	// Stubs and the tracer on one CPU: every injected call's resume and
	// stop is then a context switch, not a cross-CPU wakeup (ptrace/cpu.go).
	// Without the binding the restart just runs slower.
	if _, cpus, err := ptrace.PinSelf(); err == nil {
		opts.cpus = &cpus
	}
	if os.Geteuid() != 0 {
		opts.user = &userNS{}
		defer opts.user.close()
	}
	files := resource.NewOpenFiles()
	files.Terminal = opts.Terminal
	defer files.Close()
	mms := map[uint32]*pb.Mm{}
	nss := &namespaces{}
	var tasks []*task
	byMm := map[uint32]*task{}
	built := false
	var created []*stub // every stub, in creation order, for cleanup
	defer func() {
		if err != nil {
			for i := len(created) - 1; i >= 0; i-- {
				created[i].kill()
			}
			if opts.user != nil && opts.user.init != nil {
				opts.user.init.kill()
			}
		}
	}()
	var pm *pb.PageMap
	buf := make([]byte, 4<<20)
	// pr writes the processes' pages while the next are read (started at
	// the first PAGES record of a process); it is closed, every page
	// written, before anything depends on them.
	var pr *resource.PageRestorer
	defer func() {
		if pr != nil {
			pr.Close()
		}
	}()
	var ipc ipcState
	defer func() {
		if err != nil {
			ipc.abort()
		}
	}()
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if built && (rec.Type == image.TypeFile || rec.Type == image.TypeMm || rec.Type == image.TypeProcess || rec.Type == image.TypeNamespace || rec.Type == image.TypeNetNamespace || rec.Type == image.TypeIPC || rec.Type == image.TypeMountNs || rec.Type == image.TypeMountFile || rec.Type == image.TypeFileData) {
			return nil, fmt.Errorf("image damaged: %v record at byte %d after the pages began", rec.Type, rec.Offset)
		}
		switch rec.Type {
		case image.TypeNamespace:
			ns := &pb.Namespace{}
			if err := image.Unmarshal(rec, ns); err != nil {
				return nil, err
			}
			if err := nss.add(ns); err != nil {
				return nil, err
			}
		case image.TypeFile:
			f := &pb.File{}
			if err := image.Unmarshal(rec, f); err != nil {
				return nil, err
			}
			if err := files.Add(f); err != nil {
				return nil, err
			}
		case image.TypeFileData:
			d := &pb.FileData{}
			if err := image.Unmarshal(rec, d); err != nil {
				return nil, err
			}
			// Without a mount table of the image's own, the file is made
			// at its path now; otherwise held until the mounts exist.
			if err := files.AddData(d, nss.mounts == nil); err != nil {
				return nil, err
			}
		case image.TypeMm:
			mm := &pb.Mm{}
			if err := image.Unmarshal(rec, mm); err != nil {
				return nil, err
			}
			if err := resource.ValidateMm(mm); err != nil {
				return nil, err
			}
			if mm.Id == 0 || mms[mm.Id] != nil {
				return nil, fmt.Errorf("image damaged: address space id %d twice or zero", mm.Id)
			}
			mms[mm.Id] = mm
		case image.TypeProcess:
			p := &pb.Process{}
			if err := image.Unmarshal(rec, p); err != nil {
				return nil, err
			}
			t := &task{p: p}
			if !p.Zombie {
				t.mm = mms[p.MmId]
				if err := validateProcess(p, t.mm); err != nil {
					return nil, err
				}
				if (byMm[p.MmId] != nil) != (p.MmOwner != 0) {
					return nil, fmt.Errorf("image damaged: address space %d of process %d", p.MmId, p.Pid)
				}
				if p.MmOwner == 0 {
					byMm[p.MmId] = t
				}
			}
			tasks = append(tasks, t)
		case image.TypeMountNs:
			ns := &pb.MountNamespace{}
			if err := image.Unmarshal(rec, ns); err != nil {
				return nil, err
			}
			if nss.mounts != nil {
				return nil, fmt.Errorf("image damaged: two mount tables")
			}
			if nss.mounts, err = resource.PrepareMounts(ns); err != nil {
				return nil, err
			}
			defer nss.mounts.Close()
		case image.TypeMountFile:
			f := &pb.MountFile{}
			if err := image.Unmarshal(rec, f); err != nil {
				return nil, err
			}
			if nss.mounts == nil {
				return nil, fmt.Errorf("image damaged: a mount file before the mount table")
			}
			if err := nss.mounts.AddFile(f); err != nil {
				return nil, err
			}
		case image.TypeLeaks:
			// What the processes shared with others at checkpoint: for
			// inspect and the warnings already given.
		case image.TypeNetNamespace:
			ns := &pb.NetNamespace{}
			if err := image.Unmarshal(rec, ns); err != nil {
				return nil, err
			}
			if err := nss.addNet(ns); err != nil {
				return nil, err
			}
		case image.TypeIPC:
			ns := &pb.IpcNamespace{}
			if err := image.Unmarshal(rec, ns); err != nil {
				return nil, err
			}
			if err := ipc.add(ns); err != nil {
				return nil, err
			}
		case image.TypePageMap:
			if !built {
				if err := ipc.restoreHost(); err != nil {
					return nil, err
				}
				opts.mark("read metadata")
				if created, err = build(opts, r.Header, nss, &ipc, tasks, files); err != nil {
					return nil, err
				}
				built = true
			}
			pm = &pb.PageMap{}
			if err := image.Unmarshal(rec, pm); err != nil {
				return nil, err
			}
		case image.TypePages:
			if pm == nil {
				return nil, fmt.Errorf("image damaged: pages at byte %d without a page map", rec.Offset)
			}
			var n uint64
			for _, run := range pm.Runs {
				n += run.Npages
			}
			if n*image.PageSize != rec.Len {
				return nil, fmt.Errorf("image damaged: pages record at byte %d does not match its page map", rec.Offset)
			}
			if pm.SysvNs != 0 {
				if err := ipc.pages(pm, r, buf); err != nil {
					return nil, err
				}
			} else if pm.ShmemId != 0 {
				if err := resource.RestoreShmemPages(files, pm, r, buf); err != nil {
					return nil, err
				}
			} else {
				t := byMm[pm.MmId]
				if t == nil || t.s == nil {
					return nil, fmt.Errorf("image damaged: pages at byte %d for no process", rec.Offset)
				}
				if pr == nil {
					pr = resource.NewPageRestorer()
				}
				if err := pr.Restore(t.s.t, t.mm, pm, r); err != nil {
					return nil, fmt.Errorf("process %d: %w", t.p.Pid, err)
				}
			}
			pm = nil
			if err := opts.fault("pages"); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("image damaged: unexpected %v record at byte %d", rec.Type, rec.Offset)
		}
	}
	if !built {
		opts.mark("read metadata")
		if err := ipc.restoreHost(); err != nil {
			return nil, err
		}
		if created, err = build(opts, r.Header, nss, &ipc, tasks, files); err != nil {
			return nil, err
		}
	}
	if pr != nil {
		if err := pr.Close(); err != nil {
			return nil, err
		}
	}
	opts.mark("pages")
	// Every segment is attached again and filled.
	if err := ipc.finish(); err != nil {
		return nil, err
	}
	for _, t := range tasks {
		if t.p.Zombie {
			continue
		}
		if err := finish(opts, t, files); err != nil {
			return nil, fmt.Errorf("process %d (%s): %w", t.p.Pid, t.p.Comm, err)
		}
	}
	files.SealShmem(opts.warn)
	opts.mark("finish")
	for _, t := range tasks {
		if t.p.Zombie || t.mmOwner != nil {
			continue
		}
		if err := unmapStub(t); err != nil {
			return nil, fmt.Errorf("process %d (%s): %w", t.p.Pid, t.p.Comm, err)
		}
	}
	root := tasks[0]
	if fg := root.p.TtyFgPgid; opts.Foreground && opts.Terminal != nil && fg != 0 && fg == root.p.Pgid && fg == root.p.Pid {
		// Before the release, so that the job's first read of the terminal
		// does not stop it with SIGTTIN.
		if err := unix.IoctlSetPointerInt(int(opts.Terminal.Fd()), unix.TIOCSPGRP, root.s.pid); err != nil {
			return nil, fmt.Errorf("make process group %d the terminal's foreground: %w", fg, err)
		}
	}
	// Both ends of every TCP connection are in place.
	if err := files.FinishSockets(); err != nil {
		return nil, err
	}
	// Everything is in place: let every process go, the root last. Threads
	// on their way back into a call are all started before any is
	// waited for (ptrace.StartRelease).
	var going []*ptrace.Releasing
	var rerr error
	for i := len(tasks) - 1; i >= 0 && rerr == nil; i-- {
		var g []*ptrace.Releasing
		g, rerr = release(opts, tasks[i])
		going = append(going, g...)
	}
	for _, g := range going {
		if err := g.Finish(); err != nil && rerr == nil {
			rerr = err
		}
	}
	if rerr != nil {
		return nil, rerr
	}
	opts.mark("unmap stubs and release")
	res = &Result{Pid: root.s.pid, Comm: root.p.Comm}
	if um := opts.user; um != nil && um.init != nil {
		if err := um.startInit(root.p.Pid, opts.cpus); err != nil {
			return nil, err
		}
		res.init, res.status = um.init.pid, um.statusR
		um.statusR = nil
	}
	return res, nil
}

func validateProcess(p *pb.Process, mm *pb.Mm) error {
	if mm == nil {
		return fmt.Errorf("image damaged: process %d has no address space", p.Pid)
	}
	if len(p.Threads) == 0 || p.Threads[0].Tid != p.Pid {
		return fmt.Errorf("image damaged: process %d does not list its main thread first", p.Pid)
	}
	seen := map[uint32]bool{}
	for _, th := range p.Threads {
		if th.Tid == 0 || th.Tid > 1<<22 || seen[th.Tid] {
			return fmt.Errorf("image damaged: process %d has thread id %d twice or out of range", p.Pid, th.Tid)
		}
		seen[th.Tid] = true
		if _, err := resource.ThreadRegs(th); err != nil {
			return err
		}
	}
	return resource.ValidatePosixTimers(p)
}

// stubMask blocks every signal but SIGTRAP (see build).
const stubMask = ^uint64(1 << (unix.SIGTRAP - 1))

// checkPidFree explains who holds a PID the image needs, waiting a little
// for a process that is dying or dead to be reaped: `checkpoint --kill`
// returns once its processes have died, and a restart that follows at once
// may find them still waiting for their parents.
func checkPidFree(pid int) error {
	start := time.Now()
	for {
		st, err := proc.ReadStat(pid)
		if proc.Gone(err) {
			return nil
		}
		if err != nil {
			return err
		}
		waited := time.Since(start)
		switch {
		case st.State != 'Z' && !st.Exiting():
			return fmt.Errorf("pid %d is taken by %q (pid %d); stop it, or restart into a new PID namespace", pid, st.Comm, pid)
		case st.State == 'Z' && waited > zombieWait(st.Ppid):
			return fmt.Errorf("pid %d is held by a zombie of %q that its parent %d has not reaped; have the parent reap it (or end the parent)", pid, st.Comm, st.Ppid)
		case waited > 5*time.Second:
			return fmt.Errorf("pid %d is held by %q, which has been exiting for %v; wait for it to end", pid, st.Comm, waited.Round(time.Second))
		}
		// Fast at first: a parent usually reaps within a millisecond.
		time.Sleep(min(waited/4+100*time.Microsecond, 5*time.Millisecond))
	}
}

// waitGroupFree is for a clone3 that could not have pid (EEXIST) although
// checkPidFree found no process of that PID: the PID stays allocated while
// it is the process group or session ID of any process (a job's other
// members, a daemon that left the tree but not its session). It waits
// while all those are dying, and otherwise names them. With none to be
// found (the last went between the clone and the scan), it retries for a
// moment.
func waitGroupFree(pid int, retry func() error) error {
	start := time.Now()
	for {
		var users []string
		dying := true
		proc.EachPid(func(p int) {
			st, err := proc.ReadStat(p)
			if err != nil || st.Pgrp != pid && st.Session != pid {
				return
			}
			users = append(users, fmt.Sprintf("%d (%s)", st.Pid, st.Comm))
			dying = dying && (st.State == 'Z' || st.Exiting())
		})
		switch {
		case len(users) == 0 && time.Since(start) > 200*time.Millisecond:
			return fmt.Errorf("pid %d is in use, though no process has it; retry, or restart into a new PID namespace", pid)
		case len(users) > 0 && (!dying || time.Since(start) > 5*time.Second):
			return fmt.Errorf("pid %d is still the process group or session of %s; end those processes, or restart into a new PID namespace", pid, strings.Join(users, ", "))
		}
		time.Sleep(5 * time.Millisecond)
		if err := retry(); !errors.Is(err, unix.EEXIST) {
			return err
		}
	}
}

// zombieWait is how long a zombie of parent ppid is given to be reaped.
// Init reaps orphans lazily; another parent reaps a killed child at once,
// or keeps the zombie on purpose.
func zombieWait(ppid int) time.Duration {
	if ppid == 1 {
		return 5 * time.Second
	}
	return time.Second
}

// build creates every process of the image with its original PID, parent,
// session and group, turns zombies into zombies, and prepares each live
// process's address space for its pages. It returns the stubs created.
func build(opts *Options, hdr *pb.Header, nss *namespaces, ipc *ipcState, tasks []*task, files *resource.OpenFiles) (created []*stub, err error) {
	if len(tasks) == 0 {
		return nil, fmt.Errorf("image holds no process")
	}
	if err := opts.xstate.CheckFeatures(); err != nil {
		return nil, err
	}
	if opts.SignalsArmed != nil {
		<-opts.SignalsArmed
	}
	byPid := map[uint32]*task{}
	for _, t := range tasks {
		if byPid[t.p.Pid] != nil {
			return nil, fmt.Errorf("image damaged: pid %d twice", t.p.Pid)
		}
		byPid[t.p.Pid] = t
	}
	for _, t := range tasks {
		if o := t.p.MmOwner; o != 0 {
			if byPid[o] == nil || byPid[o].p.MmOwner != 0 || byPid[o].p.MmId != t.p.MmId {
				return nil, fmt.Errorf("image damaged: process %d shares the memory of %d", t.p.Pid, o)
			}
			t.mmOwner = byPid[o]
			byPid[o].mmSharers = append(byPid[o].mmSharers, t)
		}
		t.table = t.p.Fds
		if o := t.p.FilesOwner; o != 0 {
			if byPid[o] == nil || byPid[o].p.FilesOwner != 0 || len(t.p.Fds) != 0 {
				return nil, fmt.Errorf("image damaged: process %d shares the descriptors of %d", t.p.Pid, o)
			}
			t.table = byPid[o].p.Fds
			t.filesOwner = byPid[o]
		}
	}
	root := tasks[0]
	if root.p.Pid != hdr.RootPid || root.p.Zombie || root.p.FilesOwner != 0 {
		return nil, fmt.Errorf("image damaged: first process %d is not the live root %d", root.p.Pid, hdr.RootPid)
	}
	root.root = true
	files.InheritStdio(root.p, opts.Stdio, opts.warn)
	for _, t := range tasks[1:] {
		parent := byPid[t.p.Ppid]
		if parent == nil || parent.p.Zombie {
			return nil, fmt.Errorf("image damaged: parent %d of process %d is not in the image", t.p.Ppid, t.p.Pid)
		}
		parent.children = append(parent.children, t)
	}
	um := opts.user
	if um != nil {
		// Before anything is created: nobody gains privileges from an image.
		if err := checkCreds(tasks); err != nil {
			return nil, err
		}
		if err := um.prepare(hdr.Container); err != nil {
			return nil, err
		}
	}
	rootFlags, err := nss.newFlags(root.p, hdr.OuterNs, true, hdr.Container)
	if err != nil {
		return nil, err
	}
	if hdr.Container && rootFlags&unix.CLONE_NEWPID == 0 {
		return nil, fmt.Errorf("image damaged: a container image whose init has no PID namespace of its own")
	}
	// Every PID and TID the image needs must be free; name each one taken.
	// (A new PID namespace has them all.)
	var taken []string
	for _, t := range tasks {
		if rootFlags&unix.CLONE_NEWPID != 0 || um != nil && um.newPID {
			break
		}
		ids := []uint32{t.p.Pid}
		for _, th := range t.p.Threads[min(1, len(t.p.Threads)):] {
			ids = append(ids, th.Tid)
		}
		for _, id := range ids {
			if err := checkPidFree(int(id)); err != nil {
				taken = append(taken, err.Error())
			}
		}
	}
	if len(taken) > 0 {
		return nil, errors.New(strings.Join(taken, "; "))
	}
	defer func() {
		if err != nil {
			for i := len(created) - 1; i >= 0; i-- {
				created[i].kill()
			}
			created = nil
		}
	}()
	s0, err := startStub0(um)
	if err != nil {
		return nil, err
	}
	rootClone, rootSig := uint64(unix.CLONE_PARENT), uint64(0)
	if um != nil && um.newPID {
		// s0 is the init of the new PID namespace and stays: the root is
		// its child (init cannot clone with CLONE_PARENT).
		um.init = s0
		rootClone, rootSig = 0, uint64(root.p.ExitSignal)
		if rootSig == 0 {
			rootSig = uint64(unix.SIGCHLD)
		}
	} else {
		defer s0.kill()
	}
	if rootFlags&unix.CLONE_NEWTIME != 0 {
		if err := nss.prepareTime(s0, root.p); err != nil {
			return nil, err
		}
		rootFlags &^= unix.CLONE_NEWTIME
	}
	if root.s, err = cloneInSession(s0, root, byPid, rootClone|rootFlags, rootSig, &created); err != nil {
		if errors.Is(err, unix.EEXIST) {
			if perr := checkPidFree(int(root.p.Pid)); perr != nil {
				return nil, perr
			}
		}
		return nil, err
	}
	created = append(created, root.s)
	if err := nss.fill(root.s, root.p, rootFlags, ipc, files); err != nil {
		return created, err
	}
	// Every signal stays blocked while the tree is built, but SIGTRAP: the
	// stubs' int3 raises it, and a blocked one would reset its handler.
	if err := ptrace.SetSigmask(root.s.pid, stubMask); err != nil {
		return created, err
	}
	// Parents before children; a session leader calls setsid before its
	// children exist, so that they inherit the session.
	for i := 0; i < len(tasks); i++ {
		t := tasks[i]
		if t.s == nil {
			continue // not reached: parent missing (checked above)
		}
		if t.p.Sid == t.p.Pid {
			if _, err := t.s.t.Syscall(unix.SYS_SETSID); err != nil {
				return created, fmt.Errorf("process %d: setsid: %w", t.p.Pid, err)
			}
		}
		for _, c := range t.children {
			exitSig := uint64(c.p.ExitSignal)
			flags := uint64(0)
			if o := c.p.MmOwner; o != 0 {
				// The child shares its parent's address space.
				if o != t.p.Pid && o != t.p.MmOwner {
					return created, fmt.Errorf("image damaged: process %d shares the memory of %d, not of its parent %d", c.p.Pid, o, t.p.Pid)
				}
				flags |= unix.CLONE_VM
			}
			if o := c.p.FilesOwner; o != 0 {
				// The child shares its parent's descriptor table.
				if o != t.p.Pid && o != t.p.FilesOwner {
					return created, fmt.Errorf("image damaged: process %d shares the descriptors of %d, not of its parent %d", c.p.Pid, o, t.p.Pid)
				}
				flags |= unix.CLONE_FILES
			}
			nsFlags, err := nss.newFlags(c.p, t.p.Ns, false, hdr.Container)
			if err != nil {
				return created, err
			}
			if c.s, err = cloneInSession(t.s, c, byPid, flags|nsFlags, exitSig, &created); err != nil {
				return created, fmt.Errorf("process %d: %w", t.p.Pid, err)
			}
			created = append(created, c.s)
			if err := nss.fill(c.s, c.p, nsFlags, ipc, files); err != nil {
				return created, err
			}
		}
	}
	opts.mark("create processes")
	if err := opts.fault("stub"); err != nil {
		return created, err
	}
	// Process groups: leaders first, then members join them. A group whose
	// leader has died gets a helper process with the leader's PID, which
	// creates the group, lets the members join, and exits. A group whose
	// session is not in the image keeps the group inherited from the
	// parent: a root that was not a session leader stays in ckpt's session,
	// like a job started from the shell ckpt runs in.
	helpers := map[uint32]*stub{} // pgid -> helper
	helperParent := map[uint32]*stub{}
	for _, t := range tasks {
		if t.p.Sid == t.p.Pid || t.p.Pgid != t.p.Pid {
			continue
		}
		if _, err := t.s.t.Syscall(unix.SYS_SETPGID, 0, 0); err != nil {
			return created, fmt.Errorf("process %d: lead process group: %w", t.p.Pid, err)
		}
	}
	for _, t := range tasks {
		g := t.p.Pgid
		if t.p.Sid == t.p.Pid || g == t.p.Pid || byPid[g] != nil || byPid[t.p.Sid] == nil || helpers[g] != nil {
			continue
		}
		parent := byPid[t.p.Ppid].s
		h, err := parent.clone(int(g), 0, uint64(unix.SIGCHLD))
		if err != nil {
			return created, fmt.Errorf("re-create process group %d of %d (its leader is gone): %w", g, t.p.Pid, err)
		}
		created = append(created, h)
		helpers[g], helperParent[g] = h, parent
		if _, err := h.t.Syscall(unix.SYS_SETPGID, 0, 0); err != nil {
			return created, fmt.Errorf("process group %d: %w", g, err)
		}
	}
	for _, t := range tasks {
		g := t.p.Pgid
		if t.p.Sid == t.p.Pid || g == t.p.Pid {
			continue
		}
		if leader := byPid[g]; (leader == nil || leader.p.Sid != t.p.Sid) && helpers[g] == nil {
			continue
		}
		if _, err := t.s.t.Syscall(unix.SYS_SETPGID, 0, uint64(g)); err != nil {
			return created, fmt.Errorf("process %d: join process group %d: %w", t.p.Pid, g, err)
		}
	}
	for g, h := range helpers {
		if err := h.becomeZombie(0); err != nil {
			return created, fmt.Errorf("process group %d helper: %w", g, err)
		}
		parent := helperParent[g]
		if _, err := parent.t.Syscall(unix.SYS_WAIT4, uint64(g), 0, unix.WALL, 0); err != nil {
			return created, fmt.Errorf("reap process group %d helper: %w", g, err)
		}
		if err := parent.drainSigchld(); err != nil {
			return created, err
		}
		for i, c := range created {
			if c == h {
				created = append(created[:i], created[i+1:]...)
				break
			}
		}
	}
	for _, t := range tasks {
		if t.p.Zombie {
			if err := resource.SetName(t.s.t, t.p.Comm); err != nil {
				return created, err
			}
			if err := t.s.becomeZombie(t.p.ExitCode); err != nil {
				return created, fmt.Errorf("zombie %d: %w", t.p.Pid, err)
			}
			if err := byPid[t.p.Ppid].s.drainSigchld(); err != nil {
				return created, err
			}
			continue
		}
	}
	vd, err := planVdso(opts, hdr, tasks)
	if err != nil {
		return created, err
	}
	for _, t := range tasks {
		if t.p.Zombie {
			continue
		}
		if err := prepare(t, files, vd); err != nil {
			return created, fmt.Errorf("process %d (%s): %w", t.p.Pid, t.p.Comm, err)
		}
	}
	// Undo lists go into each process before its threads exist (they
	// share it).
	err = ipc.semUndo(func(pid uint32) *resource.Target {
		if t := byPid[pid]; t != nil && t.s != nil && !t.p.Zombie {
			return t.s.t
		}
		return nil
	})
	if err != nil {
		return created, err
	}
	opts.mark("map areas")
	if err := opts.fault("mapped"); err != nil {
		return created, err
	}
	return created, nil
}

// cloneInSession creates t's process from the parent stub. If t's session
// leader is gone (a daemon that forked twice), a helper with the leader's
// PID is cloned first, calls setsid, clones t with CLONE_PARENT (so that t
// keeps its real parent and inherits the session) and exits; the parent
// stub reaps it. Session 0 (its leader outside the checkpointing ckpt's
// PID namespace; older ckpt marked it orphan) cannot be re-created: the
// process stays in ckpt's session.
func cloneInSession(parent *stub, t *task, byPid map[uint32]*task, flags, exitSig uint64, created *[]*stub) (*stub, error) {
	sid := t.p.Sid
	if !t.p.SessionOrphan || sid == 0 || sid == t.p.Pid || byPid[sid] != nil {
		return parent.clone(int(t.p.Pid), flags, exitSig)
	}
	if err := checkPidFree(int(sid)); err != nil {
		return nil, fmt.Errorf("re-create session %d of %d: %w", sid, t.p.Pid, err)
	}
	hflags, hsig := flags&unix.CLONE_PARENT, uint64(unix.SIGCHLD)
	if hflags != 0 {
		hsig = 0 // clone3 takes no exit signal with CLONE_PARENT
	}
	h, err := parent.clone(int(sid), hflags, hsig)
	if err != nil {
		return nil, fmt.Errorf("re-create session %d of %d: %w", sid, t.p.Pid, err)
	}
	*created = append(*created, h)
	if _, err := h.t.Syscall(unix.SYS_SETSID); err != nil {
		return nil, fmt.Errorf("session %d: setsid: %w", sid, err)
	}
	s, err := h.clone(int(t.p.Pid), flags|unix.CLONE_PARENT, 0)
	if err != nil {
		return nil, err
	}
	if err := h.becomeZombie(0); err != nil {
		return nil, fmt.Errorf("session %d helper: %w", sid, err)
	}
	if flags&unix.CLONE_PARENT == 0 {
		// The helper is the parent stub's child: reap it there.
		if _, err := parent.t.Syscall(unix.SYS_WAIT4, uint64(sid), 0, unix.WALL, 0); err != nil {
			return nil, fmt.Errorf("reap session %d helper: %w", sid, err)
		}
		if err := parent.drainSigchld(); err != nil {
			return nil, err
		}
	}
	// (A helper that was ckpt's own child was reaped by the tracer's wait.)
	*created = (*created)[:len(*created)-1]
	return s, nil
}

// prepare empties a stub and maps the process's areas, ready for pages.
func prepare(t *task, files *resource.OpenFiles, vd *vdsoPlan) error {
	s, mm := t.s, t.mm
	if o := t.mmOwner; o != nil {
		// The owner (prepared before: it is an ancestor) has set up the
		// shared address space and moved the stub code; use it.
		s.code = o.s.code
		s.t.Inj.SyscallAddr, s.t.Inj.BatchAddr = o.s.t.Inj.SyscallAddr, o.s.t.Inj.BatchAddr
		s.t.Scratch, s.t.ScratchLen = o.s.t.Scratch, o.s.t.ScratchLen
		return preparePuller(t)
	}
	stubSize := uint64(1+scratchPages) * 4096
	at, err := freeRange(mm, nil, stubSize)
	if err != nil {
		return err
	}
	specials, err := s.relocate(at)
	if err != nil {
		return err
	}
	var specialSize uint64
	for _, v := range specials {
		specialSize += v.End - v.Start
	}
	if vd.proxy {
		// This kernel's vDSO areas keep their distances: a span, not a sum.
		lo, hi := ^uint64(0), uint64(0)
		for _, v := range specials {
			lo, hi = min(lo, v.Start), max(hi, v.End)
		}
		specialSize = hi - lo
	}
	tmp, err := freeRange(mm, append(specials, proc.Vma{Start: at, End: at + stubSize}), specialSize)
	if err != nil {
		return err
	}
	if vd.proxy {
		err = resource.ProxyVdso(s.t, mm, specials, tmp, vd.old, vd.own)
	} else {
		err = resource.MoveSpecials(s.t, mm, specials, tmp)
	}
	if err != nil {
		return err
	}
	if err := preparePuller(t); err != nil {
		return err
	}
	return resource.MapVmas(s.t, mm, files, t.pull)
}

// vdsoPlan says how the image's vDSO is restored: moved into place, the
// kernel's own, or, when the image's kernel had another, by a proxy.
type vdsoPlan struct {
	proxy    bool
	old, own []*pb.VdsoSymbol
}

// planVdso compares the image's vDSO with this kernel's. With a proxy no
// thread may have stopped inside the old one (a checkpoint steps them out;
// older ones did not).
func planVdso(opts *Options, hdr *pb.Header, tasks []*task) (*vdsoPlan, error) {
	vd := &vdsoPlan{old: hdr.VdsoSymbols}
	if len(vd.old) == 0 && !opts.VdsoProxy {
		return vd, nil // an older image: the size is all that is compared
	}
	if vd.own = opts.vdso(); vd.own == nil {
		return vd, nil // unreadable here: compared by size, as for an older image
	}
	if len(vd.old) == 0 {
		vd.old = vd.own
	}
	vd.proxy = opts.VdsoProxy || !resource.SameVdso(vd.old, vd.own)
	if !vd.proxy {
		return vd, nil
	}
	for _, t := range tasks {
		if t.mm == nil {
			continue
		}
		for _, v := range t.mm.Vmas {
			if v.Special != "[vdso]" {
				continue
			}
			for _, th := range t.p.Threads {
				r, err := resource.ThreadRegs(th)
				if err != nil {
					return nil, err
				}
				if r.Rip >= v.Start && r.Rip < v.End {
					return nil, fmt.Errorf("thread %d of process %d was stopped inside the vDSO, which this kernel's differs from; restart it on the kernel it was checkpointed on", th.Tid, t.p.Pid)
				}
			}
		}
	}
	return vd, nil
}

// preparePuller empties the stub's descriptor table (unless it shares
// another's) but for its copy of ckpt's pidfd, which it pulls files
// through.
func preparePuller(t *task) error {
	s := t.s
	maxFd := int32(0)
	for _, fd := range t.table {
		maxFd = max(maxFd, fd.Fd)
	}
	from := uint64(stubPidfd)
	if o := t.filesOwner; o != nil {
		// The owner (an ancestor, prepared before) emptied the shared
		// table but for its own copy.
		from = o.pull.Fd()
	}
	var err error
	if t.pull, err = resource.NewFdPuller(s.t, from, uint64(maxFd)+1, s.send); err != nil {
		return err
	}
	if t.filesOwner == nil {
		hi := t.pull.Fd()
		closeErr := func(err error) error { return fmt.Errorf("close stub descriptors: %w", err) }
		if _, err := s.t.Batch([]resource.Call{
			{Nr: unix.SYS_CLOSE_RANGE, Args: []uint64{0, hi - 1, 0}, Err: closeErr},
			{Nr: unix.SYS_CLOSE_RANGE, Args: []uint64{hi + 1, ^uint64(0) >> 33, 0}, Err: closeErr},
		}); err != nil {
			return err
		}
	}
	return nil
}

// freeRange finds size bytes of address space that no image area and none
// of also overlaps, above 4 GiB and below the usual mmap area.
func freeRange(mm *pb.Mm, also []proc.Vma, size uint64) (uint64, error) {
	type rng struct{ s, e uint64 }
	var used []rng
	for _, v := range mm.Vmas {
		used = append(used, rng{v.Start, v.End})
	}
	for _, v := range also {
		used = append(used, rng{v.Start, v.End})
	}
	sort.Slice(used, func(i, j int) bool { return used[i].s < used[j].s })
	const guard = 1 << 20
	cand := uint64(1 << 32)
	for _, u := range used {
		if u.e+guard <= cand {
			continue
		}
		if u.s >= cand+size+guard {
			break
		}
		cand = (u.e + guard + 0xfff) &^ 0xfff
	}
	if cand+size > 1<<47 {
		return 0, fmt.Errorf("no free address range of %d bytes for the restorer", size)
	}
	return cand, nil
}

// finish restores everything but memory contents, creates the other
// threads and leaves every thread stopped with its final registers; release
// lets it go.
func finish(opts *Options, tk *task, files *resource.OpenFiles) error {
	s, p, mm, pull := tk.s, tk.p, tk.mm, tk.pull
	t := s.t
	if tk.mmOwner == nil {
		if err := resource.FinishMm(t, mm, files, pull); err != nil {
			return err
		}
	}
	if p.FilesOwner == 0 {
		if err := resource.RestoreFiles(t, pull, files, p); err != nil {
			return err
		}
	}
	if err := resource.RestoreTask(t, p); err != nil {
		return err
	}
	if err := resource.RestoreOomScoreAdj(t.Pid, p, opts.Warn); err != nil {
		return err
	}
	if tk.mmOwner == nil {
		if err := resource.LockMm(t, mm); err != nil {
			return err
		}
	}
	if err := resource.RestoreSignals(t, p); err != nil {
		return err
	}
	if err := pull.Close(); err != nil {
		return err
	}
	if len(p.Seccomp) > 0 {
		// Before the threads, which inherit them, and while the stub is
		// root; suspended until the release.
		if opts.user != nil {
			return fmt.Errorf("process %d (%s) ran under seccomp filters, which an unprivileged restart cannot install out of ckpt's way (it needs CAP_SYS_ADMIN): %w; restart as root", p.Pid, p.Comm, resource.ErrUnsupported)
		}
		if err := ptrace.SuspendSeccomp(t.Inj.Tid, ptrace.StubOptions); err != nil {
			return err
		}
		if err := resource.RestoreSeccomp(t, p); err != nil {
			return err
		}
	}
	// Threads share everything set so far; what is per thread comes next,
	// then credentials (per thread in Linux), last of all privileges.
	targets := []*resource.Target{t}
	for _, th := range p.Threads[1:] {
		tt, err := s.cloneThread(int(th.Tid))
		if err != nil {
			return err
		}
		if len(p.Seccomp) > 0 {
			if err := ptrace.SuspendSeccomp(tt.Inj.Tid, ptrace.StubOptions); err != nil {
				return err
			}
		}
		s.tids = append(s.tids, tt.Inj.Tid)
		targets = append(targets, tt)
	}
	for i, th := range p.Threads {
		if tk.root && th.PdeathSignal != 0 && opts.Warn != nil {
			opts.Warn(fmt.Sprintf("process %d (%s), thread %d: its parent death signal (%v) was for a parent outside the image; it is not set again", p.Pid, p.Comm, th.Tid, unix.Signal(th.PdeathSignal)))
		}
		if err := resource.RestoreThread(targets[i], th); err != nil {
			return fmt.Errorf("thread %d: %w", th.Tid, err)
		}
	}
	for i, th := range p.Threads {
		var err error
		if opts.user != nil {
			err = restoreUserCreds(targets[i], p.Creds, p.Securebits)
		} else {
			if opts.selfCaps == nil && p.Creds != nil && p.Creds.Caps != nil {
				if opts.selfCaps, err = resource.ReadSelfCaps(); err != nil {
					return err
				}
			}
			err = resource.RestoreCreds(targets[i], p.Creds, opts.selfCaps, p.Securebits)
		}
		if err != nil {
			return fmt.Errorf("thread %d: %w", th.Tid, err)
		}
		if err := resource.RestoreThreadPending(targets[i], int(p.Pid), th); err != nil {
			return fmt.Errorf("thread %d: %w", th.Tid, err)
		}
		if err := resource.RestoreNoNewPrivs(targets[i], p); err != nil {
			return fmt.Errorf("thread %d: %w", th.Tid, err)
		}
		if !tk.root {
			if err := resource.RestorePdeathSignal(targets[i], th); err != nil {
				return fmt.Errorf("thread %d: %w", th.Tid, err)
			}
		}
	}
	if err := resource.RestorePendingAndTimers(t, p); err != nil {
		return err
	}
	if err := resource.RestorePosixTimers(t, p); err != nil {
		return err
	}
	if err := resource.RestoreDumpable(t, p); err != nil {
		return err
	}
	if err := resource.RestoreXcompPerm(t, p); err != nil {
		return err
	}
	for i, th := range p.Threads {
		if p.XcompPerm&(1<<ptrace.FeatureTileData) != 0 {
			if err := targets[i].WriteMem(targets[i].Scratch, ptrace.TileConfig[:]); err != nil {
				return err
			}
			if err := targets[i].Inj.TouchTiles(targets[i].Scratch); err != nil {
				return fmt.Errorf("thread %d: %w", th.Tid, err)
			}
		}
		if err := opts.xstate.Set(targets[i].Inj.Tid, th.Xstate); err != nil {
			return fmt.Errorf("vector registers: %w", err)
		}
	}
	if err := opts.fault("final"); err != nil {
		return err
	}
	tk.targets = targets
	return nil
}

// xstateLayout is the XSAVE layout of the image's CPU, nil if the image
// does not say (written before it was recorded).
func xstateLayout(hdr *pb.Header) []ptrace.XstateComponent {
	var l []ptrace.XstateComponent
	for _, c := range hdr.XstateLayout {
		l = append(l, ptrace.XstateComponent{Feature: c.Feature, Offset: c.Offset, Size: c.Size})
	}
	return l
}

// unmapStub removes the stub's code and scratch from an address space once
// every process sharing it is finished, and leaves all their threads
// stopped with their final registers. The final munmap stops at syscall
// exit, before returning to the page it removed; the other threads sit at
// their own syscall-exit stops and never run stub code again either.
func unmapStub(tk *task) error {
	s, inj := tk.s, tk.s.t.Inj
	for _, x := range append([]*task{tk}, tk.mmSharers...) {
		if err := resource.RestoreSigtrap(x.s.t, x.p); err != nil {
			return fmt.Errorf("process %d: %w", x.p.Pid, err)
		}
	}
	// Through the syscall-exit stop, not the int3: the code goes away, and
	// an int3 would reset a SIGTRAP handler the process ignores. Code and
	// scratch are adjacent (relocate): one call removes both.
	if _, err := inj.ToExit(unix.SYS_MUNMAP, s.code, (1+scratchPages)*4096); err != nil {
		return fmt.Errorf("unmap stub code and scratch: %w", err)
	}
	for _, x := range append([]*task{tk}, tk.mmSharers...) {
		for i, th := range x.p.Threads {
			if err := resource.FinishThread(x.targets[i], th); err != nil {
				return fmt.Errorf("process %d thread %d: %w", x.p.Pid, th.Tid, err)
			}
		}
	}
	return nil
}

// release sets each thread's final signal mask, CPU set and scheduling and
// detaches it (the other threads first, the main thread last); one inside
// a blocking call is sent back into it and returned, for the caller to
// detach there (ptrace.StartRelease).
func release(opts *Options, tk *task) ([]*ptrace.Releasing, error) {
	p := tk.p
	if p.Zombie {
		return nil, nil
	}
	var unset []string // scheduling that could not be set, per thread
	for i, th := range p.Threads {
		tid := tk.targets[i].Inj.Tid
		if err := ptrace.SetSigmask(tid, th.Sigmask); err != nil {
			return nil, err
		}
		if err := restoreCPUs(opts, th, tid); err != nil {
			return nil, err
		}
		if r := resource.RestoreSched(tid, th); r != "" {
			unset = append(unset, fmt.Sprintf("thread %d: %s", th.Tid, r))
		}
	}
	if len(unset) > 0 && opts.Warn != nil {
		more := ""
		if len(unset) > 1 {
			more = fmt.Sprintf("; and %d more threads", len(unset)-1)
		}
		opts.Warn(fmt.Sprintf("process %d (%s) runs with ckpt's scheduling priority: its own could not be set here (%s%s); to keep it, raise RLIMIT_NICE or RLIMIT_RTPRIO, or restart as root", p.Pid, p.Comm, unset[0], more))
	}
	if p.JobStop != 0 {
		// Stopped by job control at the checkpoint (the signal is
		// SIGSTOP whatever it was: a SIGTSTP handler must not run). Queued
		// before any thread is detached, it stops each on its way out of
		// the ptrace stop, before it runs.
		if err := unix.Kill(tk.targets[0].Inj.Tid, unix.SIGSTOP); err != nil {
			return nil, fmt.Errorf("stop process %d again (job control): %w", p.Pid, err)
		}
		tids := make([]int, len(p.Threads))
		for i := len(p.Threads) - 1; i >= 0; i-- {
			tids[i] = tk.targets[i].Inj.Tid
			if err := ptrace.Detach(tids[i], 0); err != nil {
				return nil, err
			}
		}
		proc.WaitJobStopped(tids[0], tids, time.Second)
		return nil, nil
	}
	var going []*ptrace.Releasing
	for i := len(p.Threads) - 1; i >= 0; i-- {
		tid := tk.targets[i].Inj.Tid
		regs, err := ptrace.GetRegs(tid)
		if err == nil {
			var g *ptrace.Releasing
			if g, err = ptrace.StartRelease(tid, &regs); g != nil {
				going = append(going, g)
			}
		}
		if err != nil {
			return going, fmt.Errorf("release thread %d: %w", p.Threads[i].Tid, err)
		}
	}
	return going, nil
}

// restoreCPUs gives thread tid (th in the image) its CPU set. One this
// machine cannot honour (fewer CPUs, another cpuset) becomes ckpt's own,
// with a warning; so does a set the image lacks (an older image), silently.
func restoreCPUs(opts *Options, th *pb.Thread, tid int) error {
	if set, ok := resource.CPUSetOf(th); ok {
		err := ptrace.SetAffinity(tid, &set)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("thread %d: %w", th.Tid, err)
		}
		if opts.Warn != nil {
			opts.Warn(fmt.Sprintf("thread %d ran on CPUs %s, none of which this machine lets it use; it runs on ckpt's CPUs instead", th.Tid, cpuList(&set)))
		}
	}
	if opts.cpus == nil {
		return nil
	}
	return ptrace.SetAffinity(tid, opts.cpus)
}

// cpuList writes a CPU set the way taskset -c and /proc do: "0-3,6".
func cpuList(set *ptrace.CPUSet) string {
	var parts []string
	n := len(set) * 64
	for c := 0; c < n; c++ {
		if !set.IsSet(c) {
			continue
		}
		end := c
		for end+1 < n && set.IsSet(end+1) {
			end++
		}
		if end == c {
			parts = append(parts, strconv.Itoa(c))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", c, end))
		}
		c = end
	}
	return strings.Join(parts, ",")
}

// Describe is a one-line summary for logs.
func (r *Result) Describe() string {
	return strings.TrimSpace(fmt.Sprintf("restored %d (%s) in %v", r.Pid, r.Comm, r.Total.Round(time.Microsecond)))
}
