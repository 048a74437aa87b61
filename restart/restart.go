// Package restart rebuilds processes from an image stream.
//
// The restorer never runs target code in its own (multi-threaded Go)
// process. Each process is built inside a stub (see stub.go): ckpt creates
// it with its original PID by injecting clone3 with set_tid into a first
// stub, moves the stub's own code to a free spot, unmaps the rest, maps the
// image's areas, streams pages in as they arrive, then restores files,
// signals, limits, credentials and registers, and lets it go.
//
// A failed restart kills every stub it created: nothing half-built remains.
package restart

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
	"github.com/ckpt/ckpt/ptrace"
	"github.com/ckpt/ckpt/resource"
)

// Options control one restart.
type Options struct {
	In io.Reader
	// Warn reports non-fatal findings; nil discards them.
	Warn func(string)
	// Fault, for tests: fail at a named point (see fault).
	Fault string
}

// Result describes a restored process.
type Result struct {
	Pid   int
	Comm  string
	Total time.Duration
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

// Run restores the image read from opts.In and releases the process. It
// is ckpt's child afterwards.
func Run(opts Options) (*Result, error) {
	start := time.Now()
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
	return res, nil
}

func restore(opts *Options) (res *Result, err error) {
	r, err := image.NewReader(opts.In)
	if err != nil {
		return nil, err
	}
	files := resource.NewOpenFiles()
	defer files.Close()
	var (
		mm   *pb.Mm
		p    *pb.Process
		s    *stub
		pm   *pb.PageMap
		pull *resource.FdPuller
	)
	defer func() {
		if err != nil && s != nil {
			s.kill()
		}
	}()
	buf := make([]byte, 4<<20)
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		switch rec.Type {
		case image.TypeFile:
			f := &pb.File{}
			if err := image.Unmarshal(rec, f); err != nil {
				return nil, err
			}
			if err := files.Add(f); err != nil {
				return nil, err
			}
		case image.TypeMm:
			if mm != nil {
				return nil, fmt.Errorf("image has several address spaces: process trees need a newer ckpt")
			}
			mm = &pb.Mm{}
			if err := image.Unmarshal(rec, mm); err != nil {
				return nil, err
			}
			if err := resource.ValidateMm(mm); err != nil {
				return nil, err
			}
		case image.TypeProcess:
			if p != nil {
				return nil, fmt.Errorf("image has several processes: process trees need a newer ckpt")
			}
			p = &pb.Process{}
			if err := image.Unmarshal(rec, p); err != nil {
				return nil, err
			}
			if err := validateProcess(p, mm); err != nil {
				return nil, err
			}
			if s, pull, err = build(opts, p, mm, files); err != nil {
				return nil, fmt.Errorf("process %d (%s): %w", p.Pid, p.Comm, err)
			}
		case image.TypePageMap:
			pm = &pb.PageMap{}
			if err := image.Unmarshal(rec, pm); err != nil {
				return nil, err
			}
		case image.TypePages:
			if s == nil || pm == nil || pm.MmId != mm.Id {
				return nil, fmt.Errorf("image damaged: pages at byte %d before their process", rec.Offset)
			}
			var n uint64
			for _, run := range pm.Runs {
				n += run.Npages
			}
			if n*image.PageSize != rec.Len {
				return nil, fmt.Errorf("image damaged: pages record at byte %d does not match its page map", rec.Offset)
			}
			if err := resource.RestorePages(s.t, mm, pm, r, buf); err != nil {
				return nil, err
			}
			pm = nil
			if err := opts.fault("pages"); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("image damaged: unexpected %v record at byte %d", rec.Type, rec.Offset)
		}
	}
	if s == nil {
		return nil, fmt.Errorf("image holds no process")
	}
	if err := finish(opts, s, p, mm, files, pull); err != nil {
		return nil, fmt.Errorf("process %d (%s): %w", p.Pid, p.Comm, err)
	}
	return &Result{Pid: int(p.Pid), Comm: p.Comm}, nil
}

