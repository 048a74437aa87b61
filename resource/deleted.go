package resource

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// Regular files unlinked while open (a temporary file, Python's
// tempfile.TemporaryFile): no path leads to them any more, so their
// content travels in the image, once per inode, on the first description
// of it. At restart ckpt makes the file again where it was (or beside it,
// if that name is taken again), fills it, gives it its owner and mode,
// unlinks it, and opens each description from that inode with its own
// flags and offset: descriptions that shared the inode still share it.

// maxDeleted bounds the content kept of one deleted file: it is metadata
// in the image, read whole at restart.
const maxDeleted = 32 << 20

// deletedPath is the path a deleted file's link text names, and whether
// it is deleted: "/tmp/x (deleted)" of a file without links.
func deletedPath(target string, st *unix.Stat_t) (string, bool) {
	p, ok := strings.CutSuffix(target, " (deleted)")
	return p, ok && st.Nlink == 0
}

// checkDeleted refuses a deleted file ckpt would not keep.
func checkDeleted(pid, fd int, path string, st *unix.Stat_t) error {
	if st.Size > maxDeleted {
		return fmt.Errorf("fd %d of process %d is the deleted file %s of %d MiB: %w (deleted files of up to %d MiB are kept in the image; keep a link to it until the checkpoint)",
			fd, pid, path, st.Size>>20, ErrUnsupported, maxDeleted>>20)
	}
	return nil
}

// dumpDeleted reads the content of the deleted file behind fd of pid into
// f, the first description of its inode.
func dumpDeleted(pid, fd int, f *pb.File) error {
	if err := readDeleted(proc.Path(pid, "fd/"+strconv.Itoa(fd)), f); err != nil {
		return fmt.Errorf("fd %d of process %d: %w", fd, pid, err)
	}
	return nil
}

// readDeleted reads the content, owner and group of the deleted file that
// path (a /proc link) opens into f.
func readDeleted(path string, f *pb.File) error {
	src, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read the deleted file %s: %w", f.Path, err)
	}
	defer src.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(src.Fd()), &st); err != nil {
		return fmt.Errorf("the deleted file %s: %w", f.Path, err)
	}
	data, err := io.ReadAll(io.LimitReader(src, maxDeleted+1))
	if err != nil {
		return fmt.Errorf("read the deleted file %s: %w", f.Path, err)
	}
	if len(data) > maxDeleted {
		return fmt.Errorf("the deleted file %s grew past %d MiB: %w", f.Path, maxDeleted>>20, ErrUnsupported)
	}
	f.DeletedData, f.DeletedUid, f.DeletedGid = data, st.Uid, st.Gid
	if f.DeletedData == nil {
		f.DeletedData = []byte{}
	}
	return nil
}

// deletedMapped returns the id of a File record for a deleted file that
// is mapped or is the executable: src opens it (/proc/PID/map_files/...,
// /proc/PID/exe), name is its link text. One record per inode serves
// every mapping; its content is saved unless a descriptor's record has it
// already. The caller holds s.mu.
func (s *FileSet) deletedMapped(pid int, src, name string, write bool) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(src, &st); err != nil {
		return 0, fmt.Errorf("process %d: the deleted file %s: %w", pid, name, err)
	}
	path := strings.TrimSuffix(name, " (deleted)")
	if st.Size > maxDeleted {
		return 0, fmt.Errorf("process %d maps the deleted file %s of %d MiB: %w (deleted files of up to %d MiB are kept in the image)",
			pid, path, st.Size>>20, ErrUnsupported, maxDeleted>>20)
	}
	key := fmt.Sprintf("deleted %d:%d", st.Dev, st.Ino)
	if id, ok := s.byPath[key]; ok {
		if write {
			s.Files[id-1].Flags = unix.O_RDWR
		}
		return id, nil
	}
	f := &pb.File{Kind: pb.File_REGULAR, Path: path, Flags: unix.O_RDONLY, Size: st.Size, Mode: st.Mode,
		Deleted: true, DeletedDev: st.Dev, DeletedIno: st.Ino}
	if write {
		f.Flags = unix.O_RDWR
	}
	if k := [2]uint64{st.Dev, st.Ino}; !s.deleted[k] {
		s.deleted[k] = true
		if err := readDeleted(src, f); err != nil {
			return 0, fmt.Errorf("process %d: %w", pid, err)
		}
	}
	id := s.add(f)
	s.byPath[key] = id
	return id, nil
}

