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

// sampleV1 is an image written as format version 1, with one page record
// of each size in pages (over 256 pages make a copy take two buffers).
func sampleV1(t testing.TB, pages ...uint64) []byte {
	var buf bytes.Buffer
	w, err := newWriterVersion(&buf, 1)
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Message(TypeHeader, &pb.Header{FormatVersion: 1, PageSize: PageSize, Arch: "amd64", RootPid: 42}))
	must(w.Message(TypeFile, &pb.File{Id: 1, Path: "/bin/true"}))
	must(w.Message(TypeMm, &pb.Mm{Id: 1}))
	must(w.Message(TypeProcess, &pb.Process{Pid: 42, MmId: 1}))
	for i, n := range pages {
		must(w.Pages(&pb.PageMap{MmId: 1, Runs: []*pb.PageRun{{Addr: uint64(i+1) << 30, Npages: n}}}, func(pw io.Writer) error {
			_, err := pw.Write(pattern(i, n))
			return err
		}))
	}
	must(w.Close())
	return buf.Bytes()
}

func pattern(i int, n uint64) []byte {
	b := make([]byte, n*PageSize)
	for j := range b {
		b[j] = byte(j*7 + i)
	}
	return b
}

func zstdOf(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	enc, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	enc.Write(b)
	enc.Close()
	return buf.Bytes()
}

// records reads an image into its records, page bytes in Payload.
func records(t *testing.T, b []byte) (*Reader, []Record) {
	t.Helper()
	r, err := NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	var recs []Record
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return r, recs
		}
		if err != nil {
			t.Fatal(err)
		}
		if rec.Type == TypePages {
			if (rec.Offset+recordHeaderLen)%PageSize != 0 {
				t.Errorf("pages payload at %d is not page aligned", rec.Offset+recordHeaderLen)
			}
			if rec.Payload, err = io.ReadAll(r); err != nil {
				t.Fatal(err)
			}
		}
		recs = append(recs, rec)
	}
}

func convert(t *testing.T, b []byte, c Compression) ([]byte, ConvertResult) {
	t.Helper()
	var out bytes.Buffer
	res, err := Convert(bytes.NewReader(b), &out, c)
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), res
}

func TestConvertV1(t *testing.T) {
	in := sampleV1(t, 3, 300)
	if _, err := NewReader(bytes.NewReader(in)); err != nil {
		t.Fatalf("version 1 is not readable: %v", err)
	}
	out, res := convert(t, in, SameCompression)
	if res.From != 1 || res.To != FormatVersion || res.Compressed {
		t.Fatalf("result %+v", res)
	}
	r1, want := records(t, in)
	r2, got := records(t, out)
	if r1.Version != 1 || r2.Version != FormatVersion || r2.Header.FormatVersion != FormatVersion || r2.Header.RootPid != 42 {
		t.Fatalf("versions %d→%d, header %v", r1.Version, r2.Version, r2.Header)
	}
	if r2.CheckCurrent() != nil {
		t.Fatal("converted image is not current")
	}
	var ve *VersionError
	if err := r1.CheckCurrent(); !errors.As(err, &ve) || ve.Version != 1 || !strings.Contains(err.Error(), "ckpt convert") {
		t.Fatalf("CheckCurrent of version 1: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d records, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Type != want[i].Type || !bytes.Equal(got[i].Payload, want[i].Payload) {
			t.Errorf("record %d: %v of %d bytes, want %v of %d", i, got[i].Type, len(got[i].Payload), want[i].Type, len(want[i].Payload))
		}
	}
	if r2.Tail.Pages != r1.Tail.Pages || r2.Tail.Processes != r1.Tail.Processes || r2.Tail.Records != r1.Tail.Records {
		t.Errorf("tail %v, want the counts of %v", r2.Tail, r1.Tail)
	}
}

