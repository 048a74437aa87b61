package resource

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/ptrace"
)

// injectInto runs f with a Target on pid, a process asleep in a system
// call (its stack below the red zone for scratch), then lets it sleep on
// as it was: registers, signal mask, detached.
//
// A process let go by an earlier call may be caught on its way back into
// its sleep (the kernel restarts the call from user space, with rip at
// the syscall instruction): it is then let go again and caught anew.
func injectInto(pid int, f func(tg *Target) error) error {
	return ptrace.Run(func() error {
		if err := ptrace.Seize(pid); err != nil {
			return err
		}
		var regs unix.PtraceRegs
		var tg *Target
		for try := 0; ; try++ {
			if err := ptrace.Interrupt(pid); err != nil {
				return err
			}
			if _, err := ptrace.WaitInterrupted(pid); err != nil {
				return err
			}
			var err error
			if regs, err = ptrace.GetRegs(pid); err != nil {
				return err
			}
			tg = &Target{Pid: pid, Scratch: (regs.Rsp - 128 - 16384) &^ 15, ScratchLen: 8192}
			var insn [2]byte
			if err := tg.ReadMem(regs.Rip-2, insn[:]); err == nil && insn == [2]byte{0x0f, 0x05} {
				break
			} else if try == 50 {
				return fmt.Errorf("no syscall instruction behind %#x: %v", regs.Rip, err)
			}
			if err := ptrace.Cont(pid, 0); err != nil {
				return err
			}
			time.Sleep(10 * time.Millisecond)
		}
		mask, err := ptrace.GetSigmask(pid)
		if err != nil {
			return err
		}
		if err := ptrace.SetSigmask(pid, ^uint64(0)); err != nil {
			return err
		}
		tg.Inj = &ptrace.Injector{Tid: pid, SyscallAddr: regs.Rip - 2, Base: regs}
		ferr := f(tg)
		if err := letSleepOn(tg, regs, mask); ferr == nil {
			ferr = err
		}
		return ferr
	})
}

func letSleepOn(tg *Target, regs unix.PtraceRegs, mask uint64) error {
	if err := tg.Inj.ReturnToInterruptStop(); err != nil {
		return err
	}
	if err := ptrace.SetRegs(tg.Pid, &regs); err != nil {
		return err
	}
	if err := ptrace.SetSigmask(tg.Pid, mask); err != nil {
		return err
	}
	return ptrace.Detach(tg.Pid, 0)
}
