package restart

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/proc"
	"github.com/ckpt/ckpt/ptrace"
	"github.com/ckpt/ckpt/resource"
)

// The stub is the empty shell every restored process is built in: a static
// ELF of one page whose only code is `syscall; int3`. ckpt starts it traced,
// never lets it run freely, and drives it with injected system calls until
// it has become the checkpointed process.

const stubBase = 0x10000
const stubCodeOff = 0x80

// stubCode is the stub's only code, at the start of its code page: the
// injector's call and batch loop (ptrace.InjectCode).
var stubCode = ptrace.InjectCode()

// stubBatchOff is the batch loop's offset in stubCode.
const stubBatchOff = ptrace.InjectBatchOff

// initCode is where a first stub that is the init of the PID namespace it
// restores into (an unprivileged restart, see unpriv.go) goes once the
// tree runs: it reaps every process that ends in the namespace; when the
// restored root (PID r12) ends, it writes the root's 4-byte wait status to
// descriptor r13 and exits with its exit code, which ends the namespace.
//
//	reap: mov edi,-1; mov rsi,rsp; mov edx,__WALL; xor r10d,r10d
//	      mov eax,SYS_wait4; syscall
//	      cmp eax,-ECHILD; je gone
//	      cmp eax,r12d; jne reap
//	      mov edi,r13d; mov rsi,rsp; mov edx,4; mov eax,SYS_write; syscall
//	      mov edi,[rsp]; shr edi,8; and edi,0xff; mov eax,SYS_exit_group; syscall
//	gone: mov edi,255; mov eax,SYS_exit_group; syscall; jmp gone
var initCode = []byte{
	0xbf, 0xff, 0xff, 0xff, 0xff, 0x48, 0x89, 0xe6, 0xba, 0x00, 0x00, 0x00,
	0x40, 0x45, 0x31, 0xd2, 0xb8, 0x3d, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x83,
	0xf8, 0xf6, 0x74, 0x2a, 0x44, 0x39, 0xe0, 0x75, 0xdf, 0x44, 0x89, 0xef,
	0x48, 0x89, 0xe6, 0xba, 0x04, 0x00, 0x00, 0x00, 0xb8, 0x01, 0x00, 0x00,
	0x00, 0x0f, 0x05, 0x8b, 0x3c, 0x24, 0xc1, 0xef, 0x08, 0x81, 0xe7, 0xff,
	0x00, 0x00, 0x00, 0xb8, 0xe7, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xbf, 0xff,
	0x00, 0x00, 0x00, 0xb8, 0xe7, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0xf2,
}

// initCodeOff is initCode's offset in the stub executable.
const initCodeOff = stubCodeOff + 0x60

// stubELF builds the stub executable.
func stubELF() []byte {
	b := make([]byte, initCodeOff+len(initCode))
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // 64-bit, little endian, version 1
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2)  // ET_EXEC
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], stubBase+stubCodeOff) // entry
	le.PutUint64(b[32:], 64)                   // phoff
	le.PutUint16(b[52:], 64)                   // ehsize
	le.PutUint16(b[54:], 56)                   // phentsize
	le.PutUint16(b[56:], 1)                    // phnum
	ph := b[64:]
	le.PutUint32(ph[0:], 1) // PT_LOAD
	le.PutUint32(ph[4:], 5) // R+X
	le.PutUint64(ph[16:], stubBase)
	le.PutUint64(ph[24:], stubBase)
	le.PutUint64(ph[32:], uint64(len(b)))
	le.PutUint64(ph[40:], uint64(len(b)))
	le.PutUint64(ph[48:], 0x1000)
	copy(b[stubCodeOff:], stubCode)
	copy(b[initCodeOff:], initCode)
	return b
}

