package resource

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
)

// Regular files unlinked while open (a temporary file, Python's
// tempfile.TemporaryFile): no path leads to them any more, so their
// content travels in the image, once per inode, after the first
// description of it: FileData records of up to 1 MiB, holes left out, so
// that a file of any size streams through without being held in memory.
// At restart ckpt makes the file again where it was (or beside it, if
// that name is taken again), fills it, gives it its owner and mode,
// unlinks it, and opens each description from that inode with its own
// flags and offset: descriptions that shared the inode still share it.

// maxFileData bounds one FileData record's data.
const maxFileData = 1 << 20

// deletedPath is the path a deleted file's link text names, and whether
// it is deleted: "/tmp/x (deleted)" of a file without links.
func deletedPath(target string, st *unix.Stat_t) (string, bool) {
	p, ok := strings.CutSuffix(target, " (deleted)")
	return p, ok && st.Nlink == 0
}

// saveDeleted makes f, the first description of a deleted file's inode,
// the one that carries its content: owner and group now, from src (a
// /proc link that opens the file), and the data when the image is written
// (writeDeleted), while the processes are still stopped. The caller holds
// s.mu.
func (s *FileSet) saveDeleted(src string, f *pb.File) error {
	var st unix.Stat_t
	if err := unix.Stat(src, &st); err != nil {
		return fmt.Errorf("the deleted file %s: %w", f.Path, err)
	}
	f.DeletedChunks, f.DeletedUid, f.DeletedGid = true, st.Uid, st.Gid
	s.deletedSrc[f] = src
	return nil
}

// writeDeleted writes f's record and then the data of the deleted file
// that src opens, in FileData records.
func writeDeleted(w *image.Writer, f *pb.File, src string, buf []byte) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("read the deleted file %s: %w", f.Path, err)
	}
	defer in.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(in.Fd()), &st); err != nil {
		return fmt.Errorf("the deleted file %s: %w", f.Path, err)
	}
	f.DeletedSize = st.Size
	if err := w.Message(image.TypeFile, f); err != nil {
		return err
	}
	err = dataChunks(int(in.Fd()), st.Size, buf, func(off int64, b []byte) error {
		return w.Message(image.TypeFileData, &pb.FileData{FileId: f.Id, Offset: off, Data: b})
	})
	if err != nil {
		return fmt.Errorf("read the deleted file %s: %w", f.Path, err)
	}
	return nil
}

// dataChunks calls emit for the data of the first size bytes of the file
// fd, in pieces of at most len(buf) bytes read into buf, skipping holes
// (SEEK_DATA; a filesystem without holes reports one data region).
func dataChunks(fd int, size int64, buf []byte, emit func(off int64, b []byte) error) error {
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole remains
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		end = min(end, size)
		for off = start; off < end; {
			n := min(end-off, int64(len(buf)))
			got, err := unix.Pread(fd, buf[:n], off)
			if err != nil {
				return err
			}
			if got == 0 {
				return fmt.Errorf("file shrank to %d bytes while being read", off)
			}
			if err := emit(off, buf[:got]); err != nil {
				return err
			}
			off += int64(got)
		}
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
		if err := s.saveDeleted(src, f); err != nil {
			return 0, fmt.Errorf("process %d: %w", pid, err)
		}
	}
	id := s.add(f)
	s.byPath[key] = id
	return id, nil
}

// deletedFill is the content of a deleted file's inode as its FileData
// records arrive, before the processes are made.
type deletedFill struct {
	rec *pb.File
	// f holds the data: the remade file itself (placed), or, when the
	// image has a mount table and the file's directory does not exist
	// until the container's mounts do, a memfd it is copied from then.
	f      *os.File
	placed bool
	end    int64 // where the last record's data ended
}

// AddData writes a FileData record of the image into the deleted file it
// belongs to, which must be that of the last File record. inPlace says
// that the file's path can be made now: the image has no mount table of
// its own, so the paths are ckpt's.
func (o *OpenFiles) AddData(d *pb.FileData, inPlace bool) error {
	rec := o.last
	if rec == nil || rec.Id != d.FileId || !rec.DeletedChunks {
		return fmt.Errorf("image damaged: deleted file data for file id %d not right after its file record", d.FileId)
	}
	key := [2]uint64{rec.DeletedDev, rec.DeletedIno}
	fill := o.filling[key]
	if fill != nil && fill.rec != rec {
		return fmt.Errorf("image damaged: the content of the deleted file %s twice", rec.Path)
	}
	n := int64(len(d.Data))
	if n == 0 || n > maxFileData || d.Offset < 0 || (fill != nil && d.Offset < fill.end) || d.Offset > rec.DeletedSize-n {
		return fmt.Errorf("image damaged: %d bytes of data at %d of the deleted file %s of %d bytes", n, d.Offset, rec.Path, rec.DeletedSize)
	}
	if fill == nil {
		fill = &deletedFill{rec: rec}
		var err error
		if inPlace {
			fill.f, err = o.createDeleted(rec)
			fill.placed = true
		} else {
			var fd int
			if fd, err = unix.MemfdCreate("ckpt-deleted", unix.MFD_CLOEXEC); err == nil {
				fill.f = os.NewFile(uintptr(fd), "memfd:ckpt-deleted")
			}
		}
		if err != nil {
			return fmt.Errorf("restore the deleted file %s: %w", rec.Path, err)
		}
		o.filling[key] = fill
	}
	if _, err := fill.f.WriteAt(d.Data, d.Offset); err != nil {
		return fmt.Errorf("fill the deleted file %s: %w", rec.Path, err)
	}
	fill.end = d.Offset + n
	return nil
}

