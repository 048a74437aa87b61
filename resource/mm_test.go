package resource

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// failAfter accepts n bytes, then fails every write.
type failAfter struct {
	n   int
	err error
}

func (f *failAfter) Write(b []byte) (int, error) {
	if len(b) > f.n {
		k := f.n
		f.n = 0
		return k, f.err
	}
	f.n -= len(b)
	return len(b), nil
}

// ownArea maps size bytes of anonymous memory in this process and fills
// every page but those zero says with a pattern of its address.
func ownArea(t *testing.T, size int, zero func(page int) bool) ([]byte, *pb.Mm) {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	for p := 0; p < size/pageSize; p++ {
		if !zero(p) {
			for i := 0; i < pageSize; i += 8 {
				mem[p*pageSize+i] = byte(p)
				mem[p*pageSize+i+1] = byte(i)
			}
		}
	}
	start := uint64(uintptr(unsafe.Pointer(&mem[0])))
	return mem, &pb.Mm{Id: 1, Vmas: []*pb.Vma{{Start: start, End: start + uint64(size), Prot: unix.PROT_READ | unix.PROT_WRITE}}}
}

// dumpOwn writes an image of mm's pages, which are this process's own,
// through a PageWriter, and returns a reader of it past the header.
func dumpOwn(t *testing.T, mm *pb.Mm) *image.Reader {
	t.Helper()
	var out bytes.Buffer
	w, err := image.NewWriter(&out)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Message(image.TypeHeader, &pb.Header{FormatVersion: image.FormatVersion, PageSize: image.PageSize}); err != nil {
		t.Fatal(err)
	}
	pw := NewPageWriter(w)
	if err := DumpPages(&Target{Pid: os.Getpid()}, mm, pw); err != nil {
		t.Fatal(err)
	}
	if err := pw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := image.NewReader(&out)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// eachPages calls fn for each PAGES record of r, with the page map of the
// PAGEMAP record before it, and with r positioned at its pages.
func eachPages(t *testing.T, r *image.Reader, fn func(pm *pb.PageMap)) {
	t.Helper()
	var pm pb.PageMap
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		switch rec.Type {
		case image.TypePageMap:
			if err := image.Unmarshal(rec, &pm); err != nil {
				t.Fatal(err)
			}
		case image.TypePages:
			fn(&pm)
		}
	}
}

// TestDumpPages dumps an area of this very process, through the two-buffer
// writer, and reads the image back: every non-zero page, in order, under
// the right address.
func TestDumpPages(t *testing.T) {
	const size = 11<<20 + 3*pageSize // a few buffer-fulls and a partial one
	zero := func(p int) bool { return p%7 == 3 || p > 900 && p < 1300 }
	mem, mm := ownArea(t, size, zero)
	r := dumpOwn(t, mm)
	start := mm.Vmas[0].Start
	next := 0 // the next non-zero page expected
	advance := func() {
		for next < size/pageSize && zero(next) {
			next++
		}
	}
	advance()
	page := make([]byte, pageSize)
	eachPages(t, r, func(pm *pb.PageMap) {
		for _, run := range pm.Runs {
			for i := uint64(0); i < run.Npages; i++ {
				p := int((run.Addr-start)/pageSize + i)
				if p != next {
					t.Fatalf("page %d in the image, want page %d", p, next)
				}
				if _, err := io.ReadFull(r, page); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(page, mem[p*pageSize:(p+1)*pageSize]) {
					t.Fatalf("page %d differs", p)
				}
				next++
				advance()
			}
		}
	})
	if next != size/pageSize {
		t.Fatalf("image ends before page %d of %d", next, size/pageSize)
	}
}

// TestDumpPagesWriteError: a write failure in the middle of the pages ends
// the dump with that error, whichever buffer the reader side is at, and
// when the caller writes a small process's pages itself.
func TestDumpPagesWriteError(t *testing.T) {
	_, big := ownArea(t, 24<<20, func(int) bool { return false })
	_, small := ownArea(t, 16*pageSize, func(int) bool { return false })
	for _, tc := range []struct {
		mm    *pb.Mm
		after int
	}{{big, 100}, {big, 5 << 20}, {big, 13 << 20}, {small, 100}, {small, 5 * pageSize}} {
		mm, after := tc.mm, tc.after
		fail := errors.New("disk full")
		w, err := image.NewWriter(&failAfter{n: after, err: fail})
		if err != nil {
			t.Fatal(err)
		}
		pw := NewPageWriter(w)
		err = DumpPages(&Target{Pid: os.Getpid()}, mm, pw)
		if cerr := pw.Close(); err == nil {
			err = cerr
		}
		if !errors.Is(err, fail) || !strings.Contains(err.Error(), "disk full") {
			t.Fatalf("failing after %d bytes: got %v, want the write error", after, err)
		}
	}
}

