package ptrace

import "fmt"

// Kernel-internal results of a system call interrupted by a signal or a
// ptrace stop (include/linux/errno.h); user space never sees them: the
// kernel restarts the call, or fails it with EINTR, on its way back.
const (
	ErrRestartSys          = 512
	ErrRestartNoIntr       = 513
	ErrRestartNoHand       = 514
	ErrRestartRestartBlock = 516
)

// restartRace reports whether r, a stopped thread's registers, hold a call
// that a signal handler running before it is made again must interrupt:
// one that the kernel fails with EINTR when a handler runs first.
// ERESTARTNOINTR is not one: it is made again after any handler.
func restartRace(r *Regs) bool {
	if int64(r.Orig_rax) < 0 {
		return false
	}
	switch -int64(r.Rax) {
	case ErrRestartSys, ErrRestartNoHand, ErrRestartRestartBlock:
		return true
	}
	return false
}

// Releasing is a thread on its way back into its call (see StartRelease).
type Releasing struct {
	tid  int
	regs Regs
}

// StartRelease begins to detach a thread stopped inside signal delivery
// (an interrupt or signal-delivery stop) whose registers are r; Finish
// ends it.
//
// A thread stopped inside a blocking call (pause, read, a sleep) is
// detached there with the kernel's restart pending. Detached at once, the
// kernel would set the restart up and only then return to user space,
// possibly after a preemption, to make the call again; a signal with a
// handler that came in between would run the handler first and the call
// would then block as if it had never come: a lost wakeup, which on a
// busy machine the restored tree's own signals hit. So such a thread runs
// on under ptrace until it is inside the call again (its syscall-entry
// stop) and is detached there, where a signal interrupts the call as it
// would have without ckpt. A signal that comes first stops it in signal
// delivery: it gets r back, so that the kernel fails or restarts the call
// as that signal's handler says, and is detached with that signal.
//
// A thread not in such a call is detached at once (nil is returned).
// Starting every thread before finishing any lets them run into their
// calls side by side rather than one wake-up after another.
func StartRelease(tid int, r *Regs) (*Releasing, error) {
	if !restartRace(r) {
		return nil, Detach(tid, 0)
	}
	if err := ResumeSyscall(tid, 0); err != nil {
		return nil, err
	}
	return &Releasing{tid: tid, regs: *r}, nil
}

// Finish waits until the thread is inside its call, or a signal stops it
// first, and detaches it.
func (rl *Releasing) Finish() error {
	tid := rl.tid
	for {
		ws, err := Wait(tid)
		if err != nil {
			return err
		}
		if !ws.Stopped() {
			continue
		}
		sig := ws.StopSignal()
		switch {
		case int(sig) == syscallStop:
			return Detach(tid, 0)
		case isEventStop(ws):
			// An event stop: the process is stopped by job control. It
			// stays so once detached and makes its call when continued.
			return Detach(tid, 0)
		}
		if err := SetRegs(tid, &rl.regs); err != nil {
			return fmt.Errorf("thread %d: signal %v during release: %w", tid, sig, err)
		}
		return Detach(tid, int(sig))
	}
}
