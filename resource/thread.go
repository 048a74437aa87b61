package resource

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
	"github.com/ckpt/ckpt/ptrace"
)

const timerAbstime = 1

// RegsSize is sizeof(struct user_regs_struct).
const RegsSize = int(unsafe.Sizeof(ptrace.Regs{}))

// DumpThread reads a stopped thread's registers and per-thread kernel state.
// regs are the thread's registers as found at the stop; sigmask its mask
// from before ckpt blocked signals for injection.
func DumpThread(t *Target, tid int, regs ptrace.Regs, sigmask uint64) (*pb.Thread, error) {
	th := &pb.Thread{Tid: uint32(tid), Sigmask: sigmask}
	comm, err := proc.ReadFile(fmt.Sprintf("/proc/%d/task/%d/comm", t.Pid, tid))
	if err != nil {
		return nil, err
	}
	th.Comm = strings.TrimSuffix(string(comm), "\n")
	th.Regs = append([]byte(nil), bytesOf(&regs)...)
	if th.Xstate, err = ptrace.GetXstate(tid); err != nil {
		return nil, err
	}
	rs, err := ptrace.GetRseq(tid)
	if err != nil {
		return nil, err
	}
	th.RseqAddr, th.RseqLen, th.RseqSig = rs.Addr, rs.Len, rs.Sig
	var head, hlen uint64
	if _, _, e := unix.Syscall(unix.SYS_GET_ROBUST_LIST, uintptr(tid), uintptr(unsafe.Pointer(&head)), uintptr(unsafe.Pointer(&hlen))); e != 0 {
		return nil, fmt.Errorf("get robust futex list of %d: %w", tid, e)
	}
	th.RobustList, th.RobustListLen = head, hlen
	if err := dumpSched(tid, th); err != nil {
		return nil, err
	}
	// clear_child_tid into the scratch area's first 8 bytes, the
	// alternate signal stack (a stack_t) into the 24 after, the parent
	// death signal (an int) after that: one batch.
	_, err = t.Batch([]Call{
		{Nr: unix.SYS_PRCTL, Args: []uint64{unix.PR_GET_TID_ADDRESS, t.Scratch},
			Err: func(err error) error { return fmt.Errorf("read clear_child_tid of %d: %w", tid, err) }},
		{Nr: unix.SYS_SIGALTSTACK, Args: []uint64{0, t.Scratch + 8},
			Err: func(err error) error { return fmt.Errorf("read alternate signal stack of %d: %w", tid, err) }},
		{Nr: unix.SYS_PRCTL, Args: []uint64{unix.PR_GET_PDEATHSIG, t.Scratch + 32},
			Err: func(err error) error { return fmt.Errorf("read parent death signal of %d: %w", tid, err) }},
	})
	if err != nil {
		return nil, err
	}
	var b [36]byte
	if err := t.ReadMem(t.Scratch, b[:]); err != nil {
		return nil, err
	}
	th.ClearChildTid = binary.LittleEndian.Uint64(b[0:])
	var ss stackT
	copy(bytesOf(&ss), b[8:32])
	th.PdeathSignal = binary.LittleEndian.Uint32(b[32:])
	th.AltstackSp, th.AltstackFlags, th.AltstackSize = ss.Sp, ss.Flags, ss.Size
	if th.Pending, err = ptrace.PeekSiginfo(tid, false); err != nil {
		return nil, err
	}
	th.Restart, err = dumpRestart(t, regs)
	if err != nil {
		return nil, err
	}
	return th, nil
}