// TestDumpPagesAreas dumps two adjacent areas: their pages share one
// record, but no run crosses from one area into the other (a restorer
// refuses such a run).
func TestDumpPagesAreas(t *testing.T) {
	const size = 16 * pageSize
	mem, mm := ownArea(t, size, func(p int) bool { return p == 3 })
	if err := unix.Mprotect(mem[size/2:], unix.PROT_READ); err != nil {
		t.Fatal(err)
	}
	v := mm.Vmas[0]
	mid := v.Start + size/2
	mm.Vmas = []*pb.Vma{{Start: v.Start, End: mid, Prot: v.Prot}, {Start: mid, End: v.End, Prot: unix.PROT_READ}}
	r := dumpOwn(t, mm)
	records, pages := 0, uint64(0)
	eachPages(t, r, func(pm *pb.PageMap) {
		records++
		for _, run := range pm.Runs {
			if FindVma(mm, run.Addr, run.Npages*pageSize) == nil {
				t.Errorf("run %#x+%d pages crosses an area boundary (%#x)", run.Addr, run.Npages, mid)
			}
			pages += run.Npages
		}
	})
	if records != 1 || pages != size/pageSize-1 {
		t.Errorf("%d records with %d pages, want 1 with %d", records, pages, size/pageSize-1)
	}
}

// TestPageRestorer dumps an area of this process, clears it, and writes
// the image's pages back through the restorer's writers, or, for a
// small area, by the caller: every page as it was, the zero pages (left
// out of the image) zero.
func TestPageRestorer(t *testing.T) {
	for _, tc := range []struct {
		size, minRecords int
	}{
		{9<<20 + 5*pageSize, 3}, // a few buffer-fulls and a partial one
		{40 * pageSize, 1},
	} {
		t.Run(fmt.Sprint(tc.size), func(t *testing.T) { testPageRestorer(t, tc.size, tc.minRecords) })
	}
}

func testPageRestorer(t *testing.T, size, minRecords int) {
	zero := func(p int) bool { return p%5 == 1 }
	mem, mm := ownArea(t, size, zero)
	want := append([]byte(nil), mem...)
	r := dumpOwn(t, mm)
	clear(mem)
	self := &Target{Pid: os.Getpid()}
	pr := NewPageRestorer()
	records := 0
	eachPages(t, r, func(pm *pb.PageMap) {
		records++
		if err := pr.Restore(self, mm, pm, r); err != nil {
			t.Fatal(err)
		}
	})
	if err := pr.Close(); err != nil {
		t.Fatal(err)
	}
	if records < minRecords {
		t.Errorf("%d PAGES records, want at least %d", records, minRecords)
	}
	for p := 0; p < size/pageSize; p++ {
		if !bytes.Equal(mem[p*pageSize:(p+1)*pageSize], want[p*pageSize:(p+1)*pageSize]) {
			t.Fatalf("page %d differs after the restore", p)
		}
	}
}

// TestPageRestorerWriteError: pages that cannot be written (a read-only
// area) fail the restore, with the addresses, and Close reports it too.
func TestPageRestorerWriteError(t *testing.T) {
	for _, pages := range []int{4, 600, 3000} { // written by the caller, by a writer, by both
		mem, mm := ownArea(t, pages*pageSize, func(int) bool { return false })
		if err := unix.Mprotect(mem, unix.PROT_READ); err != nil {
			t.Fatal(err)
		}
		v := mm.Vmas[0]
		pm := &pb.PageMap{Runs: []*pb.PageRun{{Addr: v.Start, Npages: uint64(pages)}}}
		pr := NewPageRestorer()
		err := pr.Restore(&Target{Pid: os.Getpid()}, mm, pm, bytes.NewReader(make([]byte, pages*pageSize)))
		if cerr := pr.Close(); err == nil {
			err = cerr
		}
		if err == nil || !strings.Contains(err.Error(), "restore pages") {
			t.Fatalf("restore of %d pages into a read-only area: %v, want a write error", pages, err)
		}
	}
	_, mm := ownArea(t, 4*pageSize, func(int) bool { return false })
	v := mm.Vmas[0]
	// A run outside the address space is refused before anything is read.
	pr := NewPageRestorer()
	defer pr.Close()
	bad := &pb.PageMap{Runs: []*pb.PageRun{{Addr: v.End, Npages: 1}}}
	if err := pr.Restore(&Target{Pid: os.Getpid()}, mm, bad, bytes.NewReader(nil)); err == nil || !strings.Contains(err.Error(), "outside any private area") {
		t.Fatalf("run outside the areas: %v", err)
	}
}

