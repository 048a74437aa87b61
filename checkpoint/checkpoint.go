// Package checkpoint writes the image of a running process.
//
// The data path reads top to bottom: preflight (refuse what ckpt cannot
// handle before touching anything) → freeze (PTRACE_SEIZE + INTERRUPT) →
// collect (registers and /proc from outside; a few injected system calls for
// what only the process itself can read) → release the registers → write
// records and pages → thaw (detach) or kill.
//
// Nothing is lost on failure: until the image is complete the target is only
// ever stopped, and every exit path puts its registers, signal mask and
// scratch bytes back and detaches it. If ckpt itself dies, the kernel detaches
// the target; the only window where that would harm it is the short burst of
// injected system calls, which runs before the (long) memory dump.
package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
	"github.com/ckpt/ckpt/ptrace"
	"github.com/ckpt/ckpt/resource"
)

// Version is the tool version written into image headers.
var Version = "0.1.0"

// Options control one checkpoint.
type Options struct {
	Pid int
	// Kill ends the target once the image is complete and waits until its
	// PID is free. If false the target keeps running.
	Kill bool
	// Out receives the image stream.
	Out io.Writer
	// Warn reports non-fatal findings; nil discards them.
	Warn func(string)
	// Fault, for tests, makes the checkpoint fail at a named point (see
	// faultPoint); a ":kill" suffix makes ckpt SIGKILL itself there instead.
	Fault string
}

// Stats describes a finished checkpoint.
type Stats struct {
	Frozen time.Duration
	Total  time.Duration
	Pages  uint64
	Bytes  uint64
}

func (o *Options) fault(point string) error {
	switch o.Fault {
	case point:
		return fmt.Errorf("injected failure at %q", point)
	case point + ":kill":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Hour)
	}
	return nil
}

// Preflight checks, without touching the process, that ckpt can
// checkpoint it.
func Preflight(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("invalid pid %d", pid)
	}
	if pid == os.Getpid() {
		return fmt.Errorf("ckpt cannot checkpoint itself from the command line; use the self-checkpoint API")
	}
	st, err := proc.ReadStat(pid)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no process %d", pid)
		}
		return fmt.Errorf("read process %d: %w", pid, err)
	}
	if st.State == 'Z' || st.State == 'X' {
		return fmt.Errorf("process %d (%s) is a zombie: nothing left to checkpoint", pid, st.Comm)
	}
	if st.Flags&0x00200000 != 0 { // PF_KTHREAD
		return fmt.Errorf("process %d (%s) is a kernel thread", pid, st.Comm)
	}
	tids, err := proc.Tasks(pid)
	if err != nil {
		return err
	}
	if len(tids) != 1 {
		return fmt.Errorf("process %d (%s) has %d threads: multi-threaded processes are %w yet", pid, st.Comm, len(tids), resource.ErrUnsupported)
	}
	kids, err := proc.Children(pid)
	if err != nil {
		return err
	}
	if len(kids) > 0 {
		return fmt.Errorf("process %d (%s) has child process %d: process trees are %w yet", pid, st.Comm, kids[0], resource.ErrUnsupported)
	}
	if err := resource.PreflightFiles(pid); err != nil {
		return err
	}
	if _, err := resource.PreflightMm(pid); err != nil {
		return err
	}
	return nil
}

// Run checkpoints one process into opts.Out.
func Run(opts Options) (*Stats, error) {
	if err := Preflight(opts.Pid); err != nil {
		return nil, fmt.Errorf("checkpoint %d: %w", opts.Pid, err)
	}
	var stats Stats
	start := time.Now()
	err := ptrace.Run(func() error { return dump(&opts, &stats) })
	stats.Total = time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %d: %w", opts.Pid, err)
	}
	return &stats, nil
}

