package resource

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
)

// TestOpenDeleted makes a deleted file again from its records: one inode
// for two descriptions, its content, mode, no name left behind, and the
// old name's new owner untouched; a record without the content is damage.
func TestOpenDeleted(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "gone")
	if err := os.WriteFile(path, []byte("someone else's"), 0o644); err != nil {
		t.Fatal(err)
	}
	o := NewOpenFiles()
	defer o.Close()
	first := &pb.File{Id: 1, Kind: pb.File_REGULAR, Path: path, Flags: unix.O_RDWR, Pos: 2, Mode: unix.S_IFREG | 0o640,
		Deleted: true, DeletedDev: 9, DeletedIno: 77, DeletedData: []byte("content"), DeletedUid: uint32(os.Getuid()), DeletedGid: uint32(os.Getgid())}
	second := &pb.File{Id: 2, Kind: pb.File_REGULAR, Path: path, Flags: unix.O_RDONLY, Mode: unix.S_IFREG | 0o640, Deleted: true, DeletedDev: 9, DeletedIno: 77}
	o.Add(first)
	o.Add(second)
	f2, _, err := o.Get(2)
	if err != nil {
		t.Fatal(err)
	}
	f1, _, err := o.Get(1)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f2.Fd()), &st); err != nil || st.Nlink != 0 || st.Mode&0o777 != 0o640 || st.Size != 7 {
		t.Errorf("remade file: %d links, mode %o, %d bytes (%v)", st.Nlink, st.Mode&0o777, st.Size, err)
	}
	if pos, _ := unix.Seek(int(f1.Fd()), 0, 1); pos != 2 {
		t.Errorf("offset %d, want 2", pos)
	}
	if _, err := f1.WriteAt([]byte("X"), 0); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 7)
	if n, _ := f2.ReadAt(b, 0); string(b[:n]) != "Xontent" {
		t.Errorf("through the second description: %q, want one inode holding \"Xontent\"", b[:n])
	}
	if b, _ := os.ReadFile(path); string(b) != "someone else's" {
		t.Errorf("the file now at the old name holds %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%d names left in the directory, want 1", len(ents))
	}

	o2 := NewOpenFiles()
	defer o2.Close()
	o2.Add(&pb.File{Id: 1, Kind: pb.File_REGULAR, Path: path, Deleted: true, DeletedIno: 5})
	o2.Add(&pb.File{Id: 2, Kind: pb.File_REGULAR, Path: dir + "/../x", Deleted: true, DeletedIno: 6, DeletedData: []byte{1}})
	for id, what := range map[uint32]string{1: "without its content", 2: "at a path with .."} {
		if _, _, err := o2.Get(id); err == nil || !strings.Contains(err.Error(), "image damaged") {
			t.Errorf("a deleted file %s: err = %v", what, err)
		}
	}
}

