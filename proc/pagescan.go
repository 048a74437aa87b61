package proc

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PAGEMAP_SCAN (linux/fs.h, Linux 6.7) walks a range of page tables in the
// kernel and returns runs of pages by category. /proc/PID/pagemap costs 8
// bytes of output per page, present or not: a Go program reserves a
// gigabyte of PROT_NONE address space, and its pagemap alone took most of
// a 9 ms memory phase for 1 MB of pages.
const (
	pageIsFile    = 1 << 2
	pageIsPresent = 1 << 3
	pageIsSwapped = 1 << 4
	pageIsPFNZero = 1 << 5

	// pagemapScan is _IOWR('f', 16, struct pm_scan_arg).
	pagemapScan = 3<<30 | uint64(unsafe.Sizeof(pmScanArg{}))<<16 | 'f'<<8 | 16
)

// pmScanArg is struct pm_scan_arg.
type pmScanArg struct {
	Size, Flags, Start, End, WalkEnd, Vec, VecLen, MaxPages       uint64
	CategoryInverted, CategoryMask, CategoryAnyofMask, ReturnMask uint64
}

// pageRegion is struct page_region.
type pageRegion struct{ Start, End, Categories uint64 }

// PageScanner finds the pages of a process that hold data of their own.
type PageScanner struct {
	f       *os.File // the process's /proc/PID/pagemap
	regions []pageRegion
	noScan  bool // the kernel has no PAGEMAP_SCAN: read entries
}

// NewPageScanner reads pagemap, an open /proc/PID/pagemap.
func NewPageScanner(pagemap *os.File) *PageScanner {
	return &PageScanner{f: pagemap}
}

// pageWindow bounds one read of pagemap entries (128 KiB of them), so that
// ckpt's memory use does not grow with the target's.
const pageWindow = 64 << 20

// DataPages calls fn, in address order, with each run [start, end) of
// pages in [from, to) that hold data of their own: present and neither a
// page of a file or shared memory (which comes back from there) nor the
// zero page, or swapped out. Where the kernel has no PAGEMAP_SCAN it
// reads pagemap entries, which cannot tell the zero page: runs may then
// include it.
func (s *PageScanner) DataPages(from, to uint64, fn func(start, end uint64) error) error {
	if !s.noScan {
		reported, err := s.scan(from, to, fn)
		if reported || !errors.Is(err, unix.ENOTTY) && !errors.Is(err, unix.EINVAL) {
			return err
		}
		// Before Linux 6.7 (ENOTTY), or a kernel that knows another
		// struct (EINVAL): read the entries instead.
		s.noScan = true
	}
	for start := from; start < to; start += pageWindow {
		end := min(start+pageWindow, to)
		ents, err := ReadPagemap(s.f, start, end)
		if err != nil {
			return err
		}
		data := func(e uint64) bool {
			return e&PMSwapped != 0 || e&PMPresent != 0 && e&PMFileShared == 0
		}
		for i := 0; i < len(ents); {
			if !data(ents[i]) {
				i++
				continue
			}
			j := i + 1
			for j < len(ents) && data(ents[j]) {
				j++
			}
			if err := fn(start+uint64(i)*pageSize, start+uint64(j)*pageSize); err != nil {
				return err
			}
			i = j
		}
	}
	return nil
}

// pageSize is the size of the pages pagemap describes.
const pageSize = 4096

// scan runs PAGEMAP_SCAN over [from, to), as many times as its output
// buffer needs; reported says that fn was called (or the scan went past
// its first call).
func (s *PageScanner) scan(from, to uint64, fn func(start, end uint64) error) (reported bool, err error) {
	if s.regions == nil {
		s.regions = make([]pageRegion, 512)
	}
	arg := pmScanArg{
		Size: uint64(unsafe.Sizeof(pmScanArg{})),
		Vec:  uint64(uintptr(unsafe.Pointer(&s.regions[0]))), VecLen: uint64(len(s.regions)),
		// Present or swapped, and neither a file page nor the zero page.
		CategoryAnyofMask: pageIsPresent | pageIsSwapped,
		CategoryInverted:  pageIsFile | pageIsPFNZero,
		CategoryMask:      pageIsFile | pageIsPFNZero,
	}
	for start := from; start < to; {
		arg.Start, arg.End = start, to
		r, _, e := unix.Syscall(unix.SYS_IOCTL, s.f.Fd(), uintptr(pagemapScan), uintptr(unsafe.Pointer(&arg)))
		if e != 0 {
			return start != from, fmt.Errorf("scan pagemap %#x-%#x: %w", start, to, e)
		}
		if r > uintptr(len(s.regions)) {
			return true, fmt.Errorf("scan pagemap %#x-%#x: the kernel returned %d regions for %d", start, to, r, len(s.regions))
		}
		for _, reg := range s.regions[:r] {
			if reg.Start < start || reg.End > to || reg.End <= reg.Start {
				return true, fmt.Errorf("scan pagemap %#x-%#x: the kernel returned %#x-%#x", start, to, reg.Start, reg.End)
			}
			if err := fn(reg.Start, reg.End); err != nil {
				return true, err
			}
		}
		if arg.WalkEnd <= start || arg.WalkEnd > to {
			return true, fmt.Errorf("scan pagemap %#x-%#x: the kernel stopped at %#x", start, to, arg.WalkEnd)
		}
		start = arg.WalkEnd
	}
	return true, nil
}

// ProbePageScan tells whether this kernel has PAGEMAP_SCAN (for ckpt
// check): a scan of one page of ckpt's own stack.
func ProbePageScan() error {
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return err
	}
	defer f.Close()
	var probe [2 * pageSize]byte
	start := uint64(uintptr(unsafe.Pointer(&probe[0]))+pageSize-1) &^ (pageSize - 1)
	s := NewPageScanner(f)
	if _, err := s.scan(start, start+pageSize, func(uint64, uint64) error { return nil }); err != nil {
		return err
	}
	return nil
}