// openDeleted returns a new description of the deleted file rec names,
// making the file again on first use of its inode.
func (o *OpenFiles) openDeleted(rec *pb.File) (*os.File, error) {
	if !filepath.IsAbs(rec.Path) || filepath.Clean(rec.Path) != rec.Path {
		return nil, fmt.Errorf("image damaged: deleted file at %q", rec.Path)
	}
	key := [2]uint64{rec.DeletedDev, rec.DeletedIno}
	inode := o.deleted[key]
	if inode == nil {
		var first *pb.File
		for _, r := range o.recs {
			if r.Deleted && r.DeletedDev == rec.DeletedDev && r.DeletedIno == rec.DeletedIno && r.DeletedData != nil {
				first = r
			}
		}
		if first == nil {
			return nil, fmt.Errorf("image damaged: deleted file %s without its content", rec.Path)
		}
		var err error
		if inode, err = o.makeDeleted(first); err != nil {
			return nil, err
		}
		o.deleted[key] = inode
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", inode.Fd()), reopenFlags(rec)|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reopen the deleted file %s: %w", rec.Path, err)
	}
	if rec.Pos != 0 {
		if _, err := unix.Seek(int(f.Fd()), rec.Pos, io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("seek the deleted file %s to %d: %w", rec.Path, rec.Pos, err)
		}
	}
	return f, nil
}

// makeDeleted makes the file of rec again: at its old path if free (so
// that /proc shows the same name, " (deleted)"), otherwise under a new
// name in the same directory; filled, owned and moded as it was, then
// unlinked.
func (o *OpenFiles) makeDeleted(rec *pb.File) (*os.File, error) {
	path := o.path(rec.Path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	for i := 0; os.IsExist(err) && i < 100; i++ {
		path = filepath.Join(filepath.Dir(o.path(rec.Path)), fmt.Sprintf(".ckpt-deleted-%d-%s", i, filepath.Base(rec.Path)))
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("make the deleted file %s again: %w (its directory must exist at restart)", rec.Path, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	if err := os.Remove(path); err != nil {
		return nil, fmt.Errorf("unlink the remade deleted file %s: %w", path, err)
	}
	if _, err := f.Write(rec.DeletedData); err != nil {
		return nil, fmt.Errorf("fill the deleted file %s: %w", rec.Path, err)
	}
	if err := f.Chown(int(rec.DeletedUid), int(rec.DeletedGid)); err != nil && !(os.IsPermission(err) && os.Geteuid() != 0) {
		return nil, fmt.Errorf("the deleted file %s: %w", rec.Path, err)
	}
	if err := f.Chmod(os.FileMode(rec.Mode & 0o777)); err != nil {
		return nil, fmt.Errorf("the deleted file %s: %w", rec.Path, err)
	}
	if rec.Mode&0o7000 != 0 {
		if err := unix.Fchmod(int(f.Fd()), rec.Mode&0o7777); err != nil {
			return nil, fmt.Errorf("the deleted file %s: %w", rec.Path, err)
		}
	}
	// Kept open read-only: a file open for writing cannot become a
	// process's executable (PR_SET_MM_MAP), and the descriptions that
	// write reopen it through /proc anyway.
	ro, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("the deleted file %s: %w", rec.Path, err)
	}
	f.Close()
	ok = true
	return ro, nil
}
