package ptrace

import (
	"bytes"
	"encoding/binary"
	"os/exec"
	"strings"
	"testing"
)

// Layouts like an Intel CPU with AVX-512 and protection keys, an AMD one
// (AVX-512 right after AVX: no MPX area) and one with AVX only.
var (
	intelLayout = []XstateComponent{{2, 576, 256}, {5, 1088, 64}, {6, 1152, 512}, {7, 1664, 1024}, {9, 2688, 8}}
	amdLayout   = []XstateComponent{{2, 576, 256}, {5, 832, 64}, {6, 896, 512}, {7, 1408, 1024}, {9, 2432, 8}}
	avxLayout   = []XstateComponent{{2, 576, 256}}
)

// xbuf returns an XSAVE buffer of size bytes for layout l, with the
// components of bv filled with their feature number and the legacy area
// and software bytes with sw.
func xbuf(size int, l []XstateComponent, bv uint64, sw byte) []byte {
	b := make([]byte, size)
	for i := 0; i < xsaveHeader; i++ {
		b[i] = 0xa0
	}
	for i := xsaveSwBytes; i < xsaveHeader; i++ {
		b[i] = sw
	}
	binary.LittleEndian.PutUint64(b[xsaveHeader:], bv)
	for _, c := range l {
		if bv&(1<<c.Feature) != 0 {
			for i := c.Offset; i < c.Offset+c.Size; i++ {
				b[i] = byte(c.Feature)
			}
		}
	}
	return b
}

func TestFitXstate(t *testing.T) {
	tests := []struct {
		name     string
		x        []byte
		src, dst []XstateComponent
		cur      []byte
		want     []byte // nil: an error containing err
		err      string
	}{
		{"avx image on an avx-512 cpu", xbuf(832, avxLayout, 0b111, 1), avxLayout, intelLayout, xbuf(2696, intelLayout, 0, 2),
			xbuf(2696, intelLayout, 0b111, 2), ""},
		{"intel image on an amd cpu", xbuf(2696, intelLayout, 0b1011100111, 1), intelLayout, amdLayout, xbuf(2440, amdLayout, 0, 2),
			xbuf(2440, amdLayout, 0b1011100111, 2), ""},
		{"protection keys dropped", xbuf(2696, intelLayout, 0b1000000111, 1), intelLayout, avxLayout, xbuf(832, avxLayout, 0, 2),
			xbuf(832, avxLayout, 0b111, 2), ""},
		{"avx-512 in use, cpu without", xbuf(2696, intelLayout, 0b1000100111, 1), intelLayout, avxLayout, xbuf(832, avxLayout, 0, 2),
			nil, "AVX-512 registers (XSAVE component 5) are in use"},
		{"component past the buffer", xbuf(1000, avxLayout, 0b1000000111, 1), intelLayout, intelLayout, xbuf(2696, intelLayout, 0, 2),
			nil, "image damaged"},
		{"too short", make([]byte, 100), avxLayout, avxLayout, xbuf(832, avxLayout, 0, 2), nil, "image damaged"},
	}
	for _, tc := range tests {
		got, err := fitXstate(tc.x, tc.src, tc.cur, tc.dst, false)
		switch {
		case tc.want == nil && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.err)
		case tc.want != nil && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != nil && !bytes.Equal(got, tc.want):
			t.Errorf("%s: the buffer differs (%d bytes, want %d)", tc.name, len(got), len(tc.want))
		}
	}
}

// TestXstateLayout checks this CPU's layout against what the kernel's
// buffer of a thread says of it.
func TestXstateLayout(t *testing.T) {
	l := XstateLayout()
	for _, c := range l {
		if c.Feature == 2 && (c.Offset != 576 || c.Size != 256) {
			t.Errorf("AVX at %d, %d bytes; the architecture puts it at 576, 256 bytes", c.Offset, c.Size)
		}
	}
	var end uint32 = xsaveMin
	for _, c := range l {
		end = max(end, c.Offset+c.Size)
	}
	// The software bytes of a ptrace buffer start with XCR0, the features
	// the kernel enabled: the layout's, up to the size of the buffer.
	x, err := selfXstate(t)
	if err != nil {
		t.Skip(err)
	}
	xcr0 := binary.LittleEndian.Uint64(x[xsaveSwBytes:])
	for _, c := range l {
		if xcr0&(1<<c.Feature) == 0 {
			t.Errorf("component %d in the layout but not enabled (XCR0 %#x)", c.Feature, xcr0)
		}
	}
	if int(end) != len(x) {
		t.Errorf("the layout ends at %d bytes; the kernel's buffer has %d", end, len(x))
	}
}

// selfXstate reads the xstate of a child (sleep) stopped under ptrace.
func selfXstate(t *testing.T) ([]byte, error) {
	cmd := exec.Command("sleep", "10")
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	var x []byte
	err := Run(func() error {
		pid := cmd.Process.Pid
		if err := Seize(pid); err != nil {
			return err
		}
		if err := Interrupt(pid); err != nil {
			return err
		}
		if _, err := WaitInterrupted(pid); err != nil {
			return err
		}
		var err error
		x, err = GetXstate(pid)
		return err
	})
	return x, err
}

func TestCheckFeatures(t *testing.T) {
	amx := append(append([]XstateComponent(nil), intelLayout...), XstateComponent{17, 2752, 64}, XstateComponent{18, 2816, 8192}, XstateComponent{3, 960, 64})
	tests := []struct {
		name     string
		src, dst []XstateComponent
		err      string
	}{
		{"same CPU", intelLayout, intelLayout, ""},
		{"older image", nil, avxLayout, ""},
		{"onto a bigger CPU", avxLayout, intelLayout, ""},
		{"AVX-512 lost", intelLayout, avxLayout, "a CPU with AVX-512 registers (XSAVE components [5 6 7]), which this CPU lacks"},
		{"AMX, MPX and protection keys lost", amx, intelLayout[:4], ""},
		{"AVX lost", avxLayout, nil, "AVX registers"},
	}
	for _, tc := range tests {
		err := CheckFeatures(tc.src, tc.dst)
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.err)
		}
	}
	// Allowed anyway (--ignore-cpu), AVX-512 state in use is dropped.
	got, err := fitXstate(xbuf(2696, intelLayout, 0b1000100111, 1), intelLayout, xbuf(832, avxLayout, 0, 2), avxLayout, true)
	if err != nil || !bytes.Equal(got, xbuf(832, avxLayout, 0b111, 2)) {
		t.Errorf("lax: %v", err)
	}
}
