// Package resource holds, for each kind of kernel object a process owns,
// both halves of its life in ckpt: how it is read from a frozen process
// (Dump*) and how it is rebuilt inside a restore stub (Restore*). Keeping
// both halves in one file keeps the image fields and their meaning in one
// place, as the seed's kernel patches did.
//
// Preconditions for every function here: called from inside ptrace.Run, with
// the target's threads in a ptrace stop.
package resource

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/ptrace"
)

// Target is a stopped process that ckpt reads from and runs system calls in.
type Target struct {
	Pid int
	Inj *ptrace.Injector
	// Scratch is memory in the target that injected calls may use for their
	// arguments and results; ScratchLen bytes long.
	Scratch    uint64
	ScratchLen uint64
}

// ReadMem reads target memory at addr into b.
func (t *Target) ReadMem(addr uint64, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	local := []unix.Iovec{{Base: &b[0], Len: uint64(len(b))}}
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(b)}}
	n, err := unix.ProcessVMReadv(t.Pid, local, remote, 0)
	if err != nil {
		return fmt.Errorf("read memory of %d at %#x: %w", t.Pid, addr, err)
	}
	if n != len(b) {
		return fmt.Errorf("read memory of %d at %#x: short read %d of %d", t.Pid, addr, n, len(b))
	}
	return nil
}

// WriteMem writes b into target memory at addr. The memory must be writable.
func (t *Target) WriteMem(addr uint64, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	local := []unix.Iovec{{Base: &b[0], Len: uint64(len(b))}}
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(b)}}
	n, err := unix.ProcessVMWritev(t.Pid, local, remote, 0)
	if err != nil {
		return fmt.Errorf("write memory of %d at %#x: %w", t.Pid, addr, err)
	}
	if n != len(b) {
		return fmt.Errorf("write memory of %d at %#x: short write %d of %d", t.Pid, addr, n, len(b))
	}
	return nil
}

// Syscall runs a system call in the target.
func (t *Target) Syscall(nr uintptr, args ...uint64) (uint64, error) {
	return t.Inj.Syscall(nr, args...)
}

// Put copies v into scratch memory at offset off and returns its address.
func (t *Target) Put(off uint64, b []byte) (uint64, error) {
	if off+uint64(len(b)) > t.ScratchLen {
		return 0, fmt.Errorf("scratch area of %d too small for %d bytes", t.Pid, off+uint64(len(b)))
	}
	return t.Scratch + off, t.WriteMem(t.Scratch+off, b)
}

// PutString copies a NUL-terminated string into scratch memory.
func (t *Target) PutString(off uint64, s string) (uint64, error) {
	return t.Put(off, append([]byte(s), 0))
}

// bytesOf views a plain struct as bytes.
func bytesOf[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

func unsafePointer[T any](v *T) unsafe.Pointer { return unsafe.Pointer(v) }
