package proc

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestDataPages maps areas in the test process, touches some of their pages
// in different ways, and checks which runs each way of scanning reports.
func TestDataPages(t *testing.T) {
	const n = 64
	anon, err := unix.Mmap(-1, 0, n*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(anon)
	// Written: pages 0-3 and 20-29; read only (the zero page): 10-11.
	for _, p := range []int{0, 1, 2, 3, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29} {
		anon[p*pageSize] = 1
	}
	readSink += anon[10*pageSize] + anon[11*pageSize]

	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, make([]byte, n*pageSize), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	file, err := unix.Mmap(int(f.Fd()), 0, n*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(file)
	// Read (a page of the file): 0-7; written (copied, anonymous): 8-9.
	for p := 0; p < 8; p++ {
		readSink += file[p*pageSize]
	}
	file[8*pageSize], file[9*pageSize] = 1, 1

	base := func(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&b[0]))) }
	pages := func(b []byte, ps ...int) [][2]uint64 {
		var out [][2]uint64
		for _, p := range ps {
			out = append(out, [2]uint64{base(b) + uint64(p)*pageSize, base(b) + uint64(p+1)*pageSize})
		}
		return out
	}
	runs := func(s *PageScanner, b []byte) [][2]uint64 {
		var out [][2]uint64
		err := s.DataPages(base(b), base(b)+n*pageSize, func(start, end uint64) error {
			// One page a run, so that runs split differently compare equal.
			for a := start; a < end; a += pageSize {
				out = append(out, [2]uint64{a, a + pageSize})
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()

	written := pages(anon, 0, 1, 2, 3, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29)
	// pagemap entries cannot tell the zero page (10-11) from a page of
	// data: the caller drops zero pages of anonymous memory as it copies.
	withZero := pages(anon, 0, 1, 2, 3, 10, 11, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29)
	copied := pages(file, 8, 9)
	tests := []struct {
		name   string
		noScan bool
		b      []byte
		want   [][2]uint64
	}{
		{"scan/anonymous", false, anon, written},
		{"scan/file", false, file, copied},
		{"entries/anonymous", true, anon, withZero},
		{"entries/file", true, file, copied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewPageScanner(pm)
			s.noScan = tt.noScan
			got := runs(s, tt.b)
			if !tt.noScan && s.noScan {
				t.Skip("this kernel has no PAGEMAP_SCAN (Linux 6.7)")
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("runs %x, want %x", got, tt.want)
			}
		})
	}
}

// readSink keeps the compiler from leaving out reads whose value is unused.
var readSink byte

// TestDataPagesLong checks a scan that fills the output buffer and goes on
// from where the kernel stopped: every other page written, more runs than
// the buffer holds.
func TestDataPagesLong(t *testing.T) {
	const n = 2048
	b, err := unix.Mmap(-1, 0, n*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(b)
	for p := 0; p < n; p += 2 {
		b[p*pageSize] = 1
	}
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	start := uint64(uintptr(unsafe.Pointer(&b[0])))
	var got []uint64
	s := NewPageScanner(pm)
	err = s.DataPages(start, start+n*pageSize, func(a, e uint64) error {
		if e != a+pageSize {
			t.Errorf("run %#x-%#x: want one page", a, e)
		}
		got = append(got, (a-start)/pageSize)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n/2 {
		t.Fatalf("%d runs, want %d", len(got), n/2)
	}
	for i, p := range got {
		if p != uint64(2*i) {
			t.Fatalf("run %d at page %d, want %d", i, p, 2*i)
		}
	}
}
