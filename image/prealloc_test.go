package image

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestPreallocate writes a file while its space is allocated ahead, with
// an estimate above and one below what is written: the content is what was
// written, the size too, and no allocated space is left past the end.
func TestPreallocate(t *testing.T) {
	dirs := []string{t.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "ckpt-prealloc-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dirs = append(dirs, d) // tmpfs, the case preallocation is for
	}
	const written = 24 << 20
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	for _, dir := range dirs {
		for _, estimate := range []uint64{64 << 20, 20 << 20} {
			path := filepath.Join(dir, "img")
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			f.Write([]byte("head"))
			p := Preallocate(f, estimate)
			if p == nil {
				t.Fatalf("%s: no preallocation of %d bytes", dir, estimate)
			}
			// Let it get ahead, past the end of what will be written in
			// the first case, so that there is a surplus to give back.
			for deadline := time.Now().Add(5 * time.Second); ; {
				var st syscall.Stat_t
				syscall.Fstat(int(f.Fd()), &st)
				if uint64(st.Blocks*512) >= estimate-4<<20 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: %d bytes allocated after 5 s, want %d", dir, st.Blocks*512, estimate)
				}
				time.Sleep(time.Millisecond)
			}
			for n := 0; n < written; n += len(chunk) {
				if _, err := f.Write(chunk); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.Finish(); err != nil {
				t.Errorf("%s: Finish: %v", dir, err)
			}
			var st syscall.Stat_t
			if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
				t.Fatal(err)
			}
			f.Close()
			want := int64(written + 4)
			if st.Size != want {
				t.Errorf("%s, estimate %d: size %d, want %d", dir, estimate, st.Size, want)
			}
			// Allow a few blocks of file system overhead, not the estimate.
			if used := st.Blocks * 512; used > want+1<<20 {
				t.Errorf("%s, estimate %d: %d bytes allocated for %d written: the surplus was not given back", dir, estimate, used, want)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(b[:4]) != "head" || !bytes.Equal(b[4:4+len(chunk)], chunk) || !bytes.Equal(b[len(b)-len(chunk):], chunk) {
				t.Errorf("%s, estimate %d: content differs from what was written", dir, estimate)
			}
			os.Remove(path)
		}
	}
}

// TestPreallocateRefuses: nothing to do for small estimates, pipes and
// files opened to append; Finish of nil is a no-op.
func TestPreallocateRefuses(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	path := filepath.Join(t.TempDir(), "img")
	small, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer small.Close()
	app, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	for _, c := range []struct {
		name string
		f    *os.File
		n    uint64
	}{
		{"pipe", w, 64 << 20},
		{"small", small, 1 << 20},
		{"append", app, 64 << 20},
	} {
		if p := Preallocate(c.f, c.n); p != nil {
			p.Finish()
			t.Errorf("%s: preallocates", c.name)
		}
	}
	var p *Preallocator
	if err := p.Finish(); err != nil {
		t.Errorf("nil Finish: %v", err)
	}
}