// openDeleted returns a new description of the deleted file rec names,
// making the file again on first use of its inode.
func (o *OpenFiles) openDeleted(rec *pb.File) (*os.File, error) {
	if !filepath.IsAbs(rec.Path) || filepath.Clean(rec.Path) != rec.Path || rec.Path == "/" {
		return nil, fmt.Errorf("image damaged: deleted file at %q", rec.Path)
	}
	key := [2]uint64{rec.DeletedDev, rec.DeletedIno}
	inode := o.deleted[key]
	if inode == nil && rec.Kind == pb.File_DIRECTORY {
		var err error
		if inode, err = o.makeDeletedDir(rec); err != nil {
			return nil, err
		}
		o.deleted[key] = inode
	}
	if inode == nil {
		var first *pb.File
		for _, r := range o.recs {
			if r.Deleted && r.DeletedDev == rec.DeletedDev && r.DeletedIno == rec.DeletedIno && (r.DeletedData != nil || r.DeletedChunks) {
				first = r
			}
		}
		if first == nil {
			return nil, fmt.Errorf("image damaged: deleted file %s without its content", rec.Path)
		}
		var err error
		if inode, err = o.makeDeleted(first, o.filling[key]); err != nil {
			return nil, err
		}
		o.deleted[key] = inode
	}
	f, err := reopenProc(inode, rec, 0)
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

// makeDeletedDir makes a directory removed while a process held it open
// again: made at its path if free (or beside it), opened, given its owner
// and mode, and removed. A removed directory is empty, and stays so.
func (o *OpenFiles) makeDeletedDir(rec *pb.File) (*os.File, error) {
	path, err := makeBeside(o.path(rec.Path), 100, func(p string) error { return os.Mkdir(p, 0o700) })
	if err != nil {
		return nil, fmt.Errorf("make the removed directory %s again: %w (its parent must exist at restart)", rec.Path, err)
	}
	d, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err == nil {
		if err = d.Chown(int(rec.DeletedUid), int(rec.DeletedGid)); err != nil && os.IsPermission(err) && os.Geteuid() != 0 {
			err = nil // an unprivileged restart keeps its own
		}
	}
	if err == nil {
		err = unix.Fchmod(int(d.Fd()), rec.Mode&0o7777)
	}
	if rerr := os.Remove(path); err == nil {
		err = rerr
	}
	if err != nil {
		if d != nil {
			d.Close()
		}
		return nil, fmt.Errorf("remake the removed directory %s: %w", rec.Path, err)
	}
	return d, nil
}

// makeBeside calls mk with path and, while what mk makes exists there
// already, with names beside it (".ckpt-deleted-N-" and the base name),
// at most siblings of them; it returns the path mk succeeded with. Things
// ckpt makes again where a removed one was take the old name if they can:
// /proc shows it, with " (deleted)".
func makeBeside(path string, siblings int, mk func(string) error) (string, error) {
	try := path
	for i := 0; ; i++ {
		err := mk(try)
		if err == nil {
			return try, nil
		}
		if !errors.Is(err, fs.ErrExist) || i == siblings {
			return "", err
		}
		try = filepath.Join(filepath.Dir(path), fmt.Sprintf(".ckpt-deleted-%d-%s", i, filepath.Base(path)))
	}
}

// createDeleted makes an empty file for the deleted file rec, at its old
// path if free (so that /proc shows the same name, " (deleted)"),
// otherwise under a new name in the same directory, and unlinks it.
func (o *OpenFiles) createDeleted(rec *pb.File) (*os.File, error) {
	var f *os.File
	path, err := makeBeside(o.path(rec.Path), 100, func(p string) (err error) {
		f, err = os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("make the deleted file %s again: %w (its directory must exist at restart)", rec.Path, err)
	}
	if err := os.Remove(path); err != nil {
		f.Close()
		return nil, fmt.Errorf("unlink the remade deleted file %s: %w", path, err)
	}
	return f, nil
}

// makeDeleted makes the file of rec again (createDeleted), with the
// content that fill holds (nil: only holes) or, from older images, rec
// itself; owned and moded as it was.
func (o *OpenFiles) makeDeleted(rec *pb.File, fill *deletedFill) (*os.File, error) {
	var f *os.File
	if fill != nil && fill.placed {
		f, fill.f = fill.f, nil
	} else {
		var err error
		if f, err = o.createDeleted(rec); err != nil {
			return nil, err
		}
	}
	defer f.Close()
	if !rec.DeletedChunks {
		if _, err := f.Write(rec.DeletedData); err != nil {
			return nil, fmt.Errorf("fill the deleted file %s: %w", rec.Path, err)
		}
	} else {
		if fill != nil && !fill.placed {
			err := dataChunks(int(fill.f.Fd()), rec.DeletedSize, make([]byte, maxFileData), func(off int64, b []byte) error {
				_, err := f.WriteAt(b, off)
				return err
			})
			if err != nil {
				return nil, fmt.Errorf("fill the deleted file %s: %w", rec.Path, err)
			}
			fill.f.Close() // the memfd's pages
			fill.f = nil
		}
		if err := f.Truncate(rec.DeletedSize); err != nil {
			return nil, fmt.Errorf("the deleted file %s: %w", rec.Path, err)
		}
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
	return ro, nil
}