// dumpRestart describes the system call the thread was stopped in, if the
// kernel meant to restart it. For a relative sleep it reads the remaining
// time, which the kernel stores at the caller's remainder pointer when it
// interrupts the sleep.
//
// A sleep already restarted once (after a signal or an earlier checkpoint)
// shows restart_syscall instead of its own number; guessRestartedSleep
// recovers it from the arguments still in the registers.
func dumpRestart(t *Target, r ptrace.Regs) (*pb.SyscallRestart, error) {
	if int64(r.Orig_rax) < 0 {
		return nil, nil
	}
	switch -int64(r.Rax) {
	case ptrace.ErrRestartSys, ptrace.ErrRestartNoIntr, ptrace.ErrRestartNoHand, ptrace.ErrRestartRestartBlock:
	default:
		return nil, nil
	}
	rs := &pb.SyscallRestart{Nr: int64(r.Orig_rax)}
	if -int64(r.Rax) != ptrace.ErrRestartRestartBlock {
		return rs, nil
	}
	nr := r.Orig_rax
	if nr == unix.SYS_RESTART_SYSCALL {
		nr = guessRestartedSleep(t, r)
		rs.Nr = int64(nr)
	}
	var req, rem uint64
	switch nr {
	case unix.SYS_NANOSLEEP:
		req, rem = r.Rdi, r.Rsi
	case unix.SYS_CLOCK_NANOSLEEP:
		if r.Rsi&timerAbstime != 0 {
			return rs, nil // an absolute deadline is simply re-armed
		}
		req, rem = r.Rdx, r.R10
	default:
		return rs, nil
	}
	var ts [16]byte
	from := req
	if rem != 0 {
		from = rem
		rs.KnownRemaining = true
	}
	if err := t.ReadMem(from, ts[:]); err != nil {
		return nil, fmt.Errorf("read sleep time: %w", err)
	}
	sec, nsec := int64(binary.LittleEndian.Uint64(ts[:])), int64(binary.LittleEndian.Uint64(ts[8:]))
	rs.RemainingNs = sec*1e9 + nsec
	return rs, nil
}

// RestoreThread restores the thread's name, rseq, robust futex list,
// clear_child_tid and alternate stack.
func RestoreThread(t *Target, th *pb.Thread) error {
	d := &batchData{t: t}
	name, err := nameCall(d, th.Comm)
	if err != nil {
		return err
	}
	calls := []Call{name}
	if th.RseqLen != 0 {
		calls = append(calls, Call{Nr: unix.SYS_RSEQ, Args: []uint64{th.RseqAddr, uint64(th.RseqLen), 0, uint64(th.RseqSig)},
			Err: func(err error) error { return fmt.Errorf("register rseq area %#x: %w", th.RseqAddr, err) }})
	}
	if th.RobustList != 0 {
		calls = append(calls, Call{Nr: unix.SYS_SET_ROBUST_LIST, Args: []uint64{th.RobustList, th.RobustListLen},
			Err: func(err error) error { return fmt.Errorf("set robust futex list %#x: %w", th.RobustList, err) }})
	}
	calls = append(calls, Call{Nr: unix.SYS_SET_TID_ADDRESS, Args: []uint64{th.ClearChildTid},
		Err: func(err error) error { return fmt.Errorf("set clear_child_tid %#x: %w", th.ClearChildTid, err) }})
	alt, err := altstackCalls(d, th)
	if err != nil {
		return err
	}
	_, err = t.Batch(append(calls, alt...))
	return err
}

// RestorePdeathSignal sets the thread's parent death signal again. It
// comes after the credentials, whose change clears it. Not for the tree's
// root: its parent at restart is ckpt, not the one the signal was for.
func RestorePdeathSignal(t *Target, th *pb.Thread) error {
	if th.PdeathSignal == 0 {
		return nil
	}
	if th.PdeathSignal > 64 {
		return fmt.Errorf("image damaged: parent death signal %d", th.PdeathSignal)
	}
	if _, err := t.Syscall(unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, uint64(th.PdeathSignal)); err != nil {
		return fmt.Errorf("set parent death signal %d: %w", th.PdeathSignal, err)
	}
	return nil
}

// Scheduling flags of struct sched_attr (linux/sched.h).
const (
	schedFlagResetOnFork = 0x01
	schedFlagReclaim     = 0x02
	schedFlagDLOverrun   = 0x04
	schedFlagUtilMin     = 0x20
	schedFlagUtilMax     = 0x40
	schedCapacity        = 1024 // SCHED_CAPACITY_SCALE, the clamps' top
	ioprioWhoProcess     = 1    // IOPRIO_WHO_PROCESS: one thread
)

