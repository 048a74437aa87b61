package resource

import (
	"encoding/binary"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
)

// TestVdsoSymbols reads this kernel's vDSO, as a checkpoint does.
func TestVdsoSymbols(t *testing.T) {
	syms, start, end, err := VdsoSymbols()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]uint64{}
	for _, s := range syms {
		if s.Offset >= end-start {
			t.Errorf("%s at %#x, past the vDSO's %d bytes", s.Name, s.Offset, end-start)
		}
		names[s.Name] = s.Offset
	}
	for _, n := range []string{"__vdso_clock_gettime", "__vdso_gettimeofday", "__vdso_time", "__vdso_getcpu"} {
		if _, ok := names[n]; !ok {
			t.Errorf("no %s among %v", n, names)
		}
	}
	if names["clock_gettime"] != names["__vdso_clock_gettime"] {
		t.Errorf("clock_gettime at %#x, its alias __vdso_clock_gettime at %#x", names["clock_gettime"], names["__vdso_clock_gettime"])
	}
	if !SameVdso(syms, syms) || SameVdso(syms, syms[1:]) {
		t.Error("SameVdso")
	}
}

func TestVdsoProxy(t *testing.T) {
	old := []*pb.VdsoSymbol{{Name: "__vdso_time", Offset: 0x100}, {Name: "__vdso_getcpu", Offset: 0x200}, {Name: "__vdso_sgx_enter_enclave", Offset: 0x300}, {Name: "time", Offset: 0x100}}
	new := []*pb.VdsoSymbol{{Name: "__vdso_time", Offset: 0x480}, {Name: "time", Offset: 0x480}}
	code, err := vdsoProxy(0x1000, old, new, 0x7000_0000)
	if err != nil {
		t.Fatal(err)
	}
	if len(code) != 0x1000 || code[0] != 0xcc || code[0xfff] != 0xcc {
		t.Errorf("%d bytes, first %#x, last %#x: want 4096 of int3 around the functions", len(code), code[0], code[0xfff])
	}
	if p := code[0x100:]; p[0] != 0xff || p[1] != 0x25 || binary.LittleEndian.Uint64(p[6:]) != 0x7000_0480 {
		t.Errorf("time: % x, want a jump to 0x70000480", p[:14])
	}
	if p := code[0x200:]; p[0] != 0xb8 || binary.LittleEndian.Uint32(p[1:]) != unix.SYS_GETCPU || p[8] != 0x0f || p[9] != 0x05 || p[10] != 0xc3 {
		t.Errorf("getcpu, which the new vDSO lacks: % x, want its system call", p[:11])
	}
	if p := code[0x300:]; p[0] != 0xb8 || int32(binary.LittleEndian.Uint32(p[1:])) != -int32(unix.ENOSYS) || p[7] != 0xc3 {
		t.Errorf("an unknown function: % x, want -ENOSYS", p[:8])
	}

	for _, c := range []struct {
		what string
		old  []*pb.VdsoSymbol
		want string
	}{
		{"a function past the end", []*pb.VdsoSymbol{{Name: "f", Offset: 0xff8}}, "image damaged"},
		{"functions too close", []*pb.VdsoSymbol{{Name: "f", Offset: 0x100}, {Name: "g", Offset: 0x108}}, "too close"},
	} {
		if _, err := vdsoProxy(0x1000, c.old, new, 0x7000_0000); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.what, err, c.want)
		}
	}
}

func BenchmarkVdsoSymbols(b *testing.B) {
	for b.Loop() {
		if _, _, _, err := VdsoSymbols(); err != nil {
			b.Fatal(err)
		}
	}
}