func validateProcess(p *pb.Process, mm *pb.Mm) error {
	if mm == nil || p.MmId != mm.Id {
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
	return nil
}

// checkPidFree explains who holds a PID the image needs, waiting a little
// for a zombie to be reaped.
func checkPidFree(pid int) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := proc.ReadStat(pid)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if st.State != 'Z' {
			return fmt.Errorf("pid %d is taken by %q (pid %d); stop it, or restart into a new PID namespace", pid, st.Comm, pid)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d is held by a zombie of %q that its parent %d has not reaped; have the parent reap it (or end the parent)", pid, st.Comm, st.Ppid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// build creates the process and its address space, ready for pages.
func build(opts *Options, p *pb.Process, mm *pb.Mm, files *resource.OpenFiles) (*stub, *resource.FdPuller, error) {
	for _, th := range p.Threads {
		if err := checkPidFree(int(th.Tid)); err != nil {
			return nil, nil, err
		}
	}
	s0, err := startStub0()
	if err != nil {
		return nil, nil, err
	}
	defer s0.kill()
	s, err := s0.clone(int(p.Pid))
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			if perr := checkPidFree(int(p.Pid)); perr != nil {
				return nil, nil, perr
			}
		}
		return nil, nil, err
	}
	ok := false
	defer func() {
		if !ok {
			s.kill()
		}
	}()
	if err := opts.fault("stub"); err != nil {
		return nil, nil, err
	}
	if err := ptrace.SetSigmask(s.pid, ^uint64(0)); err != nil {
		return nil, nil, err
	}
	stubSize := uint64(1+scratchPages) * 4096
	at, err := freeRange(mm, nil, stubSize)
	if err != nil {
		return nil, nil, err
	}
	specials, err := s.relocate(at)
	if err != nil {
		return nil, nil, err
	}
	if _, err := s.t.Syscall(unix.SYS_CLOSE_RANGE, 0, ^uint64(0)>>33, 0); err != nil {
		return nil, nil, fmt.Errorf("close stub descriptors: %w", err)
	}
	var specialSize uint64
	for _, v := range specials {
		specialSize += v.End - v.Start
	}
	tmp, err := freeRange(mm, append(specials, proc.Vma{Start: at, End: at + stubSize}), specialSize)
	if err != nil {
		return nil, nil, err
	}
	if err := resource.MoveSpecials(s.t, mm, specials, tmp); err != nil {
		return nil, nil, err
	}
	maxFd := int32(0)
	for _, fd := range p.Fds {
		maxFd = max(maxFd, fd.Fd)
	}
	pull, err := resource.NewFdPuller(s.t, uint64(maxFd)+1)
	if err != nil {
		return nil, nil, err
	}
	if err := resource.MapVmas(s.t, mm, files, pull); err != nil {
		return nil, nil, err
	}
	if err := opts.fault("mapped"); err != nil {
		return nil, nil, err
	}
	ok = true
	return s, pull, nil
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
// threads, sets every thread's registers, and releases the process.
func finish(opts *Options, s *stub, p *pb.Process, mm *pb.Mm, files *resource.OpenFiles, pull *resource.FdPuller) error {
	t := s.t
	if err := resource.FinishMm(t, mm, files, pull); err != nil {
		return err
	}
	if err := resource.RestoreFiles(t, pull, files, p); err != nil {
		return err
	}
	if err := resource.RestoreTask(t, p); err != nil {
		return err
	}
	if err := resource.RestoreSignals(t, p); err != nil {
		return err
	}
	if err := pull.Close(); err != nil {
		return err
	}
	// Threads share everything set so far; what is per thread comes next,
	// then credentials (per thread in Linux), last of all privileges.
	targets := []*resource.Target{t}
	for _, th := range p.Threads[1:] {
		tt, err := s.cloneThread(int(th.Tid))
		s.tids = append(s.tids, int(th.Tid))
		if err != nil {
			return err
		}
		targets = append(targets, tt)
	}
	for i, th := range p.Threads {
		if err := resource.RestoreThread(targets[i], th); err != nil {
			return fmt.Errorf("thread %d: %w", th.Tid, err)
		}
	}
	for i, th := range p.Threads {
		if err := resource.RestoreCreds(targets[i], p.Creds); err != nil {
			return fmt.Errorf("thread %d: %w", th.Tid, err)
		}
		if err := resource.RestoreThreadPending(targets[i], int(p.Pid), th); err != nil {
			return fmt.Errorf("thread %d: %w", th.Tid, err)
		}
	}
	if err := resource.RestorePendingAndTimers(t, p); err != nil {
		return err
	}
	for _, th := range p.Threads {
		if err := ptrace.SetXstate(int(th.Tid), th.Xstate); err != nil {
			return err
		}
	}
	if err := opts.fault("final"); err != nil {
		return err
	}
	// Unmap the stub last: the final munmap stops at syscall exit, before
	// returning to the page it removed; the registers are set there. The
	// other threads sit at their own syscall-exit stops and never run stub
	// code again either.
	if _, err := t.Syscall(unix.SYS_MUNMAP, s.code+4096, scratchPages*4096); err != nil {
		return fmt.Errorf("unmap stub scratch: %w", err)
	}
	if _, err := t.Syscall(unix.SYS_MUNMAP, s.code, 4096); err != nil {
		return fmt.Errorf("unmap stub code: %w", err)
	}
	for i, th := range p.Threads {
		if err := resource.FinishThread(targets[i], th); err != nil {
			return fmt.Errorf("thread %d: %w", th.Tid, err)
		}
	}
	for _, th := range p.Threads {
		if err := ptrace.SetSigmask(int(th.Tid), th.Sigmask); err != nil {
			return err
		}
	}
	// Release the other threads first, the main thread last.
	for i := len(p.Threads) - 1; i >= 0; i-- {
		if err := ptrace.Detach(int(p.Threads[i].Tid), 0); err != nil {
			return err
		}
	}
	return nil
}

// Describe is a one-line summary for logs.
func (r *Result) Describe() string {
	return strings.TrimSpace(fmt.Sprintf("restored %d (%s) in %v", r.Pid, r.Comm, r.Total.Round(time.Microsecond)))
}