// TestFlagsFrom: the dump takes the flags of the areas preflight read
// (smaps) for the areas it reads frozen (maps), only if they are the same
// areas; a stack may have grown down meanwhile.
func TestFlagsFrom(t *testing.T) {
	area := func(start, end uint64, perms, name string, flags ...string) proc.Vma {
		return proc.Vma{Start: start, End: end, Perms: perms, Name: name, VmFlags: flags}
	}
	pre := []proc.Vma{
		area(0x1000, 0x3000, "r-xp", "/bin/x", "rd", "ex"),
		area(0x10000, 0x20000, "rw-p", "", "rd", "wr"),
		area(0x7f000, 0x80000, "rw-p", "[stack]", "rd", "wr", "gd"),
	}
	for _, tc := range []struct {
		name string
		now  []proc.Vma
		ok   bool
	}{
		{"same", []proc.Vma{area(0x1000, 0x3000, "r-xp", "/bin/x"), area(0x10000, 0x20000, "rw-p", ""), area(0x7f000, 0x80000, "rw-p", "[stack]")}, true},
		{"stack grew", []proc.Vma{area(0x1000, 0x3000, "r-xp", "/bin/x"), area(0x7d000, 0x80000, "rw-p", "[stack]")}, true},
		{"area grew down without the flag", []proc.Vma{area(0xf000, 0x20000, "rw-p", "")}, false},
		{"area shrank", []proc.Vma{area(0x11000, 0x20000, "rw-p", "")}, false},
		{"protection changed", []proc.Vma{area(0x10000, 0x20000, "r--p", "")}, false},
		{"new area", []proc.Vma{area(0x30000, 0x31000, "rw-p", "")}, false},
		{"other file", []proc.Vma{area(0x1000, 0x3000, "r-xp", "/bin/y")}, false},
	} {
		ok := flagsFrom(tc.now, pre)
		if ok != tc.ok {
			t.Errorf("%s: flagsFrom = %v, want %v", tc.name, ok, tc.ok)
			continue
		}
		if !ok {
			continue
		}
		for _, v := range tc.now {
			if v.Name == "[stack]" && !v.HasFlag("gd") || v.Name == "/bin/x" && !v.HasFlag("ex") {
				t.Errorf("%s: %s got flags %v", tc.name, v.Name, v.VmFlags)
			}
		}
	}
}

func TestValidateMm(t *testing.T) {
	vma := func(start, end uint64, prot uint32, advice ...uint32) *pb.Vma {
		return &pb.Vma{Start: start, End: end, Prot: prot, Advice: advice}
	}
	tests := []struct {
		name string
		vmas []*pb.Vma
		ok   bool
	}{
		{"plain", []*pb.Vma{vma(0x1000, 0x3000, unix.PROT_READ), vma(0x3000, 0x4000, 0)}, true},
		{"advice", []*pb.Vma{vma(0x1000, 0x3000, unix.PROT_READ, unix.MADV_HUGEPAGE, unix.MADV_DONTFORK, unix.MADV_WIPEONFORK)}, true},
		{"unknown advice", []*pb.Vma{vma(0x1000, 0x3000, unix.PROT_READ, unix.MADV_DONTNEED)}, false},
		{"misaligned", []*pb.Vma{vma(0x1001, 0x3000, unix.PROT_READ)}, false},
		{"empty", []*pb.Vma{vma(0x3000, 0x3000, unix.PROT_READ)}, false},
		{"overlapping", []*pb.Vma{vma(0x1000, 0x3000, 0), vma(0x2000, 0x4000, 0)}, false},
		{"beyond user space", []*pb.Vma{vma(0x1000, 1<<48, 0)}, false},
		{"protection", []*pb.Vma{vma(0x1000, 0x2000, 0x10)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateMm(&pb.Mm{Vmas: tt.vmas})
			if (err == nil) != tt.ok {
				t.Errorf("ValidateMm: %v, want ok %v", err, tt.ok)
			}
		})
	}
}
