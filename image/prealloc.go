package image

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Preallocator allocates an image file's space ahead of the writes that
// fill it, on a goroutine of its own. A large checkpoint's memory phase is
// bound by the writes into new pages of the image file: on tmpfs the
// kernel allocates each page as the write reaches it. fallocate inserts
// the pages without touching them, on the other core, beside the page
// reader; the writer then only copies. 1 GiB into a new tmpfs file was
// ~40% faster so than by write alone (performance.md, eighth session).
// On disk file systems it keeps the image in few extents.
type Preallocator struct {
	f    *os.File
	stop chan struct{}
	done chan struct{}
	end  int64 // how far space was allocated; set before done closes
}

const (
	// preallocMin is the least worth preallocating: below it the pages
	// are written before the goroutine would get ahead.
	preallocMin = 16 << 20
	// preallocStep is one fallocate: it holds the file's lock against
	// the writer while it runs, so not much more than a page buffer.
	preallocStep = 4 << 20
)

// Preallocate starts allocating about n bytes of f from its current
// offset, where the image's writes are going next. It returns nil where
// there is nothing to gain: n below 16 MiB, or f not a regular file
// written at its offset (a pipe, a terminal, a file opened to append).
// Finish must follow.
func Preallocate(f *os.File, n uint64) *Preallocator {
	if n < preallocMin || n > 1<<62 {
		return nil
	}
	fd := int(f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil
	}
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err != nil || fl&unix.O_APPEND != 0 {
		return nil
	}
	from, err := unix.Seek(fd, 0, io.SeekCurrent)
	if err != nil {
		return nil
	}
	p := &Preallocator{f: f, stop: make(chan struct{}), done: make(chan struct{})}
	go p.run(fd, from, from+int64(n))
	return p
}

func (p *Preallocator) run(fd int, at, to int64) {
	defer close(p.done)
	for at < to {
		select {
		case <-p.stop:
			p.end = at
			return
		default:
		}
		// Where the writer has got past, writing allocated the pages. The
		// image is written in order from the start, so its size is where
		// the writer is (over a longer old file, allocation only stops
		// early). (Not lseek: it waits for the file position's
		// lock, which write(2) holds while it copies, a spin that took
		// 7% of a 1 GiB checkpoint's samples from the page reader's core.)
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && st.Size > at {
			at = st.Size
		}
		n := min(preallocStep, to-at)
		if n <= 0 {
			break
		}
		// KEEP_SIZE: the file's size stays what was written, so a reader
		// of an unfinished image never sees zeros as records.
		if unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, at, n) != nil {
			// EOPNOTSUPP (a file system without it), ENOSPC: the writes
			// allocate, or fail, by themselves.
			break
		}
		at += n
	}
	p.end = at
}

// Finish stops the allocation and gives back the space allocated past the
// end of what was written (the estimate may exceed the image). Call it
// once the image's writes are done. A nil Preallocator does nothing.
func (p *Preallocator) Finish() error {
	if p == nil {
		return nil
	}
	close(p.stop)
	<-p.done
	fd := int(p.f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("image file: %w", err)
	}
	if p.end <= st.Size {
		return nil
	}
	// Truncating to the size written frees what lies past it (tmpfs and
	// ext4 do so even when the size does not change; ext4 would not punch
	// a hole there).
	if err := unix.Ftruncate(fd, st.Size); err != nil {
		return fmt.Errorf("free the image file's unused space (%d bytes past its end): %w", p.end-st.Size, err)
	}
	return nil
}