func TestConvertCurrentCopies(t *testing.T) {
	v2, _ := convert(t, sampleV1(t, 3, 2), SameCompression)
	again, res := convert(t, v2, SameCompression)
	if res.From != FormatVersion || !bytes.Equal(again, v2) {
		t.Fatalf("a current image was not copied byte for byte (from %d)", res.From)
	}
}

func TestConvertCompression(t *testing.T) {
	v1 := sampleV1(t, 3, 2)
	plain, _ := convert(t, v1, SameCompression)
	for _, tt := range []struct {
		name string
		in   []byte
		c    Compression
		zstd bool
	}{
		{"compressed stays", zstdOf(t, v1), SameCompression, true},
		{"plain stays", v1, SameCompression, false},
		{"compress", v1, Compress, true},
		{"decompress", zstdOf(t, v1), Decompress, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, res := convert(t, tt.in, tt.c)
			if res.Compressed != tt.zstd || bytes.HasPrefix(out, zstdMagic) != tt.zstd {
				t.Fatalf("compressed %v (result %v), want %v", bytes.HasPrefix(out, zstdMagic), res.Compressed, tt.zstd)
			}
			if tt.zstd {
				dec, _ := zstd.NewReader(nil)
				out, _ = dec.DecodeAll(out, nil)
			}
			if !bytes.Equal(out, plain) {
				t.Fatal("output differs from the plain conversion")
			}
		})
	}
}

func TestConvertDamaged(t *testing.T) {
	v1 := sampleV1(t, 3, 2)
	for _, tt := range []struct {
		name string
		in   []byte
		want string
	}{
		{"foreign", []byte("#!/bin/sh\n"), "not a ckpt image"},
		{"truncated", v1[:len(v1)-30], "truncated"},
		{"truncated in pages", v1[:len(v1)/2], "truncated"},
		{"flipped page byte", flip(v1, len(v1)-5000), "checksum"},
		{"newer", func() []byte { c := append([]byte{}, v1...); c[8] = FormatVersion + 1; return c }(), "newer"},
		{"version 0", func() []byte { c := append([]byte{}, v1...); c[8] = 0; return c }(), "damaged"},
		{"truncated compressed", func() []byte { c := zstdOf(t, v1); return c[:len(c)-20] }(), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := Convert(bytes.NewReader(tt.in), &out, SameCompression)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			// Whatever was written must say it is incomplete.
			if out.Len() > 0 && readAll(out.Bytes()) == nil {
				t.Fatal("the output of a failed conversion reads as a complete image")
			}
		})
	}
}

func TestUpgradeV1RefusesNewRecords(t *testing.T) {
	if _, err := upgradeV1(Record{Type: TypeTail + 1, Offset: 64}); err == nil || !strings.Contains(err.Error(), "version 1") {
		t.Fatalf("got %v", err)
	}
}

func TestVersionsTable(t *testing.T) {
	for i, v := range versions {
		if v.number != OldestVersion+uint32(i) {
			t.Errorf("versions[%d] is version %d", i, v.number)
		}
		if last := i == len(versions)-1; (v.upgrade == nil) != last {
			t.Errorf("version %d: upgrade step present %v; every version but the newest needs one", v.number, v.upgrade != nil)
		}
	}
	if versions[len(versions)-1].number != FormatVersion {
		t.Errorf("newest listed version is %d, FormatVersion %d", versions[len(versions)-1].number, FormatVersion)
	}
}

func FuzzConvert(f *testing.F) {
	// Small seeds: the fuzzer minimises every new input, byte by byte.
	v1 := sampleV1(f)
	f.Add(v1)
	f.Add(zstdOf(f, v1))
	f.Add(sampleV1(f, 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		var out bytes.Buffer
		if _, err := Convert(bytes.NewReader(b), &out, SameCompression); err == nil {
			// What converts must read back as a complete current image.
			if err := readAll(out.Bytes()); err != nil {
				t.Fatalf("converted image does not read: %v", err)
			}
		}
	})
}
