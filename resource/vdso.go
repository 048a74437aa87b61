package resource

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// The vDSO is the kernel's code mapped into every process: clock_gettime,
// gettimeofday, time, getcpu, getrandom run there without a system call.
// Programs keep pointers into it (glibc and the Go runtime look its
// functions up once, at start), so a restart must put a vDSO where the
// image had one, with each function at the offset the program knows.
//
// On the kernel that wrote the image that is the kernel's own vDSO, moved
// into place (MoveSpecials). Another kernel's vDSO places its functions
// elsewhere (and reads a [vvar] of another layout), so there the restart
// maps the kernel's vDSO at a free address and puts a proxy at the old
// one: anonymous code with, at each function's old offset, a jump to the
// same function in the new vDSO (or, for one the new kernel lacks, the
// system call it stands for). The image records the functions' offsets
// (Header.vdso_symbols) for that. A thread stopped inside the vDSO would
// resume in the middle of code the proxy does not have: the checkpoint
// steps such a thread out first (ptrace.StepOut).

// VdsoSymbols returns the functions of ckpt's own vDSO, which is the
// kernel's, and the vDSO's bounds.
func VdsoSymbols() (syms []*pb.VdsoSymbol, start, end uint64, err error) {
	vmas, err := proc.ReadMaps(os.Getpid())
	if err != nil {
		return nil, 0, 0, err
	}
	for _, v := range vmas {
		if v.Name == "[vdso]" {
			start, end = v.Start, v.End
		}
	}
	if end == 0 {
		return nil, 0, 0, fmt.Errorf("this process has no vDSO")
	}
	b := make([]byte, end-start)
	mem, err := os.Open("/proc/self/mem")
	if err != nil {
		return nil, 0, 0, err
	}
	defer mem.Close()
	if _, err := mem.ReadAt(b, int64(start)); err != nil {
		return nil, 0, 0, fmt.Errorf("read the vDSO: %w", err)
	}
	syms, err = parseVdso(b)
	return syms, start, end, err
}

// VdsoSymbolsAsync is VdsoSymbols on a goroutine of its own (it takes
// ~0.1 ms, mostly ELF parsing); the function returned waits for them and
// returns nil if they could not be read.
func VdsoSymbolsAsync() func() []*pb.VdsoSymbol {
	done := make(chan []*pb.VdsoSymbol, 1)
	go func() {
		syms, _, _, _ := VdsoSymbols()
		done <- syms
	}()
	var syms []*pb.VdsoSymbol
	got := false
	return func() []*pb.VdsoSymbol {
		if !got {
			syms, got = <-done, true
		}
		return syms
	}
}

// parseVdso lists the functions a vDSO image exports, with their offsets
// from its start, sorted by name.
func parseVdso(b []byte) ([]*pb.VdsoSymbol, error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("the vDSO: %w", err)
	}
	var base uint64
	found := false
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			base, found = p.Vaddr-p.Off, true
			break
		}
	}
	dyn, err := f.DynamicSymbols()
	if err != nil || !found {
		return nil, fmt.Errorf("the vDSO has no symbols (%v)", err)
	}
	var syms []*pb.VdsoSymbol
	for _, s := range dyn {
		if elf.ST_TYPE(s.Info) != elf.STT_FUNC || s.Value < base || s.Value-base >= uint64(len(b)) {
			continue
		}
		syms = append(syms, &pb.VdsoSymbol{Name: s.Name, Offset: s.Value - base})
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].Name < syms[j].Name })
	return syms, nil
}

// SameVdso says whether two vDSOs export the same functions at the same
// offsets.
func SameVdso(a, b []*pb.VdsoSymbol) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].Offset != b[i].Offset {
			return false
		}
	}
	return true
}

// vdsoFallback is the system call a vDSO function stands for, for a proxy
// whose new kernel lacks the function.
var vdsoFallback = map[string]uint32{
	"__vdso_clock_gettime": unix.SYS_CLOCK_GETTIME, "clock_gettime": unix.SYS_CLOCK_GETTIME,
	"__vdso_gettimeofday": unix.SYS_GETTIMEOFDAY, "gettimeofday": unix.SYS_GETTIMEOFDAY,
	"__vdso_time": unix.SYS_TIME, "time": unix.SYS_TIME,
	"__vdso_getcpu": unix.SYS_GETCPU, "getcpu": unix.SYS_GETCPU,
	"__vdso_clock_getres": unix.SYS_CLOCK_GETRES, "clock_getres": unix.SYS_CLOCK_GETRES,
	"__vdso_getrandom": unix.SYS_GETRANDOM, "getrandom": unix.SYS_GETRANDOM,
}

// proxyJumpLen is the size of the longest piece of code a proxy puts at a
// function: jmp *0(%rip) and the 8-byte address.
const proxyJumpLen = 14