// dumpSched reads the thread's scheduling policy, nice value, priority
// and I/O priority, from outside: a batch job started under nice, chrt or
// ionice keeps them.
func dumpSched(tid int, th *pb.Thread) error {
	a, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return fmt.Errorf("read scheduling of thread %d: %w", tid, err)
	}
	th.Sched = &pb.Sched{Policy: a.Policy, Flags: a.Flags, Nice: a.Nice, Priority: a.Priority,
		Runtime: a.Runtime, Deadline: a.Deadline, Period: a.Period, UtilMin: a.Util_min, UtilMax: a.Util_max}
	prio, _, e := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, uintptr(tid), 0)
	if e != 0 {
		return fmt.Errorf("read I/O priority of thread %d: %w", tid, e)
	}
	th.Ioprio = uint32(prio)
	// Another user's thread's timer slack needs CAP_SYS_NICE to read:
	// without it the slack is not kept.
	if slack, err := readProcNumber(tid, "timerslack_ns", 10); err == nil {
		v := uint64(slack)
		th.TimerSlackNs = &v
	}
	return nil
}

// RestoreSched gives thread tid (th in the image) its scheduling and I/O
// priority, from outside, just before it is let go (an idle or batch
// policy would have slowed the restart). It never fails the restart, which
// has let other processes go by then: what it could not set (a nice value
// below ckpt's without RLIMIT_NICE, a real-time policy without
// CAP_SYS_NICE, the real-time I/O class, a value a damaged image made up)
// stays ckpt's and is described in unset, for the caller to report once
// per process.
func RestoreSched(tid int, th *pb.Thread) (unset string) {
	var out []string
	if s := th.Sched; s != nil {
		a := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: s.Policy,
			Flags: s.Flags & (schedFlagResetOnFork | schedFlagReclaim | schedFlagDLOverrun),
			Nice:  s.Nice, Priority: s.Priority, Runtime: s.Runtime, Deadline: s.Deadline, Period: s.Period}
		if s.UtilMin > 0 || s.UtilMax > 0 && s.UtilMax < schedCapacity {
			a.Flags |= schedFlagUtilMin | schedFlagUtilMax
			a.Util_min, a.Util_max = s.UtilMin, s.UtilMax
		}
		if err := unix.SchedSetAttr(tid, &a, 0); err != nil {
			out = append(out, fmt.Sprintf("%s: %v", schedString(s), err))
		}
	}
	if th.Ioprio>>13 != 0 { // class 0 (none) follows the nice value
		if _, _, e := unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(tid), uintptr(th.Ioprio)); e != 0 {
			out = append(out, fmt.Sprintf("I/O class %d level %d: %v", th.Ioprio>>13, th.Ioprio&0x1fff, e))
		}
	}
	if s := th.TimerSlackNs; s != nil {
		if cur, err := readProcNumber(tid, "timerslack_ns", 10); err != nil || uint64(cur) != *s {
			if err := writeProc(tid, "timerslack_ns", strconv.FormatUint(*s, 10)); err != nil {
				out = append(out, fmt.Sprintf("timer slack %dns: %v", *s, err))
			}
		}
	}
	return strings.Join(out, ", ")
}