// stub is a process being restored.
type stub struct {
	pid int
	t   *resource.Target
	// code is the page holding the syscall instruction, scratch the memory
	// after it.
	code uint64
	// tids are the threads created besides the main one.
	tids []int
	// send is ckpt's end of the socket the stub receives descriptors
	// through, in an unprivileged restart (see resource.FdPuller); nil
	// when the stub pulls them with its pidfd of ckpt.
	send *os.File
}

// stubPidfd is where every stub holds a pidfd of ckpt, inherited from the
// first stub, to pull descriptors from ckpt with pidfd_getfd.
const stubPidfd = 3

// scratchPages is the size of a stub's scratch area.
const scratchPages = 4

// startStub0 starts the first stub, a plain child of ckpt whose only job is
// to clone the restored process with its original PID.
//
// With um set (an unprivileged restart) it starts in a user namespace of
// its own, and a PID namespace too unless the image is a container's; see
// unpriv.go.
//
// Preconditions: called from inside ptrace.Run (the child's tracer is the
// calling thread).
func startStub0(um *userNS) (*stub, error) {
	fd, err := unix.MemfdCreate("ckpt-stub", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("create stub: %w", err)
	}
	f := os.NewFile(uintptr(fd), "ckpt-stub")
	defer f.Close()
	if _, err := f.Write(stubELF()); err != nil {
		return nil, fmt.Errorf("write stub: %w", err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	self, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open ckpt: %w", err)
	}
	defer unix.Close(self)
	attr := &syscall.ProcAttr{
		Env:   []string{},
		Files: []uintptr{devnull.Fd(), devnull.Fd(), devnull.Fd(), uintptr(self)},
		Sys:   &syscall.SysProcAttr{Ptrace: true, Pdeathsig: syscall.SIGKILL},
	}
	if um != nil {
		um.setup(attr)
	}
	pid, err := syscall.ForkExec(fmt.Sprintf("/proc/self/fd/%d", fd), []string{"ckpt-stub"}, attr)
	if err != nil {
		if um != nil {
			return nil, fmt.Errorf("start stub in a user namespace of its own: %w", err)
		}
		return nil, fmt.Errorf("start stub: %w", err)
	}
	s := &stub{pid: pid, code: stubBase + stubCodeOff}
	if um != nil {
		s.send = um.sock
	}
	if _, err := ptrace.WaitSignalStop(pid); err != nil {
		s.kill()
		return nil, fmt.Errorf("start stub: %w", err)
	}
	if err := ptrace.SetOptions(pid, ptrace.StubOptions); err != nil {
		s.kill()
		return nil, err
	}
	regs, err := ptrace.GetRegs(pid)
	if err != nil {
		s.kill()
		return nil, err
	}
	inj := &ptrace.Injector{Tid: pid, SyscallAddr: s.code, BatchAddr: s.code + stubBatchOff, Base: regs, Trap: true}
	// Until relocation, scratch memory is the stub's initial stack.
	s.t = &resource.Target{Pid: pid, Inj: inj, Scratch: (regs.Rsp - 8192) &^ 15, ScratchLen: 4096}
	return s, nil
}

// cloneArgs is struct clone_args (clone3).
type cloneArgs struct {
	Flags, Pidfd, ChildTid, ParentTid, ExitSignal uint64
	Stack, StackSize, TLS, SetTid, SetTidSize     uint64
	Cgroup                                        uint64
}

// clone makes the stub create a new stub process with the given PID (in
// the new process's own PID namespace). With CLONE_PARENT in flags the new
// process is ckpt's own child (so that ckpt can wait for it); otherwise it
// is the stub's child and sends exitSignal to it when it ends.
func (s *stub) clone(pid int, flags, exitSignal uint64) (*stub, error) {
	t, err := s.clone3(pid, flags, exitSignal)
	if errors.Is(err, unix.EEXIST) {
		// In ckpt's own PID namespace (inner ID = outer ID), see who
		// holds the PID.
		if inner, ierr := proc.InnerID(s.pid, "NSpid"); ierr == nil && int(inner) == s.pid {
			err = waitGroupFree(pid, func() (err error) {
				t, err = s.clone3(pid, flags, exitSignal)
				return err
			})
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create process %d: %w", pid, err)
	}
	t.Pid = t.Inj.Tid
	return &stub{pid: t.Pid, code: s.code, t: t, send: s.send}, nil
}

// clone3 injects clone3 with set_tid = id into the stub and returns the
// new task (process or thread), stopped before it runs any code, with an
// injector that uses the stub's code and scratch (inherited or shared).
// id is the task's ID in its own PID namespace; the injector's Tid is its
// ID in ckpt's, which every ptrace and /proc access uses.
func (s *stub) clone3(id int, flags, exitSignal uint64) (*resource.Target, error) {
	var tid [8]byte
	binary.LittleEndian.PutUint64(tid[:], uint64(id))
	tidAddr, err := s.t.Put(256, tid[:])
	if err != nil {
		return nil, err
	}
	args := cloneArgs{Flags: flags, ExitSignal: exitSignal, SetTid: tidAddr, SetTidSize: 1}
	addr, err := s.t.Put(0, bytesOfClone(&args))
	if err != nil {
		return nil, err
	}
	child, err := s.t.Inj.Clone(addr, uint64(len(bytesOfClone(&args))))
	if err != nil {
		return nil, err
	}
	if child != id {
		// In a new PID namespace the two IDs differ; set_tid fixed the one
		// inside.
		if inner, err := proc.InnerID(child, "NSpid"); err != nil || int(inner) != id { // cannot happen
			(&stub{pid: child}).kill()
			return nil, fmt.Errorf("got id %d (%d inside, %v)", child, inner, err)
		}
	}
	regs, err := ptrace.GetRegs(child)
	if err != nil {
		return nil, err
	}
	inj := &ptrace.Injector{Tid: child, SyscallAddr: s.code, BatchAddr: s.code + stubBatchOff, Base: regs, Trap: true}
	return &resource.Target{Pid: s.pid, Inj: inj, Scratch: s.t.Scratch, ScratchLen: s.t.ScratchLen}, nil
}

// threadFlags make a clone3 child a thread of the stub.
const threadFlags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD | unix.CLONE_SYSVSEM

// cloneThread makes the stub start a thread with the given TID. The
// thread stops before it runs any code; it shares the stub's code and
// scratch memory, which is safe because injections run one at a time.
func (s *stub) cloneThread(tid int) (*resource.Target, error) {
	t, err := s.clone3(tid, threadFlags, 0)
	if err != nil {
		return nil, fmt.Errorf("create thread %d: %w", tid, err)
	}
	return t, nil
}

// relocate moves the stub's code and scratch into anonymous memory at at,
// a range free in the image's layout, and unmaps everything else the stub
// had except the kernel's vdso areas (returned, to be moved into place).
// The exe file must not stay mapped, or PR_SET_MM_MAP refuses a new exe.
func (s *stub) relocate(at uint64) ([]proc.Vma, error) {
	size := uint64(1+scratchPages) * 4096
	// Writable and executable at first, so that the code can be written
	// and then run to make it read-only along with the unmapping below.
	if _, err := s.t.Syscall(unix.SYS_MMAP, at, size, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0); err != nil {
		return nil, fmt.Errorf("map stub at %#x: %w", at, err)
	}
	if err := s.t.WriteMem(at, stubCode); err != nil {
		return nil, err
	}
	s.code = at
	s.t.Inj.SyscallAddr, s.t.Inj.BatchAddr = at, at+stubBatchOff
	s.t.Scratch, s.t.ScratchLen = at+4096, scratchPages*4096
	vmas, err := proc.ReadMaps(s.pid)
	if err != nil {
		return nil, err
	}
	calls := []resource.Call{{Nr: unix.SYS_MPROTECT, Args: []uint64{at, 4096, unix.PROT_READ | unix.PROT_EXEC},
		Err: func(err error) error { return fmt.Errorf("protect stub code: %w", err) }}}
	var specials []proc.Vma
	for _, v := range vmas {
		switch {
		case v.Start >= at && v.End <= at+size || v.Name == "[vsyscall]":
		case v.Name == "[vdso]" || v.Name == "[vvar]" || v.Name == "[vvar_vclock]":
			specials = append(specials, v)
		default:
			calls = append(calls, resource.Call{Nr: unix.SYS_MUNMAP, Args: []uint64{v.Start, v.End - v.Start},
				Err: func(err error) error { return fmt.Errorf("unmap stub area %#x-%#x: %w", v.Start, v.End, err) }})
		}
	}
	if _, err := s.t.Batch(calls); err != nil {
		return nil, err
	}
	return specials, nil
}

// becomeZombie ends a stub the way a zombie of the image ended: status is
// its wait status (exit code << 8, or the number of the signal that killed
// it). Its parent is a stub that does not reap, so it stays a zombie.
func (s *stub) becomeZombie(status uint32) error {
	if sig := int(status & 0x7f); sig != 0 {
		// Die of the signal, without a core dump, with its default action.
		unix.Prlimit(s.pid, unix.RLIMIT_CORE, &unix.Rlimit{}, nil)
		if err := ptrace.SetSigmask(s.pid, 0); err != nil {
			return err
		}
		if err := unix.Tgkill(s.pid, s.pid, unix.Signal(sig)); err != nil {
			return err
		}
		deliver := 0
		for {
			if err := ptrace.Cont(s.pid, deliver); err != nil {
				return err
			}
			ws, err := ptrace.Wait(s.pid)
			var ee *ptrace.ExitError
			if errors.As(err, &ee) {
				return nil
			}
			if err != nil {
				return err
			}
			deliver = 0
			if ws.Stopped() && int(ws.StopSignal()) == sig {
				deliver = sig
			}
		}
	}
	regs := s.t.Inj.Base
	regs.Rip, regs.Rax, regs.Rdi, regs.Orig_rax = s.code, unix.SYS_EXIT_GROUP, uint64(status>>8&0xff), ^uint64(0)
	if err := ptrace.SetRegs(s.pid, &regs); err != nil {
		return err
	}
	if err := ptrace.Cont(s.pid, 0); err != nil {
		return err
	}
	for {
		_, err := ptrace.Wait(s.pid)
		var ee *ptrace.ExitError
		if errors.As(err, &ee) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := ptrace.Cont(s.pid, 0); err != nil {
			return err
		}
	}
}

// drainSigchld takes back the SIGCHLD a stub got when a child of it became
// a zombie at restore: the original parent had dealt with it already (or
// has it recorded among its pending signals).
func (s *stub) drainSigchld() error {
	var set [8]byte
	binary.LittleEndian.PutUint64(set[:], 1<<(unix.SIGCHLD-1))
	var ts [16]byte
	setAddr, err := s.t.Put(0, set[:])
	if err != nil {
		return err
	}
	tsAddr, err := s.t.Put(64, ts[:])
	if err != nil {
		return err
	}
	if _, err := s.t.Inj.Raw(unix.SYS_RT_SIGTIMEDWAIT, setAddr, 0, tsAddr, 8); err != nil {
		return err
	}
	return nil
}

// kill ends the stub and reaps it. Its other threads are reaped first:
// the kernel reports a traced thread-group leader only after them.
func (s *stub) kill() {
	unix.Kill(s.pid, unix.SIGKILL)
	for i := len(s.tids) - 1; i >= -1; i-- {
		tid := s.pid
		if i >= 0 {
			tid = s.tids[i]
		}
		var ws unix.WaitStatus
		for {
			_, err := unix.Wait4(tid, &ws, unix.WALL, nil)
			if err == unix.EINTR {
				continue
			}
			if err != nil || ws.Exited() || ws.Signaled() {
				break
			}
		}
	}
}