// frozen tracks what ckpt changed in the stopped target, so that release
// can undo exactly that.
type frozen struct {
	pid       int
	seized    bool
	regs      ptrace.Regs
	sigmask   uint64
	maskSet   bool
	inj       *ptrace.Injector
	scratch   uint64
	savedMem  []byte
	target    *resource.Target
	released  bool
	frozenAt  time.Time
	frozenFor time.Duration
}

// release puts the target back as it was and lets it run.
func (f *frozen) release() error {
	if !f.seized || f.released {
		return nil
	}
	f.released = true
	var errs []error
	if f.inj != nil {
		if f.savedMem != nil {
			errs = append(errs, f.target.WriteMem(f.scratch, f.savedMem))
		}
		errs = append(errs, f.inj.ReturnToInterruptStop())
		errs = append(errs, ptrace.SetRegs(f.pid, &f.regs))
	}
	if f.maskSet {
		errs = append(errs, ptrace.SetSigmask(f.pid, f.sigmask))
	}
	errs = append(errs, ptrace.Detach(f.pid, 0))
	f.frozenFor = time.Since(f.frozenAt)
	return errors.Join(errs...)
}

func dump(opts *Options, stats *Stats) (err error) {
	pid := opts.Pid
	f := &frozen{pid: pid}
	defer func() {
		if rerr := f.release(); rerr != nil && err == nil {
			err = fmt.Errorf("release process: %w", rerr)
		}
		stats.Frozen = f.frozenFor
	}()
	if err := ptrace.Seize(pid); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%w (run ckpt as root or as the owner, and check kernel.yama.ptrace_scope)", err)
		}
		return err
	}
	f.seized = true
	f.frozenAt = time.Now()
	if err := ptrace.Interrupt(pid); err != nil {
		return err
	}
	if err := ptrace.WaitInterrupted(pid); err != nil {
		return err
	}
	if err := opts.fault("seized"); err != nil {
		return err
	}
	// The process could have forked or started threads between preflight
	// and the freeze.
	if tids, _ := proc.Tasks(pid); len(tids) != 1 {
		return fmt.Errorf("process started threads during the checkpoint: multi-threaded processes are %w yet", resource.ErrUnsupported)
	}
	if kids, _ := proc.Children(pid); len(kids) != 0 {
		return fmt.Errorf("process forked %d during the checkpoint: process trees are %w yet", kids[0], resource.ErrUnsupported)
	}

	if f.regs, err = ptrace.GetRegs(pid); err != nil {
		return err
	}
	if f.sigmask, err = ptrace.GetSigmask(pid); err != nil {
		return err
	}
	p := &pb.Process{Pid: uint32(pid)}
	var brk uint64
	if err := collectInjected(opts, f, p, &brk); err != nil {
		return err
	}

	st, err := proc.ReadStat(pid)
	if err != nil {
		return err
	}
	p.Ppid, p.Pgid, p.Sid, p.ExitSignal = uint32(st.Ppid), uint32(st.Pgrp), uint32(st.Session), uint32(st.ExitSignal)
	if err := resource.DumpTask(pid, p); err != nil {
		return err
	}
	files := resource.NewFileSet()
	if err := resource.DumpFiles(pid, p, files); err != nil {
		return err
	}
	mm, err := resource.DumpMm(pid, brk, files)
	if err != nil {
		return err
	}
	p.MmId = mm.Id

	w, err := image.NewWriter(opts.Out)
	if err != nil {
		return err
	}
	if err := writeImage(opts, w, f, p, mm, files); err != nil {
		if ferr := w.Fail(err); ferr != nil && opts.Warn != nil {
			opts.Warn("could not record the failure in the image: " + ferr.Error())
		}
		return err
	}
	stats.Pages, stats.Bytes = 0, w.Offset()
	if opts.Kill {
		// Kill while still stopped: the process never runs past the image.
		f.released = true
		f.frozenFor = time.Since(f.frozenAt)
		if err := unix.Kill(pid, unix.SIGKILL); err != nil {
			return fmt.Errorf("kill %d: %w", pid, err)
		}
		ptrace.Wait(pid) // consume the tracer's exit report so the parent can reap
		return waitGone(pid, opts.Warn)
	}
	return nil
}

