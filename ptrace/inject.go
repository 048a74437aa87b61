package ptrace

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Injector runs system calls inside one stopped thread.
//
// Preconditions:
//   - called from inside Run;
//   - the thread is in a ptrace stop (an interrupt stop or a syscall-exit stop).
type Injector struct {
	Tid int
	// SyscallAddr is the address of a `syscall` instruction in the tracee.
	SyscallAddr uint64
	// Base supplies the registers an injected call does not set.
	Base Regs
	// Trap says that an int3 follows the syscall instruction (as in a
	// restore stub): a call then takes one PTRACE_CONT to that trap instead
	// of two PTRACE_SYSCALL stops. The thread's SIGTRAP must not be blocked
	// or ignored, or the kernel resets its handler when the int3 hits.
	Trap bool
	// BatchAddr, if not zero, is the address of a batch loop (see RunBatch)
	// in the tracee's code, ended by an int3 like Trap mode's calls.
	BatchAddr uint64
	// atExit records that the last stop was a syscall-exit stop, where the
	// kernel does not run its syscall-restart logic on resume.
	atExit bool
}

// Syscall runs nr(args...) in the thread and returns the raw result. A
// negative errno result is returned as an error.
func (in *Injector) Syscall(nr uintptr, args ...uint64) (uint64, error) {
	r, err := in.Raw(nr, args...)
	if err != nil {
		return 0, err
	}
	if e := Errno(r); e != nil {
		return r, e
	}
	return r, nil
}

// Raw runs nr(args...) and returns rax as the kernel left it.
func (in *Injector) Raw(nr uintptr, args ...uint64) (uint64, error) {
	if in.Trap {
		return in.trapCall(nr, args...)
	}
	return in.ToExit(nr, args...)
}

// ToExit runs nr(args...) and leaves the thread at the syscall-exit stop,
// before it returns to user space: the way to run a call that unmaps the
// code it runs from.
func (in *Injector) ToExit(nr uintptr, args ...uint64) (uint64, error) {
	regs := in.callRegs(nr, args...)
	if err := SetRegs(in.Tid, &regs); err != nil {
		return 0, err
	}
	if err := in.step(true); err != nil {
		return 0, fmt.Errorf("syscall %d entry: %w", nr, err)
	}
	if err := in.step(false); err != nil {
		return 0, fmt.Errorf("syscall %d exit: %w", nr, err)
	}
	out, err := GetRegs(in.Tid)
	if err != nil {
		return 0, err
	}
	in.atExit = true
	return out.Rax, nil
}

// trapCall runs nr(args...) through to the int3 after the syscall
// instruction.
func (in *Injector) trapCall(nr uintptr, args ...uint64) (uint64, error) {
	regs := in.callRegs(nr, args...)
	out, err := in.runToTrap(&regs)
	if err != nil {
		return 0, fmt.Errorf("syscall %d: %w", nr, err)
	}
	return out.Rax, nil
}

// RunBatch runs the tracee's batch loop over the call entries in
// [first, end) of its memory, up to its int3, and returns the address of
// the entry it stopped at: end if every call succeeded, else the one that
// failed. The entry layout is the loop's own (restart/stub.go).
func (in *Injector) RunBatch(first, end uint64) (uint64, error) {
	if in.BatchAddr == 0 {
		return 0, errors.New("ptrace: no batch loop in the tracee")
	}
	regs := in.Base
	regs.Rip = in.BatchAddr
	regs.R12, regs.R13 = first, end
	regs.Orig_rax = ^uint64(0)
	out, err := in.runToTrap(&regs)
	if err != nil {
		return 0, fmt.Errorf("batch of system calls: %w", err)
	}
	if out.R12 < first || out.R12 > end {
		return 0, fmt.Errorf("batch of system calls: stopped at entry %#x outside %#x-%#x", out.R12, first, end)
	}
	return out.R12, nil
}

// TileConfig is a 64-byte AMX tile configuration (palette 1, tile 0 of
// one row of 4 bytes) for TouchTiles.
var TileConfig = [64]byte{0: 1, 16: 4, 48: 1}

// TouchTiles makes a thread whose code is InjectCode (a restore stub's)
// use AMX tile data: it loads the configuration at cfg (TileConfig),
// zeroes a tile and releases the tiles. That first use of tile data in a
// thread of a process with the permission for AMX is when the kernel
// gives the thread room for AMX state; until then ptrace cannot set it.
func (in *Injector) TouchTiles(cfg uint64) error {
	regs := in.Base
	regs.Rip = in.SyscallAddr + injectTilesOff
	regs.Rdi = cfg
	regs.Orig_rax = ^uint64(0)
	if _, err := in.runToTrap(&regs); err != nil {
		return fmt.Errorf("first AMX instruction: %w", err)
	}
	return nil
}

// runToTrap sets regs and resumes the thread until it reaches an int3.
func (in *Injector) runToTrap(regs *Regs) (*Regs, error) {
	if err := SetRegs(in.Tid, regs); err != nil {
		return nil, err
	}
	if err := Cont(in.Tid, 0); err != nil {
		return nil, err
	}
	for {
		ws, err := Wait(in.Tid)
		if err != nil {
			return nil, err
		}
		if !ws.Stopped() {
			continue
		}
		if ws.StopSignal() == unix.SIGTRAP && ws.TrapCause() <= 0 {
			break
		}
		if ws.TrapCause() > 0 || int(ws.StopSignal()) == syscallStop {
			if err := Cont(in.Tid, 0); err != nil {
				return nil, err
			}
			continue
		}
		return nil, fmt.Errorf("%w: got %v", errNoStop, ws.StopSignal())
	}
	out, err := GetRegs(in.Tid)
	if err != nil {
		return nil, err
	}
	in.atExit = false
	return &out, nil
}

