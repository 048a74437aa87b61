package resource

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

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