// schedString describes a scheduling the way chrt and nice would.
func schedString(s *pb.Sched) string {
	names := map[uint32]string{0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE", 6: "SCHED_DEADLINE"}
	name, ok := names[s.Policy]
	if !ok {
		name = fmt.Sprintf("policy %d", s.Policy)
	}
	switch s.Policy {
	case 1, 2:
		return fmt.Sprintf("%s priority %d", name, s.Priority)
	case 6:
		return fmt.Sprintf("%s runtime %dns deadline %dns period %dns", name, s.Runtime, s.Deadline, s.Period)
	}
	return fmt.Sprintf("%s nice %d", name, s.Nice)
}

// ThreadRegs decodes the registers of an image thread.
func ThreadRegs(th *pb.Thread) (ptrace.Regs, error) {
	var r ptrace.Regs
	if len(th.Regs) != RegsSize {
		return r, fmt.Errorf("image damaged: thread %d registers are %d bytes, want %d", th.Tid, len(th.Regs), RegsSize)
	}
	copy(bytesOf(&r), th.Regs)
	return r, nil
}

// releaseRegs returns the registers a thread is released with from a
// signal-delivery stop. There the kernel finishes its signal handling as if
// the thread had never stopped: an interrupted call (rax = -ERESTART*,
// orig_rax = its number) restarts, or fails with EINTR if a handler runs
// first and the call says so — exactly what would have happened without the
// checkpoint.
func releaseRegs(th *pb.Thread) (ptrace.Regs, error) {
	r, err := ThreadRegs(th)
	if err != nil {
		return r, err
	}
	rs := th.Restart
	switch {
	case rs == nil:
	case rs.KnownRemaining && rs.RemainingNs == 0:
		r.Rax, r.Orig_rax = 0, ^uint64(0) // the sleep was over: it completed
	case -int64(r.Rax) == ptrace.ErrRestartRestartBlock:
		// The kernel's restart block did not survive: run the call again
		// from the start rather than fail it with EINTR.
		r.Rax, r.Orig_rax = ^uint64(ptrace.ErrRestartNoIntr-1), uint64(rs.Nr)
	}
	return r, nil
}

// NeedsSleepRestart reports whether the thread was in a relative sleep that
// must resume with its remaining time, rather than from the start.
func NeedsSleepRestart(th *pb.Thread) bool {
	rs := th.Restart
	return rs != nil && rs.RemainingNs > 0 && (rs.Nr == unix.SYS_NANOSLEEP || rs.Nr == unix.SYS_CLOCK_NANOSLEEP)
}

// stopForRelease moves a thread from a syscall-exit stop into a SIGSTOP
// signal-delivery stop. SIGSTOP cannot be blocked, and while the thread's
// other signals stay blocked it is the only one dequeued.
func stopForRelease(t *Target, tid int) error {
	if err := unix.Tgkill(t.Pid, tid, unix.SIGSTOP); err != nil {
		return fmt.Errorf("stop thread %d: %w", tid, err)
	}
	if err := contToSigstop(tid); err != nil {
		return fmt.Errorf("thread %d: %w", tid, err)
	}
	return nil
}

// contToSigstop resumes a stopped thread that has a SIGSTOP queued and
// waits for it in that signal's delivery stop.
func contToSigstop(tid int) error {
	if err := ptrace.Cont(tid, 0); err != nil {
		return err
	}
	ws, err := ptrace.Wait(tid)
	if err != nil {
		return err
	}
	if !ws.Stopped() || ws.StopSignal() != unix.SIGSTOP {
		return fmt.Errorf("unexpected stop %v, want SIGSTOP", ws.StopSignal())
	}
	return nil
}

// FinishThread leaves a restored thread, now at a syscall-exit stop with
// injected registers, in a SIGSTOP signal-delivery stop with the registers
// it is released with. The caller then sets its mask and detaches it,
// suppressing the SIGSTOP.
func FinishThread(t *Target, th *pb.Thread) error {
	if NeedsSleepRestart(th) {
		return restartSleep(t, th)
	}
	regs, err := releaseRegs(th)
	if err != nil {
		return err
	}
	// Should the thread reach user space before its stop (it cannot, with
	// SIGSTOP pending), it would at least be on its own code.
	safe := regs
	safe.Orig_rax = ^uint64(0)
	if err := ptrace.SetRegs(t.Inj.Tid, &safe); err != nil {
		return err
	}
	if err := stopForRelease(t, t.Inj.Tid); err != nil {
		return err
	}
	return ptrace.SetRegs(t.Inj.Tid, &regs)
}

// restartSleep re-creates, in a restored thread stopped at a syscall-exit
// stop, the kernel state of a sleep interrupted by the freezer: it starts
// the same sleep for the remaining time, interrupts it, and leaves the
// thread in the interrupt stop with its original registers, so that on
// release the kernel resumes it through restart_syscall exactly as it would
// have without the checkpoint.
func restartSleep(t *Target, th *pb.Thread) error {
	orig, err := ThreadRegs(th)
	if err != nil {
		return err
	}
	rs := th.Restart
	// The remaining time goes below the red zone of the thread's stack; the
	// bytes there are put back afterwards.
	tsAddr := orig.Rsp - 128 - 16
	saved := make([]byte, 16)
	if err := t.ReadMem(tsAddr, saved); err != nil {
		return err
	}
	var ts [16]byte
	binary.LittleEndian.PutUint64(ts[:], uint64(rs.RemainingNs/1e9))
	binary.LittleEndian.PutUint64(ts[8:], uint64(rs.RemainingNs%1e9))
	if err := t.WriteMem(tsAddr, ts[:]); err != nil {
		return err
	}
	r := orig
	r.Rip -= 2
	r.Rax = uint64(rs.Nr)
	r.Orig_rax = ^uint64(0)
	switch rs.Nr {
	case unix.SYS_NANOSLEEP:
		r.Rdi = tsAddr
	case unix.SYS_CLOCK_NANOSLEEP:
		r.Rsi = 0
		r.Rdx = tsAddr
	default:
		return fmt.Errorf("image damaged: sleep restart for syscall %d", rs.Nr)
	}
	tid := t.Inj.Tid
	if err := ptrace.SetRegs(tid, &r); err != nil {
		return err
	}
	// The thread must not run its own code before its release (a short
	// sleep would end and let it run on, half restored): it goes from its
	// syscall-exit stop straight to the sleep's syscall-entry stop, a
	// SIGSTOP is queued, and the sleep returns at once as interrupted,
	// with the remaining time in the kernel's restart block (or with 0 if
	// it was over). The thread stops at the sleep's exit, then in the
	// SIGSTOP's delivery, where the release (which discards it) runs the
	// kernel's restart logic.
	if err := syscallStep(tid); err != nil {
		return fmt.Errorf("restored sleep of %d: %w", tid, err)
	}
	if err := unix.Tgkill(t.Pid, tid, unix.SIGSTOP); err != nil {
		return fmt.Errorf("interrupt restored sleep: %w", err)
	}
	if err := syscallStep(tid); err != nil {
		return fmt.Errorf("restored sleep of %d: %w", tid, err)
	}
	now, err := ptrace.GetRegs(tid)
	if err != nil {
		return err
	}
	if err := contToSigstop(tid); err != nil {
		return fmt.Errorf("restored sleep of %d: %w", tid, err)
	}
	if err := t.WriteMem(tsAddr, saved); err != nil {
		return err
	}
	if -int64(now.Rax) != ptrace.ErrRestartRestartBlock {
		// The sleep ended before the interrupt: it completed.
		orig.Rax = now.Rax
		orig.Orig_rax = ^uint64(0)
	}
	return ptrace.SetRegs(t.Inj.Tid, &orig)
}

// syscallStep resumes a thread to its next syscall stop (entry or exit).
func syscallStep(tid int) error {
	if err := ptrace.ResumeSyscall(tid, 0); err != nil {
		return err
	}
	ws, err := ptrace.Wait(tid)
	if err != nil {
		return err
	}
	if !ws.Stopped() || int(ws.StopSignal()) != int(unix.SIGTRAP)|0x80 {
		return fmt.Errorf("unexpected stop %v, want a syscall stop", ws.StopSignal())
	}
	return nil
}

// guessRestartedSleep tells which call a thread in restart_syscall made, from
// the arguments it left in its registers: clock_nanosleep(clock id < 16,
// flags 0, req, rem) or nanosleep(req, rem), each req a valid timespec. Any
// other call (futex, poll with timeouts) stays restart_syscall, which the
// restored kernel answers with EINTR.
func guessRestartedSleep(t *Target, r ptrace.Regs) uint64 {
	validTs := func(addr uint64) bool {
		var ts [16]byte
		if addr == 0 || t.ReadMem(addr, ts[:]) != nil {
			return false
		}
		return int64(binary.LittleEndian.Uint64(ts[:])) >= 0 && binary.LittleEndian.Uint64(ts[8:]) < 1e9
	}
	switch {
	case r.Rdi < 16 && r.Rsi == 0 && validTs(r.Rdx) && (r.R10 == 0 || validTs(r.R10)):
		return unix.SYS_CLOCK_NANOSLEEP
	case validTs(r.Rdi) && (r.Rsi == 0 || validTs(r.Rsi)):
		return unix.SYS_NANOSLEEP
	}
	return unix.SYS_RESTART_SYSCALL
}

// CPUWords is a CPU set as the image stores it: 64 CPUs a word, trailing
// zero words left out.
func CPUWords(set *ptrace.CPUSet) []uint64 {
	var w []uint64
	for _, m := range set {
		w = append(w, uint64(m))
	}
	for len(w) > 0 && w[len(w)-1] == 0 {
		w = w[:len(w)-1]
	}
	return w
}

// CPUSetOf is the CPU set of an image thread; ok is false when the image
// has none (older than the field) or one too wide for this ckpt.
func CPUSetOf(th *pb.Thread) (set ptrace.CPUSet, ok bool) {
	if len(th.Cpus) == 0 || len(th.Cpus) > len(set) {
		return set, false
	}
	for i, m := range th.Cpus {
		for b := 0; b < 64; b++ {
			if m&(1<<b) != 0 {
				set.Set(64*i + b)
			}
		}
	}
	return set, set.Count() > 0
}
