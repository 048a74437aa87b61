// Package ptrace is ckpt's only user of ptrace(2) and wait4(2) on tracees.
//
// The kernel ties a tracee to the tracing *thread*, not to the process, and
// the Go runtime moves goroutines between threads. So every ptrace call is
// made from one goroutine locked to one OS thread: Run starts it and runs the
// whole checkpoint or restore on it. Functions in this package have the
// precondition "called from inside Run".
//
// Injected system calls (Injector) run a syscall inside a stopped tracee
// without writing code into it: the thread's registers are pointed at an
// existing `syscall` instruction (0f 05), the tracee is resumed with
// PTRACE_SYSCALL to its syscall-entry stop and again to its syscall-exit
// stop, where the result is read. The tracee never executes the instruction
// that follows.
package ptrace

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Regs is the x86-64 general register set (struct user_regs_struct).
type Regs = unix.PtraceRegs

// Run calls f on a new goroutine locked to a fresh OS thread and waits for
// it. Every tracee seized or started inside f is traced by that thread. The
// thread is discarded afterwards (not returned to the runtime's pool) so that
// no later goroutine inherits tracees.
func Run(f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread exits with the goroutine.
		done <- f()
	}()
	return <-done
}

const syscallStop = int(unix.SIGTRAP) | 0x80

// Options every tracee gets. EXITKILL is only for stubs: a checkpointed
// target must survive ckpt's death.
const (
	TargetOptions = unix.PTRACE_O_TRACESYSGOOD
	StubOptions   = unix.PTRACE_O_TRACESYSGOOD | unix.PTRACE_O_EXITKILL | unix.PTRACE_O_TRACECLONE | unix.PTRACE_O_TRACEFORK | unix.PTRACE_O_TRACEVFORK
)

// Seize attaches to tid without stopping it.
func Seize(tid int) error {
	if err := ptrace(unix.PTRACE_SEIZE, tid, 0, TargetOptions); err != nil {
		return fmt.Errorf("seize %d: %w", tid, err)
	}
	return nil
}

// SetOptions sets the ptrace options of a stopped tracee.
func SetOptions(tid, opts int) error {
	if err := unix.PtraceSetOptions(tid, opts); err != nil {
		return fmt.Errorf("set ptrace options of %d: %w", tid, err)
	}
	return nil
}

// Interrupt asks a seized tracee to stop.
func Interrupt(tid int) error {
	if err := unix.PtraceInterrupt(tid); err != nil {
		return fmt.Errorf("interrupt %d: %w", tid, err)
	}
	return nil
}

// ExitError reports that a tracee exited or was killed while ckpt waited
// for it to stop.
type ExitError struct {
	Tid    int
	Status unix.WaitStatus
}

func (e *ExitError) Error() string {
	if e.Status.Signaled() {
		return fmt.Sprintf("process %d was killed by %v", e.Tid, e.Status.Signal())
	}
	return fmt.Sprintf("process %d exited with status %d", e.Tid, e.Status.ExitStatus())
}

// Wait waits for the next state change of tid.
func Wait(tid int) (unix.WaitStatus, error) {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(tid, &ws, unix.WALL, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return ws, fmt.Errorf("wait for %d: %w", tid, err)
		}
		if ws.Exited() || ws.Signaled() {
			return ws, &ExitError{Tid: tid, Status: ws}
		}
		return ws, nil
	}
}

// WaitInterrupted waits for the stop a PTRACE_INTERRUPT (or a seize of a
// new child) produces. Signals that arrive first are delivered, as they would
// have been without ckpt, and the wait goes on. jobStop is the signal that
// stopped the process by job control (SIGSTOP, SIGTSTP, ...), 0 if it was
// running: the kernel reports every ptrace event stop of a seized thread
// with it while the group stop lasts, the interrupt's too.
func WaitInterrupted(tid int) (jobStop unix.Signal, err error) {
	groupStops := 0
	for {
		ws, err := Wait(tid)
		if err != nil {
			return 0, err
		}
		if !ws.Stopped() {
			continue
		}
		sig := ws.StopSignal()
		if isEventStop(ws) {
			if sig == unix.SIGTRAP {
				return 0, nil // running (or continued meanwhile)
			}
			if groupStops++; groupStops > 1 {
				return sig, nil
			}
			// The group stop's trap (a seize of a stopped thread makes
			// one); the interrupt's own comes once the thread resumes.
			if err := unix.PtraceCont(tid, 0); err != nil {
				return 0, fmt.Errorf("resume %d: %w", tid, err)
			}
			continue
		}
		if sig == unix.SIGTRAP || int(sig) == syscallStop {
			sig = 0
		}
		// A signal-delivery stop: let the signal through and wait again for
		// the interrupt, which stays pending.
		if err := unix.PtraceCont(tid, int(sig)); err != nil {
			return 0, fmt.Errorf("resume %d: %w", tid, err)
		}
	}
}