// vdsoProxy returns the code of a proxy of size bytes for a vDSO whose
// functions were old, jumping to the functions new of the vDSO at newBase.
func vdsoProxy(size uint64, old, new []*pb.VdsoSymbol, newBase uint64) ([]byte, error) {
	code := make([]byte, size)
	for i := range code {
		code[i] = 0xcc // int3 wherever no function starts
	}
	at := map[string]uint64{}
	for _, s := range new {
		at[s.Name] = newBase + s.Offset
	}
	byOffset := append([]*pb.VdsoSymbol(nil), old...)
	sort.Slice(byOffset, func(i, j int) bool { return byOffset[i].Offset < byOffset[j].Offset })
	for i, s := range byOffset {
		if s.Offset+proxyJumpLen > size {
			return nil, fmt.Errorf("image damaged: vDSO function %s at %#x of a %d-byte vDSO", s.Name, s.Offset, size)
		}
		if i+1 < len(byOffset) && byOffset[i+1].Offset != s.Offset && byOffset[i+1].Offset < s.Offset+proxyJumpLen {
			return nil, fmt.Errorf("vDSO functions %s and %s of the image are too close together for a proxy", s.Name, byOffset[i+1].Name)
		}
		p := code[s.Offset:]
		if to, ok := at[s.Name]; ok {
			// jmp *0(%rip); .quad to
			copy(p, []byte{0xff, 0x25, 0, 0, 0, 0})
			binary.LittleEndian.PutUint64(p[6:], to)
		} else if nr, ok := vdsoFallback[s.Name]; ok {
			// mov $nr, %eax; mov %rcx, %r10; syscall; ret
			copy(p, []byte{0xb8, 0, 0, 0, 0, 0x49, 0x89, 0xca, 0x0f, 0x05, 0xc3})
			binary.LittleEndian.PutUint32(p[1:], nr)
		} else {
			// mov $-ENOSYS, %eax; cltq; ret
			copy(p, []byte{0xb8, 0, 0, 0, 0, 0x48, 0x98, 0xc3})
			enosys := -int32(unix.ENOSYS)
			binary.LittleEndian.PutUint32(p[1:], uint32(enosys))
		}
	}
	return code, nil
}

// ProxyVdso places this kernel's vDSO areas (have, the stub's) at to,
// where the image has no area, keeping their distances, and maps a proxy
// at the image's vDSO (see the top of this file). old are the image's vDSO
// functions, new this kernel's.
func ProxyVdso(t *Target, mm *pb.Mm, have []proc.Vma, to uint64, old, new []*pb.VdsoSymbol) error {
	var vdso *pb.Vma
	for _, v := range mm.Vmas {
		switch {
		case v.Special == "[vdso]":
			vdso = v
		case v.Special != "" && !specialNames[v.Special]:
			return fmt.Errorf("image damaged: special area %q", v.Special)
		}
	}
	lo := ^uint64(0)
	for _, h := range have {
		if specialNames[h.Name] {
			lo = min(lo, h.Start)
		}
	}
	var calls []Call
	newBase := uint64(0)
	for _, h := range have {
		if !specialNames[h.Name] {
			continue
		}
		dst := to + h.Start - lo
		if h.Name == "[vdso]" {
			newBase = dst
		}
		calls = append(calls, Call{Nr: unix.SYS_MREMAP, Args: []uint64{h.Start, h.End - h.Start, h.End - h.Start, unix.MREMAP_MAYMOVE | unix.MREMAP_FIXED, dst},
			Err: func(err error) error { return fmt.Errorf("move vdso area %#x to %#x: %w", h.Start, dst, err) }})
	}
	if newBase == 0 {
		return fmt.Errorf("this kernel gives the restorer no vDSO")
	}
	if vdso == nil {
		_, err := t.Batch(calls)
		return err
	}
	size := vdso.End - vdso.Start
	code, err := vdsoProxy(size, old, new, newBase)
	if err != nil {
		return err
	}
	calls = append(calls, Call{Nr: unix.SYS_MMAP, Args: []uint64{vdso.Start, size, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0},
		Err: func(err error) error { return fmt.Errorf("map the vDSO proxy at %#x: %w", vdso.Start, err) }})
	if _, err := t.Batch(calls); err != nil {
		return err
	}
	if err := t.WriteMem(vdso.Start, code); err != nil {
		return fmt.Errorf("write the vDSO proxy: %w", err)
	}
	_, err = t.Batch([]Call{{Nr: unix.SYS_MPROTECT, Args: []uint64{vdso.Start, size, unix.PROT_READ | unix.PROT_EXEC},
		Err: func(err error) error { return fmt.Errorf("protect the vDSO proxy: %w", err) }}})
	return err
}