// collectInjected reads what only the process itself can tell, with
// system calls injected into it, and puts its registers back.
func collectInjected(opts *Options, f *frozen, p *pb.Process, brk *uint64) error {
	pid := f.pid
	addr, err := syscallInsn(pid, &f.regs)
	if err != nil {
		return err
	}
	// Scratch memory for results: just below the stack's red zone.
	f.scratch = f.regs.Rsp - 128 - 256
	f.target = &resource.Target{Pid: pid, Scratch: f.scratch, ScratchLen: 256}
	saved := make([]byte, 256)
	if err := f.target.ReadMem(f.scratch, saved); err != nil {
		return fmt.Errorf("stack of %d has no room below %#x: %w", pid, f.regs.Rsp, err)
	}
	f.savedMem = saved
	// Block signals while injecting, so none is delivered at our syscalls.
	if err := ptrace.SetSigmask(pid, ^uint64(0)); err != nil {
		return err
	}
	f.maskSet = true
	f.inj = &ptrace.Injector{Tid: pid, SyscallAddr: addr, Base: f.regs}
	f.target.Inj = f.inj
	if *brk, err = f.target.Syscall(unix.SYS_BRK, 0); err != nil {
		return fmt.Errorf("read brk: %w", err)
	}
	if err := resource.DumpSignals(f.target, p); err != nil {
		return err
	}
	th, err := resource.DumpThread(f.target, pid, f.regs, f.sigmask)
	if err != nil {
		return err
	}
	p.Threads = append(p.Threads, th)
	if err := opts.fault("injected"); err != nil {
		return err
	}
	// Undo: scratch bytes, back into the interrupt stop, registers, mask.
	if err := f.target.WriteMem(f.scratch, saved); err != nil {
		return err
	}
	f.savedMem = nil
	if err := f.inj.ReturnToInterruptStop(); err != nil {
		return err
	}
	if err := ptrace.SetRegs(pid, &f.regs); err != nil {
		return err
	}
	f.inj = nil
	if err := ptrace.SetSigmask(pid, f.sigmask); err != nil {
		return err
	}
	f.maskSet = false
	return nil
}

func writeImage(opts *Options, w *image.Writer, f *frozen, p *pb.Process, mm *pb.Mm, files *resource.FileSet) error {
	host, _ := os.Hostname()
	var uts unix.Utsname
	unix.Uname(&uts)
	hdr := &pb.Header{
		FormatVersion: image.FormatVersion, Arch: runtime.GOARCH, PageSize: image.PageSize,
		Kernel:      unix.ByteSliceToString(uts.Release[:]) + " " + unix.ByteSliceToString(uts.Version[:]),
		ToolVersion: Version, TimeUnixNano: time.Now().UnixNano(), Hostname: host, RootPid: uint32(opts.Pid),
	}
	if err := w.Message(image.TypeHeader, hdr); err != nil {
		return err
	}
	for _, file := range files.Files {
		if err := w.Message(image.TypeFile, file); err != nil {
			return err
		}
	}
	if err := w.Message(image.TypeMm, mm); err != nil {
		return err
	}
	if err := w.Message(image.TypeProcess, p); err != nil {
		return err
	}
	if err := opts.fault("pages"); err != nil {
		return err
	}
	t := &resource.Target{Pid: f.pid}
	if err := resource.DumpPages(t, mm, w); err != nil {
		return err
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
	vmas, err := proc.ReadSmaps(pid)
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

// waitGone waits until pid no longer exists (its parent reaped it), so that
// a restart can reuse it at once.
func waitGone(pid int, warn func(string)) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(proc.Path(pid, "stat")); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	if warn != nil {
		warn(fmt.Sprintf("process %d was killed but its parent has not reaped it yet; its PID stays taken until then", pid))
	}
	return nil
}