// isEventStop reports a PTRACE_EVENT_STOP: an interrupt's stop, or a group
// stop's, whose signal is that of the stop rather than SIGTRAP.
func isEventStop(ws unix.WaitStatus) bool {
	return ws.Stopped() && uint32(ws)>>16 == unix.PTRACE_EVENT_STOP
}

// WaitSignalStop waits for a traced-from-birth child (PTRACE_TRACEME or an
// auto-attached clone) to report its first stop, and returns the signal.
func WaitSignalStop(tid int) (unix.Signal, error) {
	ws, err := Wait(tid)
	if err != nil {
		return 0, err
	}
	if !ws.Stopped() {
		return 0, fmt.Errorf("process %d: unexpected wait status %#x", tid, uint32(ws))
	}
	return ws.StopSignal(), nil
}

// GetRegs reads the general registers.
func GetRegs(tid int) (Regs, error) {
	var r Regs
	if err := unix.PtraceGetRegs(tid, &r); err != nil {
		return r, fmt.Errorf("get registers of %d: %w", tid, err)
	}
	return r, nil
}

// SetRegs writes the general registers.
func SetRegs(tid int, r *Regs) error {
	if err := unix.PtraceSetRegs(tid, r); err != nil {
		return fmt.Errorf("set registers of %d: %w", tid, err)
	}
	return nil
}

const ntX86Xstate = 0x202

// GetXstate reads the extended FPU state (XSAVE area) of a thread.
func GetXstate(tid int) ([]byte, error) {
	buf := make([]byte, 16<<10)
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	if err := ptrace(unix.PTRACE_GETREGSET, tid, ntX86Xstate, uintptr(unsafe.Pointer(&iov))); err != nil {
		return nil, fmt.Errorf("get xstate of %d: %w", tid, err)
	}
	return buf[:iov.Len], nil
}

// SetXstate writes the extended FPU state of a thread.
func SetXstate(tid int, x []byte) error {
	if len(x) == 0 {
		return nil
	}
	iov := unix.Iovec{Base: &x[0]}
	iov.SetLen(len(x))
	if err := ptrace(unix.PTRACE_SETREGSET, tid, ntX86Xstate, uintptr(unsafe.Pointer(&iov))); err != nil {
		return fmt.Errorf("set xstate of %d (%d bytes; the image may come from a CPU with other vector registers): %w", tid, len(x), err)
	}
	return nil
}

// GetSigmask reads the blocked-signal mask.
func GetSigmask(tid int) (uint64, error) {
	var m uint64
	if err := ptrace(unix.PTRACE_GETSIGMASK, tid, 8, uintptr(unsafe.Pointer(&m))); err != nil {
		return 0, fmt.Errorf("get signal mask of %d: %w", tid, err)
	}
	return m, nil
}

// SetSigmask sets the blocked-signal mask.
func SetSigmask(tid int, m uint64) error {
	if err := ptrace(unix.PTRACE_SETSIGMASK, tid, 8, uintptr(unsafe.Pointer(&m))); err != nil {
		return fmt.Errorf("set signal mask of %d: %w", tid, err)
	}
	return nil
}

// SiginfoSize is sizeof(siginfo_t).
const SiginfoSize = 128

type peekSiginfoArgs struct {
	off   uint64
	flags uint32
	nr    int32
}

