package main

import (
	"os"
	"path/filepath"
)

// imageFile is the image file of a checkpoint, written in place and
// created (or truncated) on the first write, or when the checkpoint
// reserves the pages' space just before it writes them: a checkpoint
// refused before that leaves an existing file as it was and creates none.
// An incomplete image is removed; a device or FIFO is written as it is
// and never removed.
//
// Not written under a temporary name and renamed, as convert does: an
// earlier image would hold its space until the new one is complete, twice
// the memory on tmpfs, and the new image could not reuse its pages. On
// this VM, where a page the host took back costs several times a recycled
// one, a 1 GiB checkpoint over an earlier image took 5.0 s that way
// against 1.4 s truncating in place.
type imageFile struct {
	path    string
	f       *os.File
	dst     string // path with its symbolic links resolved
	special bool   // dst is a device or FIFO
}

func (l *imageFile) Write(b []byte) (int, error) {
	f, err := l.open()
	if err != nil {
		return 0, err
	}
	return f.Write(b)
}

// open creates the file if no write has yet.
func (l *imageFile) open() (*os.File, error) {
	if l.f != nil {
		return l.f, nil
	}
	l.dst = l.path
	if p, err := filepath.EvalSymlinks(l.path); err == nil {
		l.dst = p // what a failure removes: the file, not a link to it
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if fi, err := os.Stat(l.dst); err == nil && !fi.Mode().IsRegular() {
		flags, l.special = os.O_WRONLY, true
	}
	f, err := os.OpenFile(l.dst, flags, 0o600)
	if err != nil {
		return nil, err
	}
	l.f = f
	return f, nil
}

// close closes the file, removing it when the image is incomplete.
func (l *imageFile) close(failed bool) error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	if (failed || err != nil) && !l.special {
		os.Remove(l.dst)
	}
	return err
}