// TestDeletedChunks fills a deleted file from FileData records, made at
// its path at once (inPlace) or held in a memfd until it is opened, and
// refuses records that do not fit their file.
func TestDeletedChunks(t *testing.T) {
	for _, inPlace := range []bool{true, false} {
		dir := t.TempDir()
		path := filepath.Join(dir, "big")
		o := NewOpenFiles()
		defer o.Close()
		rec := &pb.File{Id: 1, Kind: pb.File_REGULAR, Path: path, Flags: unix.O_RDWR, Mode: unix.S_IFREG | 0o600,
			Deleted: true, DeletedDev: 9, DeletedIno: 77, DeletedChunks: true, DeletedSize: 5 << 20,
			DeletedUid: uint32(os.Getuid()), DeletedGid: uint32(os.Getgid())}
		if err := o.Add(rec); err != nil {
			t.Fatal(err)
		}
		for _, d := range []*pb.FileData{{FileId: 1, Offset: 10, Data: []byte("head")}, {FileId: 1, Offset: 4 << 20, Data: []byte("tail")}} {
			if err := o.AddData(d, inPlace); err != nil {
				t.Fatalf("inPlace %v: %v", inPlace, err)
			}
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("inPlace %v: %d names in the directory, want none", inPlace, len(ents))
		}
		f, _, err := o.Get(1)
		if err != nil {
			t.Fatalf("inPlace %v: %v", inPlace, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Size != 5<<20 || st.Nlink != 0 {
			t.Errorf("inPlace %v: %d bytes, %d links (%v)", inPlace, st.Size, st.Nlink, err)
		}
		b := make([]byte, 14)
		f.ReadAt(b, 0)
		t2 := make([]byte, 4)
		f.ReadAt(t2, 4<<20)
		if string(b) != "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00head" || string(t2) != "tail" {
			t.Errorf("inPlace %v: content %q ... %q", inPlace, b, t2)
		}
		if st.Blocks*512 >= 1<<20 {
			t.Errorf("inPlace %v: %d bytes of blocks: the hole was filled", inPlace, st.Blocks*512)
		}
	}

	dir := t.TempDir()
	o := NewOpenFiles()
	defer o.Close()
	recs := []*pb.File{
		{Id: 1, Kind: pb.File_REGULAR, Path: dir + "/a", Deleted: true, DeletedIno: 1, DeletedChunks: true, DeletedSize: 100},
		{Id: 2, Kind: pb.File_REGULAR, Path: dir + "/b"},
		{Id: 3, Kind: pb.File_REGULAR, Path: dir + "/c", Deleted: true, DeletedIno: 3, DeletedChunks: true, DeletedSize: 100},
	}
	add := func(i int) {
		if err := o.Add(recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	add(0)
	if err := o.AddData(&pb.FileData{FileId: 1, Offset: 50, Data: []byte("x")}, true); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what string
		d    *pb.FileData
	}{
		{"before an earlier piece", &pb.FileData{FileId: 1, Offset: 10, Data: []byte("x")}},
		{"past the end", &pb.FileData{FileId: 1, Offset: 99, Data: []byte("xy")}},
		{"empty", &pb.FileData{FileId: 1, Offset: 60}},
		{"at a negative offset", &pb.FileData{FileId: 1, Offset: -1, Data: []byte("x")}},
		{"too big", &pb.FileData{FileId: 1, Offset: 60, Data: make([]byte, maxFileData+1)}},
		{"of another file", &pb.FileData{FileId: 3, Offset: 60, Data: []byte("x")}},
	} {
		if err := o.AddData(c.d, true); err == nil || !strings.Contains(err.Error(), "image damaged") {
			t.Errorf("data %s: err = %v", c.what, err)
		}
	}
	add(1)
	if err := o.AddData(&pb.FileData{FileId: 1, Offset: 60, Data: []byte("x")}, true); err == nil {
		t.Error("data after another file's record: accepted")
	}
	if err := o.AddData(&pb.FileData{FileId: 2, Data: []byte("x")}, true); err == nil {
		t.Error("data of a file that is not deleted: accepted")
	}
	if err := o.Add(&pb.File{Id: 4, Kind: pb.File_REGULAR, Path: dir + "/d", DeletedChunks: true}); err == nil {
		t.Error("a record with content that is not deleted: accepted")
	}
	add(2)
	if err := o.Add(&pb.File{Id: 5, Kind: pb.File_REGULAR, Path: dir + "/e", Deleted: true, DeletedIno: 1, DeletedChunks: true, DeletedSize: 100}); err != nil {
		t.Fatal(err)
	}
	if err := o.AddData(&pb.FileData{FileId: 5, Offset: 70, Data: []byte("x")}, true); err == nil {
		t.Error("the content of one inode twice: accepted")
	}
}

// TestWriteDeleted writes a deleted file's record and its data, holes
// left out, and reads the stream back.
func TestWriteDeleted(t *testing.T) {
	dir := t.TempDir()
	src, err := os.Create(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(i*7 + 1)
	}
	if _, err := src.WriteAt(data, 8<<20); err != nil {
		t.Fatal(err)
	}
	if err := src.Truncate(16<<20 + 5); err != nil {
		t.Fatal(err)
	}
	os.Remove(src.Name())
	s := NewFileSet()
	f := &pb.File{Kind: pb.File_REGULAR, Path: src.Name(), Deleted: true}
	link := "/proc/self/fd/" + strconv.Itoa(int(src.Fd()))
	if err := s.saveDeleted(link, f); err != nil {
		t.Fatal(err)
	}
	s.add(f)
	var out bytes.Buffer
	w, err := image.NewWriter(&out)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Message(image.TypeHeader, &pb.Header{FormatVersion: image.FormatVersion, PageSize: image.PageSize}); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(w); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := image.NewReader(&out)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int64][]byte{}
	var rec pb.File
	for {
		x, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch x.Type {
		case image.TypeFile:
			image.Unmarshal(x, &rec)
		case image.TypeFileData:
			var d pb.FileData
			image.Unmarshal(x, &d)
			got[d.Offset] = d.Data
		}
	}
	if !rec.DeletedChunks || rec.DeletedSize != 16<<20+5 {
		t.Errorf("record: chunks %v, size %d", rec.DeletedChunks, rec.DeletedSize)
	}
	var n int
	for off, b := range got {
		if off < 8<<20 || off+int64(len(b)) > 11<<20 || !bytes.Equal(b, data[off-8<<20:off-8<<20+int64(len(b))]) {
			t.Errorf("%d bytes at %d: not the file's data", len(b), off)
		}
		n += len(b)
	}
	if n != len(data) || len(got) != 3 {
		t.Errorf("%d bytes in %d records, want %d in 3", n, len(got), len(data))
	}
}