// PeekSiginfo returns the queued signals of a thread (shared=false) or of
// its process (shared=true) without dequeuing them.
func PeekSiginfo(tid int, shared bool) ([][]byte, error) {
	var out [][]byte
	args := peekSiginfoArgs{nr: 32}
	if shared {
		args.flags = 1 // PTRACE_PEEKSIGINFO_SHARED
	}
	buf := make([]byte, SiginfoSize*32)
	for {
		n, _, errno := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_PEEKSIGINFO, uintptr(tid), uintptr(unsafe.Pointer(&args)), uintptr(unsafe.Pointer(&buf[0])), 0, 0)
		if errno != 0 {
			return nil, fmt.Errorf("peek queued signals of %d: %w", tid, errno)
		}
		if n == 0 {
			return out, nil
		}
		for i := 0; i < int(n); i++ {
			out = append(out, append([]byte(nil), buf[i*SiginfoSize:(i+1)*SiginfoSize]...))
		}
		args.off += uint64(n)
	}
}

// RseqConfig is struct ptrace_rseq_configuration.
type RseqConfig struct {
	Addr  uint64
	Len   uint32
	Flags uint32
	Sig   uint32
	_     uint32
}

// GetRseq reads the thread's rseq registration.
func GetRseq(tid int) (RseqConfig, error) {
	var c RseqConfig
	const ptraceGetRseqConfiguration = 0x420f
	if err := ptrace(ptraceGetRseqConfiguration, tid, unsafe.Sizeof(c), uintptr(unsafe.Pointer(&c))); err != nil {
		return c, fmt.Errorf("get rseq of %d: %w", tid, err)
	}
	return c, nil
}

// Detach releases a stopped tracee, delivering sig (0 for none).
func Detach(tid int, sig int) error {
	if err := ptrace(unix.PTRACE_DETACH, tid, 0, uintptr(sig)); err != nil {
		return fmt.Errorf("detach %d: %w", tid, err)
	}
	return nil
}

// Cont resumes a stopped tracee.
func Cont(tid int, sig int) error {
	if err := unix.PtraceCont(tid, sig); err != nil {
		return fmt.Errorf("resume %d: %w", tid, err)
	}
	return nil
}

// ResumeSyscall resumes a tracee until its next syscall entry or exit.
func ResumeSyscall(tid int, sig int) error {
	if err := unix.PtraceSyscall(tid, sig); err != nil {
		return fmt.Errorf("resume %d to syscall: %w", tid, err)
	}
	return nil
}

// GetEventMsg returns the event message (for a clone event, the new TID).
func GetEventMsg(tid int) (uint, error) {
	m, err := unix.PtraceGetEventMsg(tid)
	if err != nil {
		return 0, fmt.Errorf("get event message of %d: %w", tid, err)
	}
	return m, nil
}

func ptrace(req int, pid int, addr, data uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(pid), addr, data, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// Errno extracts a negative syscall return as an errno.
func Errno(ret uint64) error {
	if int64(ret) < 0 && int64(ret) > -4096 {
		return syscall.Errno(-int64(ret))
	}
	return nil
}

var errNoStop = errors.New("tracee did not stop at the injected system call")

// ReapKilled consumes the exit reports of tids, traced threads that were
// sent SIGKILL, in whatever order they come, and gives up after timeout
// (a thread stuck in the kernel, e.g. on a dead NFS server). No fixed
// order is safe: the thread of a multi-threaded PID-namespace init that
// exits last waits (zap_pid_ns_processes) until every other thread of the
// namespace is released, and a traced thread is released only once its
// tracer has reaped it.
func ReapKilled(tids []int, timeout time.Duration) {
	left := slices.Clone(tids)
	deadline := time.Now().Add(timeout)
	for delay := 20 * time.Microsecond; len(left) > 0 && time.Now().Before(deadline); {
		progress := false
		for i := 0; i < len(left); {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(left[i], &ws, unix.WALL|unix.WNOHANG, nil)
			switch {
			case err == unix.EINTR:
				continue
			case err != nil || (pid == left[i] && (ws.Exited() || ws.Signaled())):
				left = slices.Delete(left, i, i+1) // reaped, or not ours to reap
				progress = true
				continue
			case pid == left[i]:
				progress = true // a stop from before the kill, consumed
			}
			i++
		}
		if !progress {
			time.Sleep(delay)
			delay = min(2*delay, 2*time.Millisecond)
		}
	}
}
