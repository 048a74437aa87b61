package ptrace

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SeccompFilter is one classic-BPF program of a thread's seccomp chain,
// as the kernel returns it (struct sock_filter, 8 bytes an instruction),
// and the flags it was installed with that the kernel reports
// (SECCOMP_FILTER_FLAG_LOG).
type SeccompFilter struct {
	Prog  []byte
	Flags uint64
}

// SeccompFilters reads the seccomp filters of stopped tracee tid, oldest
// first. The kernel hands them out to a tracer with CAP_SYS_ADMIN that is
// not itself under seccomp.
func SeccompFilters(tid int) ([]SeccompFilter, error) {
	var chain []SeccompFilter
	for i := 0; ; i++ { // index 0 is the newest
		n, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(tid), uintptr(i), 0, 0, 0)
		if e == unix.ENOENT {
			break
		}
		if e != 0 {
			return nil, fmt.Errorf("read seccomp filter %d of thread %d: %w", i, tid, e)
		}
		prog := make([]byte, 8*n)
		if n > 0 {
			if _, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(tid), uintptr(i), uintptr(unsafe.Pointer(&prog[0])), 0, 0); e != 0 {
				return nil, fmt.Errorf("read seccomp filter %d of thread %d: %w", i, tid, e)
			}
		}
		md := struct{ FilterOff, Flags uint64 }{FilterOff: uint64(i)}
		if _, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_METADATA, uintptr(tid), unsafe.Sizeof(md), uintptr(unsafe.Pointer(&md)), 0, 0); e != 0 {
			return nil, fmt.Errorf("read seccomp filter %d flags of thread %d: %w", i, tid, e)
		}
		chain = append(chain, SeccompFilter{Prog: prog, Flags: md.Flags})
	}
	for i, j := 0, len(chain)-1; i < j; i, j = i+1, j-1 {
		chain[i], chain[j] = chain[j], chain[i]
	}
	return chain, nil
}

// SuspendSeccomp sets PTRACE_O_SUSPEND_SECCOMP on tracee tid (with opts,
// its other options): its seccomp filters do not apply while ckpt traces
// it, so that they cannot block ckpt's injected calls, and apply again
// once it is detached. Only a tracer with CAP_SYS_ADMIN may.
func SuspendSeccomp(tid, opts int) error {
	if err := SetOptions(tid, opts|unix.PTRACE_O_SUSPEND_SECCOMP); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%w: lifting a process's seccomp filters while ckpt works on it needs CAP_SYS_ADMIN", err)
		}
		return err
	}
	return nil
}