// callRegs returns the registers that make the thread run nr(args...) at
// the syscall instruction.
func (in *Injector) callRegs(nr uintptr, args ...uint64) Regs {
	if len(args) > 6 {
		panic("ptrace: more than 6 syscall arguments")
	}
	var a [6]uint64
	copy(a[:], args)
	regs := in.Base
	regs.Rip = in.SyscallAddr
	regs.Rax = uint64(nr)
	// orig_rax = -1 keeps the kernel from applying syscall-restart logic to
	// our registers when the thread leaves a signal-related stop.
	regs.Orig_rax = ^uint64(0)
	regs.Rdi, regs.Rsi, regs.Rdx, regs.R10, regs.R8, regs.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
	return regs
}

// step resumes to the next syscall stop.
func (in *Injector) step(entry bool) error {
	if err := ResumeSyscall(in.Tid, 0); err != nil {
		return err
	}
	for {
		ws, err := Wait(in.Tid)
		if err != nil {
			return err
		}
		if !ws.Stopped() {
			continue
		}
		if int(ws.StopSignal()) == syscallStop {
			return nil
		}
		if ws.TrapCause() > 0 {
			// A ptrace event (fork, clone, interrupt) stops on the way: the
			// caller handles clone events through Clone; others are passed.
			if err := ResumeSyscall(in.Tid, 0); err != nil {
				return err
			}
			continue
		}
		// A signal arrived although the injector's caller blocked signals:
		// only a synchronous fault can do that, which means a bad call.
		return fmt.Errorf("%w: got %v at rip", errNoStop, ws.StopSignal())
	}
}

// Clone runs a clone3 in the thread and returns the TID of the child, which
// is auto-attached and left in its first stop.
func (in *Injector) Clone(argsAddr, size uint64) (int, error) {
	regs := in.callRegs(unix.SYS_CLONE3, argsAddr, size)
	if err := SetRegs(in.Tid, &regs); err != nil {
		return 0, err
	}
	if err := in.step(true); err != nil {
		return 0, fmt.Errorf("clone3 entry: %w", err)
	}
	if err := ResumeSyscall(in.Tid, 0); err != nil {
		return 0, err
	}
	child := 0
	for {
		ws, err := Wait(in.Tid)
		if err != nil {
			return 0, err
		}
		if !ws.Stopped() {
			continue
		}
		if c := ws.TrapCause(); c == unix.PTRACE_EVENT_CLONE || c == unix.PTRACE_EVENT_FORK || c == unix.PTRACE_EVENT_VFORK {
			m, err := GetEventMsg(in.Tid)
			if err != nil {
				return 0, err
			}
			child = int(m)
			if err := ResumeSyscall(in.Tid, 0); err != nil {
				return 0, err
			}
			continue
		}
		if int(ws.StopSignal()) == syscallStop {
			break
		}
		return 0, fmt.Errorf("clone3: %w: got %v", errNoStop, ws.StopSignal())
	}
	out, err := GetRegs(in.Tid)
	if err != nil {
		return 0, err
	}
	in.atExit = true
	if e := Errno(out.Rax); e != nil {
		return 0, e
	}
	if child == 0 {
		child = int(out.Rax)
	}
	// The child starts with a stop of its own (SIGSTOP or an event stop).
	if _, err := WaitSignalStop(child); err != nil {
		return 0, fmt.Errorf("first stop of new process %d: %w", child, err)
	}
	return child, nil
}

// ReturnToInterruptStop moves a thread that is at the syscall-exit stop of
// an injected call back into an interrupt stop inside signal delivery. Only
// there does setting its original registers (with a pending -ERESTART*
// result) make the kernel restart its interrupted system call on resume.
func (in *Injector) ReturnToInterruptStop() error {
	if !in.atExit {
		return nil
	}
	if err := Interrupt(in.Tid); err != nil {
		return err
	}
	// Should the trap not happen first, the thread would run from here:
	// point it at a harmless getpid so that it stops at that syscall instead.
	regs := in.callRegs(unix.SYS_GETPID)
	if err := SetRegs(in.Tid, &regs); err != nil {
		return err
	}
	if err := ResumeSyscall(in.Tid, 0); err != nil {
		return err
	}
	for {
		ws, err := Wait(in.Tid)
		if err != nil {
			return err
		}
		if !ws.Stopped() {
			continue
		}
		if isEventStop(ws) { // SIGTRAP, or the group stop's signal
			in.atExit = false
			return nil
		}
		if int(ws.StopSignal()) == syscallStop {
			// It reached the getpid instead: point it back at the same
			// getpid (never at the code after it) and try again.
			if err := SetRegs(in.Tid, &regs); err != nil {
				return err
			}
			if err := ResumeSyscall(in.Tid, 0); err != nil {
				return err
			}
			continue
		}
		return fmt.Errorf("return %d to its stop: unexpected %v", in.Tid, ws.StopSignal())
	}
}
