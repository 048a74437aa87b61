package resource

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// Shared memory objects: MAP_SHARED|MAP_ANONYMOUS memory (which the kernel
// backs with a "/dev/zero (deleted)" shmem file), shared mappings of
// /dev/zero, and memfds. Each object, identified by its inode, is one SHMEM
// File record written once, whatever number of processes map it or hold a
// descriptor of it; its pages follow in PAGES records keyed by its id. ckpt
// reads them through /proc/PID/map_files (or the descriptor), skipping
// holes with SEEK_DATA. At restart each object is a memfd created and
// filled in ckpt's process, mapped MAP_SHARED by every process that mapped
// it, so that they share it again.

// shmemKey identifies a shmem object.
type shmemKey struct{ dev, ino uint64 }

// IsShmemName tells whether a mapping or fd name is a shmem object ckpt
// handles.
func IsShmemName(name string) bool {
	return name == "/dev/zero (deleted)" || strings.HasPrefix(name, "/memfd:") && strings.HasSuffix(name, " (deleted)")
}

// shmemSource is where ckpt reads an object's content from.
type shmemSource struct {
	path string // /proc/PID/map_files/START-END or /proc/PID/fd/N
}

// shmemObject returns the id of the SHMEM File for the object at path
// (a map_files or fd link), adding it on first use.
func (s *FileSet) shmemObject(path, name string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, unix.EPERM) && strings.Contains(path, "/map_files/") && os.Geteuid() != 0 {
			// map_files needs CAP_CHECKPOINT_RESTORE in the initial user
			// namespace (docs/security.md).
			return 0, fmt.Errorf("shared memory %s: reading a shared mapping (/proc/PID/map_files) needs root or CAP_CHECKPOINT_RESTORE: %w", name, ErrUnsupported)
		}
		return 0, fmt.Errorf("shared memory %s: %w", name, err)
	}
	key := shmemKey{st.Dev, st.Ino}
	if id, ok := s.shmem[key]; ok {
		return id, nil
	}
	f := &pb.File{Kind: pb.File_SHMEM, Path: strings.TrimSuffix(name, " (deleted)"), Size: st.Size, Mode: st.Mode}
	// Its seals: a memfd made with MFD_ALLOW_SEALING may have none yet
	// (and get some later), any other has F_SEAL_SEAL.
	if fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		if seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0); err == nil {
			v := uint32(seals)
			f.Seals = &v
		}
		unix.Close(fd)
	}
	id := s.add(f)
	s.shmem[key] = id
	s.shmemSrc[id] = shmemSource{path: path}
	return id, nil
}

// DumpShmem writes the pages of every shared memory object of the set.
func DumpShmem(s *FileSet, w *image.Writer) error {
	var buf []byte // allocated for the first object: most processes have none
	for _, f := range s.Files {
		if f.Kind != pb.File_SHMEM {
			continue
		}
		if buf == nil {
			buf = make([]byte, 4<<20)
		}
		if err := dumpShmemObject(f, s.shmemSrc[f.Id].path, w, buf); err != nil {
			return fmt.Errorf("shared memory %s: %w", f.Path, err)
		}
	}
	return nil
}

func dumpShmemObject(f *pb.File, path string, w *image.Writer, buf []byte) error {
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	fd := int(src.Fd())
	var runs []*pb.PageRun
	for off := int64(0); off < f.Size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only holes from here
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		start, end := data&^(pageSize-1), min((hole+pageSize-1)&^(pageSize-1), (f.Size+pageSize-1)&^(pageSize-1))
		if end > start {
			runs = append(runs, &pb.PageRun{Addr: uint64(start), Npages: uint64(end-start) / pageSize})
		}
		off = end
	}
	if len(runs) == 0 {
		return nil
	}
	return w.Pages(&pb.PageMap{ShmemId: f.Id, Runs: runs}, func(out io.Writer) error {
		for _, r := range runs {
			for off := uint64(0); off < r.Npages*pageSize; {
				n := min(uint64(len(buf)), r.Npages*pageSize-off)
				b := buf[:n]
				k, err := src.ReadAt(b, int64(r.Addr+off))
				if k < len(b) {
					if err != nil && err != io.EOF {
						return err
					}
					clear(b[k:]) // past the end of the object: zeros
				}
				if _, err := out.Write(b); err != nil {
					return err
				}
				off += n
			}
		}
		return nil
	})
}

// openShmem creates the memfd standing for a SHMEM object.
func openShmem(rec *pb.File) (*os.File, error) {
	name := strings.TrimPrefix(strings.TrimPrefix(rec.Path, "/memfd:"), "/")
	flags := unix.MFD_CLOEXEC
	if rec.Seals != nil {
		flags |= unix.MFD_ALLOW_SEALING // its seals are set by SealShmem
	}
	fd, err := unix.MemfdCreate(name, flags)
	if err != nil {
		return nil, fmt.Errorf("create shared memory %s: %w", rec.Path, err)
	}
	f := os.NewFile(uintptr(fd), rec.Path)
	if rec.Size < 0 || rec.Size > 1<<46 {
		f.Close()
		return nil, fmt.Errorf("image damaged: shared memory of %d bytes", rec.Size)
	}
	if err := f.Truncate(rec.Size); err != nil {
		f.Close()
		return nil, fmt.Errorf("size shared memory %s: %w", rec.Path, err)
	}
	return f, nil
}

// SealShmem gives every shared memory object its seals back, once its
// pages are in and the areas that map it have their final protections. A
// seal the kernel refuses now (F_SEAL_WRITE while an area maps the object
// writable) is reported through warn, not fatal: the process runs as
// before, only without it.
func (o *OpenFiles) SealShmem(warn func(string)) {
	for id, rec := range o.recs {
		f := o.byID[id]
		if rec.Kind != pb.File_SHMEM || rec.Seals == nil || *rec.Seals == 0 || f == nil {
			continue
		}
		if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, int(*rec.Seals)); err != nil {
			warn(fmt.Sprintf("shared memory %s: its seals %#x are not set again: %v", rec.Path, *rec.Seals, err))
		}
	}
}

// RestoreShmemPages writes the pages of one PAGES record into the memfd
// of its object.
func RestoreShmemPages(files *OpenFiles, pm *pb.PageMap, r io.Reader, buf []byte) error {
	f, rec, err := files.Get(pm.ShmemId)
	if err != nil {
		return err
	}
	if rec.Kind != pb.File_SHMEM {
		return fmt.Errorf("image damaged: pages for file %d, which is not shared memory", pm.ShmemId)
	}
	for _, run := range pm.Runs {
		size := run.Npages * pageSize
		if run.Addr%pageSize != 0 || run.Addr+size > uint64(rec.Size+pageSize) || run.Addr+size < run.Addr {
			return fmt.Errorf("image damaged: pages %#x+%d outside shared memory of %d bytes", run.Addr, run.Npages, rec.Size)
		}
		for off := uint64(0); off < size; {
			n := min(uint64(len(buf)), size-off)
			if _, err := io.ReadFull(r, buf[:n]); err != nil {
				return err
			}
			// The object may end inside its last page.
			w := n
			if end := run.Addr + off + n; end > uint64(rec.Size) {
				w = n - (end - uint64(rec.Size))
			}
			if _, err := f.WriteAt(buf[:w], int64(run.Addr+off)); err != nil {
				return fmt.Errorf("fill shared memory %s: %w", rec.Path, err)
			}
			off += n
		}
	}
	return nil
}

// mapFilesPath names the map_files link of an area.
func mapFilesPath(pid int, start, end uint64) string {
	return proc.Path(pid, fmt.Sprintf("map_files/%x-%x", start, end))
}
