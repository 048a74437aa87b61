package image

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/ckpt/ckpt/image/pb"
)

func sample(t testing.TB) []byte {
	var buf bytes.Buffer
	w, err := NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Message(TypeHeader, &pb.Header{FormatVersion: FormatVersion, PageSize: PageSize, Arch: "x86_64"}))
	must(w.Message(TypeFile, &pb.File{Id: 1, Path: "/etc/hostname"}))
	must(w.Message(TypeProcess, &pb.Process{Pid: 42}))
	page := bytes.Repeat([]byte{0xab}, 2*PageSize)
	must(w.Pages(&pb.PageMap{MmId: 1, Runs: []*pb.PageRun{{Addr: 0x1000, Npages: 2}}}, func(pw io.Writer) error {
		_, err := pw.Write(page)
		return err
	}))
	must(w.Close())
	return buf.Bytes()
}

func readAll(b []byte) error {
	r, err := NewReader(bytes.NewReader(b))
	if err != nil {
		return err
	}
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if rec.Type == TypePages {
			if _, err := io.Copy(io.Discard, r); err != nil {
				return err
			}
		}
	}
}

func TestRoundTrip(t *testing.T) {
	b := sample(t)
	r, err := NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	var types []Type
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, rec.Type)
		if rec.Type == TypePages {
			if (rec.Offset+recordHeaderLen)%PageSize != 0 {
				t.Errorf("pages payload at %d, not page aligned", rec.Offset+recordHeaderLen)
			}
			got, _ := io.ReadAll(r)
			if len(got) != 2*PageSize || got[0] != 0xab {
				t.Errorf("pages payload: %d bytes", len(got))
			}
		}
	}
	want := []Type{TypeFile, TypeProcess, TypePageMap, TypePages}
	if len(types) != len(want) {
		t.Fatalf("records %v, want %v", types, want)
	}
	for i := range want {
		if types[i] != want[i] {
			t.Fatalf("records %v, want %v", types, want)
		}
	}
}

func TestDamaged(t *testing.T) {
	b := sample(t)
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "not a ckpt image"},
		{"foreign", []byte("#!/bin/sh\necho hello\n"), "not a ckpt image"},
		{"truncated", b[:len(b)-20], "truncated"},
		{"truncated in pages", b[:len(b)/2], "truncated"},
		{"flipped page byte", flip(b, len(b)-100), "checksum"},
		{"trailing", append(append([]byte{}, b...), 1), "after the tail"},
		{"version", func() []byte { c := append([]byte{}, b...); c[8] = 9; return c }(), "version 9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := readAll(tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want error containing %q", err, tt.want)
			}
		})
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte{}, b...)
	c[i] ^= 0xff
	return c
}

func TestFailRecord(t *testing.T) {
	var buf bytes.Buffer
	w, _ := NewWriter(&buf)
	w.Message(TypeHeader, &pb.Header{FormatVersion: FormatVersion, PageSize: PageSize})
	w.Fail(errors.New("pid 7 vanished"))
	err := readAll(buf.Bytes())
	if err == nil || !strings.Contains(err.Error(), "pid 7 vanished") {
		t.Fatalf("got %v", err)
	}
}

func compressed(t testing.TB) []byte {
	var buf bytes.Buffer
	enc, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	enc.Write(sample(t))
	enc.Close()
	return buf.Bytes()
}

func TestCompressedRoundTrip(t *testing.T) {
	if err := readAll(compressed(t)); err != nil {
		t.Fatal(err)
	}
	c := compressed(t)
	if err := readAll(c[:len(c)-10]); err == nil {
		t.Fatal("a truncated compressed image was accepted")
	}
}

func FuzzReader(f *testing.F) {
	f.Add(sample(f))
	f.Add(compressed(f))
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = readAll(b) // must not panic or hang
	})
}
