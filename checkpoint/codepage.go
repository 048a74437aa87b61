package checkpoint

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/ptrace"
	"github.com/ckpt/ckpt/resource"
)

// The code page is memory ckpt maps in a frozen process for the calls it
// injects there: ptrace.InjectCode (a syscall followed by an int3, and a
// batch loop) at its start, then scratch memory for the calls' arguments
// and results. At the process's own syscall instruction a call costs two
// ptrace stops (syscall entry and exit), each a round trip between ckpt
// and the target; through the page it costs one, and a batch of
// independent calls one in all: a Go program's 60 signal handlers were
// 120 stops. The page is unmapped before the threads are put back, and
// before readProc reads the process's maps (it waits for synced).
//
// A process that cannot map it (no memory, or refused) gets its calls the
// old way, with scratch memory below each thread's stack.
const (
	codeSize    = 16 << 10
	codeScratch = 4096 // where the scratch area starts
)

// codeWorthIt tells whether a process with signal sets sets and threads
// threads makes enough injected calls for the code page to pay for its
// own (two more calls, a page to fill, a TLB flush at unmap). A process
// with one thread and no handlers made 6 calls, which took as long either
// way (A/B, medians of 40 checkpoints); since the prctl reads it makes 9,
// again a wash (collect 1.52 ms without the page, 1.58 with, 40 each); a
// Python interpreter (three handlers) makes 12, where the page paid a
// little (1.98 ms, 1.83 ms, 30 each); a Go program, 60 handlers and 7
// threads, makes 87.
func codeWorthIt(sets resource.SignalSets, threads int) bool {
	// handlers, itimers, brk and two prctls, each thread's three
	calls := bits.OnesCount64(sets.Asked()) + 3 + 3 + 3*threads
	return calls > 9
}

// mapCode maps the code page through the first thread, whose injector
// runs calls at the process's own syscall instruction.
func (f *frozen) mapCode() error {
	th := f.threads[0]
	r, err := th.inj.Raw(unix.SYS_MMAP, 0, codeSize, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		return fmt.Errorf("map a page for injected calls: %w", err)
	}
	if ptrace.Errno(r) != nil {
		return nil // calls go the slow way
	}
	f.code = r
	if err := th.target.WriteMem(r, ptrace.InjectCode()); err != nil {
		return fmt.Errorf("fill the page for injected calls: %w", err)
	}
	return nil
}

// useCode points th's calls at the code page and its scratch area, if
// there is one, else gives th scratch memory below its stack's red zone.
// A thread runs calls to the page's int3 only when SIGTRAP can stop it
// there: not ignored (the kernel would reset the handler of a forced
// SIGTRAP it ignores or blocks; it stays unblocked during the calls) and
// not pending (it would be taken for the int3); else it runs them through
// the page's syscall instruction with entry and exit stops.
func (f *frozen) useCode(th *frozenThread, sets resource.SignalSets) error {
	if f.code == 0 {
		// Just below the red zone of the thread's own stack, put back by
		// restore.
		scratch := th.regs.Rsp - 128 - 256
		saved := make([]byte, 256)
		th.target.Scratch, th.target.ScratchLen = scratch, uint64(len(saved))
		if err := th.target.ReadMem(scratch, saved); err != nil {
			return fmt.Errorf("stack of thread %d has no room below %#x: %w", th.tid, th.regs.Rsp, err)
		}
		th.savedMem = saved
		return nil
	}
	th.target.Scratch, th.target.ScratchLen = f.code+codeScratch, codeSize-codeScratch
	th.inj.SyscallAddr = f.code
	trap := resource.SigBit(unix.SIGTRAP)
	if (sets.Ignored|sets.SharedPending)&trap != 0 {
		return nil
	}
	pending, err := ptrace.PeekSiginfo(th.tid, false)
	if err != nil {
		return err
	}
	for _, si := range pending {
		if len(si) >= 4 && unix.Signal(binary.LittleEndian.Uint32(si)) == unix.SIGTRAP {
			return nil
		}
	}
	if err := ptrace.SetSigmask(th.tid, ^uint64(0)&^trap); err != nil {
		return err
	}
	th.inj.Trap, th.inj.BatchAddr = true, f.code+ptrace.InjectBatchOff
	return nil
}

// unmapCode removes the code page, through the first thread at the
// process's own syscall instruction. Every thread's injector goes back to
// that instruction first: a thread left at a syscall-exit stop is moved
// back into its interrupt stop through a call there (Injector.
// ReturnToInterruptStop), which must not point into the page.
func (f *frozen) unmapCode() error {
	if f.code == 0 {
		return nil
	}
	for _, th := range f.threads {
		if th.inj != nil {
			th.inj.Trap, th.inj.SyscallAddr, th.inj.BatchAddr = false, f.syscall, 0
		}
	}
	th := f.threads[0]
	if th.inj == nil {
		return fmt.Errorf("page ckpt mapped at %#x in process %d left: no thread to unmap it with", f.code, f.pid)
	}
	r, err := th.inj.Raw(unix.SYS_MUNMAP, f.code, codeSize)
	if err == nil {
		err = ptrace.Errno(r)
	}
	if err != nil {
		return fmt.Errorf("unmap the page ckpt mapped at %#x in process %d: %w", f.code, f.pid, err)
	}
	f.code = 0
	return nil
}
