package ptrace

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
)

// A thread's extended FPU state travels in the image as the kernel's
// ptrace XSAVE buffer (NT_X86_XSTATE): the legacy x87/SSE area, the XSAVE
// header, whose XSTATE_BV says which components hold other than their
// initial state, then each component at an offset the CPU chooses (CPUID
// leaf 0xD). The kernel takes back only a buffer of exactly its own CPU's
// size, so an image from a CPU with other vector registers (AVX-512, AMX,
// protection keys) must be laid out again for this one.

// XstateComponent is where a state component (its XSAVE feature bit)
// lies in the standard-format XSAVE area of a CPU.
type XstateComponent struct {
	Feature, Offset, Size uint32
}

// cpuid executes the CPUID instruction (cpuid_amd64.s).
func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)

// XstateLayout returns this CPU's XSAVE components above SSE that user
// space may use, in feature order.
func XstateLayout() []XstateComponent {
	eax, _, _, edx := cpuid(0xd, 0)
	mask := uint64(eax) | uint64(edx)<<32
	var l []XstateComponent
	for i := uint32(2); i < 64; i++ {
		if mask&(1<<i) == 0 {
			continue
		}
		size, off, _, _ := cpuid(0xd, i)
		if size != 0 {
			l = append(l, XstateComponent{Feature: i, Offset: off, Size: size})
		}
	}
	return l
}

const (
	xsaveHeader  = 512 // offset of the XSAVE header: XSTATE_BV, XCOMP_BV, reserved
	xsaveSwBytes = 464 // software-reserved bytes of the legacy area: in a ptrace buffer, XCR0 (the enabled features)
	xsaveMin     = xsaveHeader + 64
	featurePKRU  = 9
)

// xstateNames names the components a user could be told about.
var xstateNames = map[uint32]string{2: "AVX", 3: "MPX", 4: "MPX", 5: "AVX-512", 6: "AVX-512", 7: "AVX-512", 9: "protection keys", 17: "AMX", 18: "AMX", 19: "APX"}

// exemptFeatures are XSAVE features an image's CPU may have and this one
// lack without harm to what ran there: MPX (gone from Linux), protection
// keys (no library uses them unasked), AMX (a process must ask for it,
// which restart does again and refuses if it cannot).
var exemptFeatures = map[uint32]bool{3: true, 4: true, featurePKRU: true, 17: true, FeatureTileData: true}

// FeatureTileData is AMX tile data's XSAVE feature: the one a process must
// ask the kernel for (ARCH_REQ_XCOMP_PERM) before it uses it.
const FeatureTileData = 18

