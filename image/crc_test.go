package image

import (
	"bytes"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/ckpt/ckpt/image/pb"
)

func TestCrc32cCombine(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 5<<20)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	for _, tc := range []struct{ a, b int }{
		{0, 0}, {0, 1}, {1, 0}, {1, 1}, {3, 5}, {8, 4096}, {4095, 4097},
		{100, 1 << 20}, {4 << 20, 1 << 20 / 3}, {1, 5<<20 - 1},
	} {
		a, b := data[:tc.a], data[tc.a:tc.a+tc.b]
		want := crc32.Checksum(data[:tc.a+tc.b], castagnoli)
		if got := crc32cCombine(Checksum(a), Checksum(b), uint64(len(b))); got != want {
			t.Errorf("combine(%d bytes, %d bytes) = %08x, want %08x", tc.a, tc.b, got, want)
		}
	}
}

// TestWriterPageData checks that page data checksummed by the caller and
// written past the buffer yields the same stream, checksum and all, as
// page data written through it.
func TestWriterPageData(t *testing.T) {
	pages := make([]byte, 20*PageSize) // over directWrite
	for i := range pages {
		pages[i] = byte(i*7 + i>>12)
	}
	for _, n := range []int{1, 20} { // through the buffer, past it
		data := pages[:n*PageSize]
		pm := func() *pb.PageMap {
			return &pb.PageMap{MmId: 1, Runs: []*pb.PageRun{{Addr: 0x10000, Npages: uint64(n)}}}
		}
		var viaFill, summed bytes.Buffer
		for _, out := range []*bytes.Buffer{&viaFill, &summed} {
			w, err := NewWriter(out)
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Message(TypeHeader, &pb.Header{FormatVersion: FormatVersion, PageSize: PageSize, Arch: "x86_64"}); err != nil {
				t.Fatal(err)
			}
			if out == &viaFill {
				err = w.Pages(pm(), func(o io.Writer) error { _, err := o.Write(data); return err })
			} else {
				err = w.PageData(pm(), data, Checksum(data))
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(viaFill.Bytes(), summed.Bytes()) {
			t.Fatalf("%d pages: PageData wrote a different stream than Pages", n)
		}
		r, err := NewReader(bytes.NewReader(summed.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		for {
			_, err := r.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%d pages: read back: %v", n, err)
			}
		}
		if r.Tail == nil {
			t.Fatalf("%d pages: no tail read", n)
		}
	}
}
