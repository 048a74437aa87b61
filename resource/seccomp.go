package resource

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/ptrace"
)

// Seccomp filters are read by the tracer (PTRACE_SECCOMP_GET_FILTER) and
// put back by an injected seccomp(2) in the stub while it is still root,
// before its threads are cloned (they inherit the chain). Both sides set
// PTRACE_O_SUSPEND_SECCOMP first, so that the filters never see ckpt's
// injected calls; they apply again from the detach on.

const (
	seccompSetModeFilter = 1
	seccompRetUserNotif  = 0x7fc00000
	seccompRetActionFull = 0xffff0000
	bpfRetK              = 0x06 // BPF_RET | BPF_K
)

// notifies reports whether a filter program (struct sock_filter: u16 code,
// u8 jt, u8 jf, u32 k) returns SECCOMP_RET_USER_NOTIF for some call.
func notifies(prog []byte) bool {
	for i := 0; i+8 <= len(prog); i += 8 {
		code := binary.LittleEndian.Uint16(prog[i:])
		k := binary.LittleEndian.Uint32(prog[i+4:])
		if code == bpfRetK && k&seccompRetActionFull == seccompRetUserNotif {
			return true
		}
	}
	return false
}

// DumpSeccomp reads the seccomp chain of thread tid of p. The first
// thread's becomes the process's; another thread must have the same
// (threads can differ, and a restart could not rebuild that).
func DumpSeccomp(p *pb.Process, tid int, first bool) error {
	chain, err := ptrace.SeccompFilters(tid)
	if errors.Is(err, unix.EINVAL) {
		chain, err = nil, nil // no filter
	}
	if err != nil {
		return err
	}
	for i, f := range chain {
		if notifies(f.Prog) {
			return fmt.Errorf("seccomp filter %d of thread %d hands calls to a supervisor (SECCOMP_RET_USER_NOTIF), which a restart cannot reconnect: %w", i, tid, ErrUnsupported)
		}
	}
	if first {
		p.Seccomp = nil
		for _, f := range chain {
			p.Seccomp = append(p.Seccomp, &pb.SeccompFilter{Prog: f.Prog, Flags: f.Flags})
		}
		return nil
	}
	same := len(chain) == len(p.Seccomp)
	for i := 0; same && i < len(chain); i++ {
		same = bytes.Equal(chain[i].Prog, p.Seccomp[i].Prog) && chain[i].Flags == p.Seccomp[i].Flags
	}
	if !same {
		return fmt.Errorf("thread %d has other seccomp filters than the main thread (%d against %d): %w", tid, len(chain), len(p.Seccomp), ErrUnsupported)
	}
	return nil
}

// RestoreSeccomp installs p's filters, oldest first, into the stub t
// (whose seccomp ckpt has suspended), through its scratch memory: a
// struct sock_fprog, then the program.
func RestoreSeccomp(t *Target, p *pb.Process) error {
	for i, f := range p.Seccomp {
		n := len(f.Prog) / 8
		if n == 0 || len(f.Prog)%8 != 0 || n > 4096 {
			return fmt.Errorf("image damaged: seccomp filter %d of process %d is %d bytes", i, p.Pid, len(f.Prog))
		}
		if uint64(16+len(f.Prog)) > t.ScratchLen {
			return fmt.Errorf("seccomp filter %d of process %d: %d instructions, more than ckpt's scratch memory holds (%d bytes)", i, p.Pid, n, t.ScratchLen)
		}
		hdr := make([]byte, 16)
		binary.LittleEndian.PutUint16(hdr, uint16(n))
		binary.LittleEndian.PutUint64(hdr[8:], t.Scratch+16)
		if err := t.WriteMem(t.Scratch, append(hdr, f.Prog...)); err != nil {
			return err
		}
		if _, err := t.Syscall(unix.SYS_SECCOMP, seccompSetModeFilter, f.Flags, t.Scratch); err != nil {
			return fmt.Errorf("install seccomp filter %d of process %d: %w", i, p.Pid, err)
		}
	}
	return nil
}