// CheckFeatures refuses an image whose CPU (layout src) had vector
// registers this one (dst) lacks: a program that looked at the CPU once
// at start (glibc picks its string functions so) would run into
// instructions this CPU does not have. nil src (an older image) passes.
func CheckFeatures(src, dst []XstateComponent) error {
	var missing []uint32
	names := map[string]bool{}
	var list []string
	for _, c := range src {
		if _, ok := findComponent(dst, c.Feature); ok || exemptFeatures[c.Feature] {
			continue
		}
		missing = append(missing, c.Feature)
		n := xstateNames[c.Feature]
		if n == "" {
			n = fmt.Sprintf("feature %d", c.Feature)
		}
		if !names[n] {
			names[n] = true
			list = append(list, n)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("the image comes from a CPU with %s registers (XSAVE components %v), which this CPU lacks: programs that chose such code when they started would crash here; restart it on a CPU with them, or pass --ignore-cpu to try anyway", strings.Join(list, ", "), missing)
}

// CheckFeatures is CheckFeatures for the fitter's image and this CPU; a
// lax fitter passes every image.
func (f *XstateFitter) CheckFeatures() error {
	if f.lax {
		return nil
	}
	return CheckFeatures(f.src, f.dst)
}

// XstateFitter sets images' xstate buffers into this CPU's threads.
type XstateFitter struct {
	// lax drops the components in use that this CPU lacks instead of
	// refusing the thread (restart --ignore-cpu).
	lax      bool
	src, dst []XstateComponent
	// cur is a buffer of this CPU's, read from the first thread set: the
	// size the kernel expects, and its XCR0.
	cur []byte
}

// NewXstateFitter returns a fitter for an image whose CPU had the layout
// src (nil: unknown, assumed to be this CPU's); lax: see XstateFitter.
func NewXstateFitter(src []XstateComponent, lax bool) *XstateFitter {
	dst := XstateLayout()
	if src == nil {
		src = dst
	}
	return &XstateFitter{src: src, dst: dst, lax: lax}
}

// Set writes x, a thread's xstate from the image, into thread tid, laid
// out again first if the image's CPU differs from this one.
func (f *XstateFitter) Set(tid int, x []byte) error {
	if len(x) == 0 {
		return nil
	}
	if f.cur == nil {
		cur, err := GetXstate(tid)
		if err != nil {
			return err
		}
		f.cur = cur
	}
	if len(x) == len(f.cur) && slices.Equal(f.src, f.dst) && (len(x) < xsaveHeader || bytes.Equal(x[xsaveSwBytes:xsaveHeader], f.cur[xsaveSwBytes:xsaveHeader])) {
		return SetXstate(tid, x)
	}
	y, err := fitXstate(x, f.src, f.cur, f.dst, f.lax)
	if err != nil {
		return fmt.Errorf("thread %d: %w", tid, err)
	}
	return SetXstate(tid, y)
}

// fitXstate lays x, an XSAVE buffer of a CPU with the layout src, out in
// a buffer like cur, of a CPU with the layout dst. The legacy area comes
// as it is; each component x holds (XSTATE_BV) moves to its offset in
// dst. A component dst lacks fails, except protection keys, whose
// register (PKRU) a CPU without them has no use for, and except with lax,
// where it is dropped.
func fitXstate(x []byte, src []XstateComponent, cur []byte, dst []XstateComponent, lax bool) ([]byte, error) {
	if len(x) < xsaveMin || len(cur) < xsaveMin {
		return nil, fmt.Errorf("image damaged: an xstate of %d bytes", len(x))
	}
	out := make([]byte, len(cur))
	copy(out[:xsaveHeader], x[:xsaveHeader])
	copy(out[xsaveSwBytes:xsaveHeader], cur[xsaveSwBytes:xsaveHeader])
	bv := binary.LittleEndian.Uint64(x[xsaveHeader:])
	keep := bv & 3 // x87, SSE: the legacy area
	for i := uint32(2); i < 64; i++ {
		if bv&(1<<i) == 0 {
			continue
		}
		s, sok := findComponent(src, i)
		d, dok := findComponent(dst, i)
		switch {
		case !dok && (i == featurePKRU || lax):
			continue
		case !dok:
			name := xstateNames[i]
			if name == "" {
				name = "extended"
			}
			return nil, fmt.Errorf("its %s registers (XSAVE component %d) are in use and this CPU has none: restart it on a CPU with them", name, i)
		case !sok || s.Size != d.Size || uint64(s.Offset)+uint64(s.Size) > uint64(len(x)):
			return nil, fmt.Errorf("image damaged: XSAVE component %d of the xstate (%d bytes) is not where the image's CPU layout says", i, len(x))
		case uint64(d.Offset)+uint64(d.Size) > uint64(len(out)):
			return nil, fmt.Errorf("XSAVE component %d in use, which the kernel does not let ptrace set on this CPU", i)
		}
		copy(out[d.Offset:d.Offset+d.Size], x[s.Offset:s.Offset+s.Size])
		keep |= 1 << i
	}
	binary.LittleEndian.PutUint64(out[xsaveHeader:], keep)
	return out, nil
}

func findComponent(l []XstateComponent, feature uint32) (XstateComponent, bool) {
	for _, c := range l {
		if c.Feature == feature {
			return c, true
		}
	}
	return XstateComponent{}, false
}
