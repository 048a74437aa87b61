package ptrace

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// maxSteps bounds StepOut: a vDSO function runs a few hundred
// instructions, a retry of its seqlock a few more.
const maxSteps = 100000

// StepOut single-steps thread tid of process pid, stopped and with every
// signal it can block blocked, until its instruction pointer leaves
// [lo, hi), and returns its registers there. A thread stopped by a signal
// meanwhile (SIGSTOP, which cannot be blocked) gets it queued again and
// StepOut fails: the caller releases the thread and the signal takes
// effect.
func StepOut(pid, tid int, lo, hi uint64) (Regs, error) {
	for range maxSteps {
		if err := ptrace(unix.PTRACE_SINGLESTEP, tid, 0, 0); err != nil {
			return Regs{}, fmt.Errorf("step thread %d: %w", tid, err)
		}
		ws, err := Wait(tid)
		if err != nil {
			return Regs{}, err
		}
		if !ws.Stopped() {
			return Regs{}, fmt.Errorf("thread %d ended while stepped", tid)
		}
		if sig := ws.StopSignal(); sig != unix.SIGTRAP {
			unix.Tgkill(pid, tid, sig)
			return Regs{}, fmt.Errorf("thread %d got %v while stepped out of the vDSO; checkpoint again", tid, sig)
		}
		r, err := GetRegs(tid)
		if err != nil {
			return Regs{}, err
		}
		if r.Rip < lo || r.Rip >= hi {
			return r, nil
		}
	}
	return Regs{}, fmt.Errorf("thread %d still in the vDSO after %d steps", tid, maxSteps)
}
