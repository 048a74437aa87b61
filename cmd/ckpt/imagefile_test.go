package main

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestImageFile: a complete image is at its path, an incomplete one is
// removed, an earlier file stays as it was when nothing was written and
// keeps its mode when replaced, and a symbolic link is written through,
// and kept.
func TestImageFile(t *testing.T) {
	for _, tc := range []struct {
		name   string
		old    string // content of an earlier file at the path; "" none
		link   bool   // the path is a symbolic link to the file
		write  bool
		failed bool
		want   string // content after close; "" no file
	}{
		{name: "new", write: true, want: "new"},
		{name: "new failed", write: true, failed: true},
		{name: "new nothing written", failed: true},
		{name: "replace", old: "old", write: true, want: "new"},
		{name: "replace failed", old: "old", write: true, failed: true},
		{name: "refused before writing", old: "old", failed: true, want: "old"},
		{name: "through a link", old: "old", link: true, write: true, want: "new"},
		{name: "through a link, failed", old: "old", link: true, write: true, failed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "img")
			path := file
			if tc.old != "" {
				if err := os.WriteFile(file, []byte(tc.old), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			if tc.link {
				path = filepath.Join(dir, "link")
				if err := os.Symlink("img", path); err != nil {
					t.Fatal(err)
				}
			}
			f := &imageFile{path: path}
			if tc.write {
				if _, err := f.Write([]byte("new")); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.close(tc.failed); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(file)
			switch {
			case tc.want == "" && err == nil:
				t.Errorf("%s exists (%q), want none", file, b)
			case tc.want != "" && string(b) != tc.want:
				t.Errorf("%s holds %q (%v), want %q", file, b, err, tc.want)
			}
			if tc.want != "" && tc.old != "" {
				if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o640 {
					t.Errorf("mode %v (%v), want the earlier file's 0640", fi.Mode(), err)
				}
			}
			if tc.link {
				if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSymlink == 0 {
					t.Errorf("%s is no longer a symbolic link", path)
				}
			}
		})
	}
}

// TestImageFileFIFO: a FIFO at the path is written as it is, and a failed
// image does not remove it.
func TestImageFileFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	got := make(chan string)
	go func() {
		r, err := os.Open(path)
		if err != nil {
			got <- err.Error()
			return
		}
		defer r.Close()
		b := make([]byte, 16)
		n, _ := r.Read(b)
		got <- string(b[:n])
	}()
	f := &imageFile{path: path}
	if _, err := f.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "abc" {
		t.Errorf("read %q from the FIFO, want abc", s)
	}
	f.close(true)
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("the FIFO is gone after a failed image: %v", err)
	}
}
