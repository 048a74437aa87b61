package resource

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// ErrUnsupported marks state this version of ckpt cannot checkpoint. Such a
// process is refused before it is touched.
var ErrUnsupported = errors.New("not supported")

// FileSet collects the File records of a checkpoint and gives each open
// file description one id, however many descriptors or mappings use it.
type FileSet struct {
	// mu is held while DumpFiles and DumpMm add to the set: collect reads
	// two processes' /proc files at once (checkpoint.collect).
	mu    sync.Mutex
	Files []*pb.File
	// byPath dedupes mapped files, which are reopened read-only by path.
	byPath map[string]uint32
	// owners remembers one (pid, fd) per description, for kcmp.
	owners map[uint32][2]int
	// pipes records the pipes whose data is already saved.
	pipes map[uint64]bool
	// shmem maps shared memory objects to their SHMEM File, and shmemSrc
	// says where to read each one's content.
	shmem    map[shmemKey]uint32
	shmemSrc map[uint32]shmemSource
	// deleted records the deleted files whose content is saved (device,
	// inode), and deletedSrc where to read it from when the image is
	// written (a /proc link), by the File record that carries it.
	deleted    map[[2]uint64]bool
	deletedSrc map[*pb.File]string
	// KeepRepair keeps TCP connections in repair mode after they are read
	// (checkpoint --kill), in repaired, ckpt's copies, until EndRepair;
	// guard holds copies too, to end repair mode if ckpt dies first.
	KeepRepair bool
	repaired   []int
	guard      *repairGuard // started with the first of repaired
}

// NewFileSet returns an empty set.
func NewFileSet() *FileSet {
	return &FileSet{byPath: map[string]uint32{}, owners: map[uint32][2]int{}, pipes: map[uint64]bool{},
		shmem: map[shmemKey]uint32{}, shmemSrc: map[uint32]shmemSource{}, deleted: map[[2]uint64]bool{},
		deletedSrc: map[*pb.File]string{}}
}

// Write writes a File record for each description in the set, each
// deleted file's content after the first record of its inode.
func (s *FileSet) Write(w *image.Writer) error {
	var buf []byte
	for _, f := range s.Files {
		src, ok := s.deletedSrc[f]
		if !ok {
			if err := w.Message(image.TypeFile, f); err != nil {
				return err
			}
			continue
		}
		if buf == nil {
			buf = make([]byte, maxFileData)
		}
		if err := writeDeleted(w, f, src, buf); err != nil {
			return err
		}
	}
	return nil
}

func (s *FileSet) add(f *pb.File) uint32 {
	f.Id = uint32(len(s.Files) + 1)
	s.Files = append(s.Files, f)
	return f.Id
}

// charDevs are the character devices ckpt reopens by path.
var charDevs = map[uint64]string{
	unix.Mkdev(1, 3): "/dev/null",
	unix.Mkdev(1, 5): "/dev/zero",
	unix.Mkdev(1, 8): "/dev/random",
	unix.Mkdev(1, 9): "/dev/urandom",
}

// StatelessDevice tells character devices whose sharing between processes
// carries no state: terminals (restart hands them over) and the devices of
// charDevs.
func StatelessDevice(rdev uint64) bool {
	return IsTTY(rdev) || charDevs[rdev] != ""
}

// IsTTY reports whether a character device is a terminal: a pty slave,
// a virtual console, a serial line or /dev/tty and /dev/console.
func IsTTY(rdev uint64) bool {
	major, minor := unix.Major(rdev), unix.Minor(rdev)
	switch {
	case major >= 136 && major <= 143: // pty slaves
		return true
	case major == 4: // ttyN, ttySN
		return true
	case major == 5 && (minor == 0 || minor == 1): // /dev/tty, /dev/console
		return true
	}
	return false
}

// FdRef is one descriptor as /proc shows it: the text of its link and what
// it refers to. Preflight hands them on to the leak scan, which would
// otherwise read them again.
type FdRef struct {
	Fd   int
	Link string
	Stat unix.Stat_t
}

// PreflightFiles checks, without touching the process, that every
// descriptor is of a kind ckpt can checkpoint, and returns them.
func PreflightFiles(pid int) ([]FdRef, error) {
	fds, err := ListFds(pid)
	if err != nil {
		return nil, err
	}
	refs := make([]FdRef, 0, len(fds))
	for _, fd := range fds {
		ref := FdRef{Fd: fd}
		if _, err := describeFile(pid, &ref, false); err != nil {
			if fdClosed(pid, fd, err) {
				continue // the running process closed it meanwhile
			}
			return nil, err
		}
		refs = append(refs, ref)
	}
	return refs, nil
}

// fdClosed tells, from the error describing it, a descriptor the process
// closed since it was listed (a program at its start opens and closes
// locale files) from one ckpt could not read. What is open at the freeze
// is read again then.
func fdClosed(pid, fd int, err error) bool {
	if !errors.Is(err, unix.ENOENT) {
		return false
	}
	if _, err := os.Lstat(proc.Path(pid, "fd/"+strconv.Itoa(fd))); !errors.Is(err, unix.ENOENT) {
		return false
	}
	_, err = os.Stat(proc.Path(pid, "fd"))
	return err == nil // the process itself is still there
}

// FdRefs reads the descriptors of pid, leaving out those closed meanwhile.
func FdRefs(pid int) ([]FdRef, error) {
	fds, sts, err := FdStats(pid, true)
	if err != nil {
		return nil, err
	}
	refs := make([]FdRef, 0, len(fds))
	var buf [unix.PathMax]byte
	for i, fd := range fds {
		if sts[i].Mode == 0 {
			continue // closed meanwhile
		}
		n, err := unix.Readlink(proc.Path(pid, "fd/"+strconv.Itoa(fd)), buf[:])
		if err != nil {
			continue // closed meanwhile
		}
		refs = append(refs, FdRef{Fd: fd, Link: string(buf[:n]), Stat: sts[i]})
	}
	return refs, nil
}

// ListFds lists the descriptor numbers of pid, in order.
func ListFds(pid int) ([]int, error) {
	fds, _, err := FdStats(pid, false)
	return fds, err
}

// FdStats lists the descriptor numbers of pid, in order, and with withStat
// what each refers to (a zero Stat_t for a descriptor closed meanwhile).
// The leak scan does this for every process of the machine, so it works
// relative to one open /proc/PID/fd: a stat per descriptor without a path
// walk from /proc, and none of the os package's per-file set-up.
func FdStats(pid int, withStat bool) ([]int, []unix.Stat_t, error) {
	if withStat {
		if err := proc.FdAccess(pid); err != nil {
			return nil, nil, fmt.Errorf("descriptors of %d: %w", pid, err)
		}
	}
	var sts []unix.Stat_t
	var denied error
	fds, err := eachFd(pid, func(dir int, fds []int) {
		if !withStat {
			return
		}
		sts = make([]unix.Stat_t, len(fds))
		for i, fd := range fds {
			// A process whose descriptors may not be followed fails at
			// the first (the development VM's PID 1 lists its descriptors
			// to root but refuses to resolve any).
			if err := unix.Fstatat(dir, strconv.Itoa(fd), &sts[i], 0); err == unix.EACCES || err == unix.EPERM {
				denied = fmt.Errorf("descriptors of %d: %w", pid, err)
				return
			}
		}
	})
	if err == nil {
		err = denied
	}
	return fds, sts, err
}

// eachFd lists the descriptor numbers of pid, in order, and calls fn with
// them and the open /proc/PID/fd directory.
func eachFd(pid int, fn func(dir int, fds []int)) ([]int, error) {
	dir, err := unix.Open(proc.Path(pid, "fd"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("list descriptors of %d: %w", pid, err)
	}
	defer unix.Close(dir)
	fds, err := proc.Fds(dir)
	if err != nil {
		return nil, fmt.Errorf("list descriptors of %d: %w", pid, err)
	}
	fn(dir, fds)
	return fds, nil
}

// describeFd builds the File record of one descriptor and tells whether
// the descriptor is close-on-exec (a per-descriptor flag, not the file's).
func describeFd(pid, fd int) (f *pb.File, cloexec bool, err error) {
	f, err = describeFile(pid, &FdRef{Fd: fd}, true)
	if err == nil {
		cloexec = f.Flags&unix.O_CLOEXEC != 0
		f.Flags &^= unix.O_CLOEXEC
	}
	return f, cloexec, err
}

// describeFile builds the File record of descriptor ref.Fd, filling in
// ref's link text and stat on the way. Without full, it only checks that
// ckpt can checkpoint the descriptor (preflight): then the fdinfo file,
// which holds the flags and offset, is read only for the anonymous inodes
// whose kind and state it tells (a tenth of a millisecond saved for every
// ten descriptors here).
func describeFile(pid int, ref *FdRef, full bool) (*pb.File, error) {
	fd := ref.Fd
	link := proc.Path(pid, "fd/"+strconv.Itoa(fd))
	target, err := os.Readlink(link)
	if err != nil {
		return nil, fmt.Errorf("read fd %d of %d: %w", fd, pid, err)
	}
	ref.Link = target
	st := &ref.Stat
	if err := unix.Stat(link, st); err != nil {
		return nil, fmt.Errorf("stat fd %d (%s) of %d: %w", fd, target, pid, err)
	}
	var info []byte
	var fi proc.FdInfo
	if full || strings.HasPrefix(target, "anon_inode:") {
		if info, err = proc.ReadFile(proc.Path(pid, "fdinfo/"+strconv.Itoa(fd))); err != nil {
			return nil, err
		}
		if fi, err = proc.ParseFdInfo(info); err != nil {
			return nil, fmt.Errorf("fd %d of %d: %w", fd, pid, err)
		}
	}
	f := &pb.File{Path: target, Flags: fi.Flags, Pos: fi.Pos, Size: st.Size, Mode: st.Mode, Rdev: st.Rdev}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFDIR:
		if st.Mode&unix.S_IFMT == unix.S_IFREG && IsShmemName(target) && strings.HasPrefix(target, "/memfd:") {
			f.Kind = pb.File_MEMFD
			break
		}
		if !strings.HasPrefix(target, "/") {
			return nil, fmt.Errorf("fd %d of process %d is %s: %w yet", fd, pid, target, ErrUnsupported)
		}
		if strings.HasSuffix(target, " (deleted)") {
			p, ok := deletedPath(target, st)
			if !ok {
				return nil, fmt.Errorf("fd %d of process %d is %s, unlinked but with other links left: %w yet", fd, pid, target, ErrUnsupported)
			}
			f.Path, f.Deleted, f.DeletedDev, f.DeletedIno = p, true, st.Dev, st.Ino
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				// A removed directory: empty, nothing to keep but its
				// owner and mode (see openDeletedDir).
				f.DeletedUid, f.DeletedGid = st.Uid, st.Gid
			}
		}
		f.Kind = pb.File_REGULAR
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			f.Kind = pb.File_DIRECTORY
		}
	case unix.S_IFIFO:
		if ino, ok := pipeIno(target); ok {
			f.Kind, f.PipeIno = pb.File_PIPE, ino
			break
		}
		if !strings.HasPrefix(target, "/") || strings.HasSuffix(target, " (deleted)") {
			return nil, fmt.Errorf("fd %d of process %d is the FIFO %s: %w", fd, pid, target, ErrUnsupported)
		}
		f.Kind, f.PipeIno = pb.File_FIFO, st.Ino
	case unix.S_IFSOCK:
		ino, ok := sockIno(target)
		if !ok {
			return nil, fmt.Errorf("fd %d of process %d is %s: %w yet", fd, pid, target, ErrUnsupported)
		}
		if err := describeSocket(pid, fd, ino, f); err != nil {
			return nil, err
		}
	case unix.S_IFCHR:
		if IsTTY(st.Rdev) {
			f.Kind = pb.File_TTY
			break
		}
		path, ok := charDevs[st.Rdev]
		if !ok && st.Rdev == unix.Mkdev(5, 2) {
			return nil, fmt.Errorf("fd %d of process %d is a pseudo-terminal master (%s), as tmux, screen, sshd and script hold: %w yet; ckpt keeps only the terminal it is run from", fd, pid, target, ErrUnsupported)
		}
		if !ok {
			return nil, fmt.Errorf("fd %d of process %d is the device %s: %w yet (ckpt handles /dev/null, zero, random, urandom)", fd, pid, target, ErrUnsupported)
		}
		f.Kind, f.Path = pb.File_CHARDEV, path
	default:
		if strings.HasPrefix(target, "anon_inode:") {
			if err := describeAnon(f, target, info); err != nil {
				if errors.Is(err, ErrUnsupported) {
					return nil, fmt.Errorf("fd %d of process %d is %s: %w yet", fd, pid, target, ErrUnsupported)
				}
				return nil, fmt.Errorf("fd %d (%s) of process %d: %w", fd, target, pid, err)
			}
			return f, addLocks(pid, fd, f, fi.Locks)
		}
		return nil, fmt.Errorf("fd %d of process %d is %s: %w yet", fd, pid, target, ErrUnsupported)
	}
	return f, addLocks(pid, fd, f, fi.Locks)
}

// DumpFiles records the descriptor table of pid. Descriptors that share one
// open file description (dup, fork) get one File record (found with kcmp).
func DumpFiles(pid int, p *pb.Process, s *FileSet) error {
	fds, err := ListFds(pid)
	if err != nil {
		return err
	}
	posixFrom := map[uint32]bool{} // descriptions whose POSIX locks p has
	for _, fd := range fds {
		f, cloexec, err := describeFd(pid, fd)
		if err != nil {
			return err
		}
		// fdinfo shows the process's POSIX locks on every descriptor of
		// the description they were taken through; they are the
		// process's, not the description's.
		var posix []*pb.FileLock
		own := f.Locks[:0]
		for _, l := range f.Locks {
			if l.Kind == pb.FileLock_POSIX {
				posix = append(posix, l)
			} else {
				own = append(own, l)
			}
		}
		f.Locks = own
		id, err := s.addFd(pid, fd, f)
		if err != nil {
			return err
		}
		if len(posix) > 0 && !posixFrom[id] {
			posixFrom[id] = true
			p.PosixLocks = append(p.PosixLocks, posix...)
		}
		p.Fds = append(p.Fds, &pb.Fd{Fd: int32(fd), FileId: id, Cloexec: cloexec})
	}
	return nil
}

// addFd returns the id of descriptor fd's open file description f,
// adding it (with its pipe's data, the first time the pipe is seen)
// unless another descriptor of it is in the set already.
func (s *FileSet) addFd(pid, fd int, f *pb.File) (uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	if f.Kind == pb.File_MEMFD {
		if f.ShmemId, err = s.shmemObject(proc.Path(pid, "fd/"+strconv.Itoa(fd)), f.Path); err != nil {
			return 0, err
		}
	}
	if id := s.sameDescription(pid, fd, f); id != 0 {
		return id, nil
	}
	if f.Deleted && f.Kind == pb.File_REGULAR && !s.deleted[[2]uint64{f.DeletedDev, f.DeletedIno}] {
		s.deleted[[2]uint64{f.DeletedDev, f.DeletedIno}] = true
		if err := s.saveDeleted(proc.Path(pid, "fd/"+strconv.Itoa(fd)), f); err != nil {
			return 0, fmt.Errorf("fd %d of process %d: %w", fd, pid, err)
		}
	}
	if f.Kind == pb.File_SOCKET {
		if err := dumpSocket(s, pid, fd, f); err != nil {
			return 0, err
		}
	}
	if (f.Kind == pb.File_PIPE || f.Kind == pb.File_FIFO) && !s.pipes[f.PipeIno] {
		s.pipes[f.PipeIno] = true
		if f.PipeData, f.PipeSize, err = dumpPipeData(pid, fd); err != nil {
			return 0, err
		}
	}
	id := s.add(f)
	s.owners[id] = [2]int{pid, fd}
	return id, nil
}

func (s *FileSet) sameDescription(pid, fd int, f *pb.File) uint32 {
	for id, o := range s.owners {
		g := s.Files[id-1]
		if g.Path != f.Path || g.Rdev != f.Rdev {
			continue
		}
		const kcmpFile = 0
		r, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(pid), uintptr(o[0]), kcmpFile, uintptr(fd), uintptr(o[1]), 0)
		if e == 0 && r == 0 {
			return id
		}
	}
	return 0
}

// mappedFile returns the id of a file mapped at path, added on first use;
// the caller holds s.mu.
func (s *FileSet) mappedFile(path string) (uint32, error) {
	if id, ok := s.byPath[path]; ok {
		return id, nil
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("mapped file %s: %w", path, err)
	}
	id := s.add(&pb.File{Kind: pb.File_REGULAR, Path: path, Flags: unix.O_RDONLY, Size: st.Size, Mode: st.Mode})
	s.byPath[path] = id
	return id, nil
}

// OpenFiles are the image's files, opened in ckpt's own process; stubs take
// their copies with pidfd_getfd.
type OpenFiles struct {
	byID  map[uint32]*os.File
	recs  map[uint32]*pb.File
	pipes map[uint64]*openPipe
	// fifos keeps each FIFO open read-write while its ends are reopened.
	fifos map[string]*os.File
	// deleted are the deleted files made again, by device and inode;
	// filling their content as the image's FileData records come, and last
	// the last File record, which those records belong to.
	deleted map[[2]uint64]*os.File
	filling map[[2]uint64]*deletedFill
	last    *pb.File
	// inherit maps a pipe (by inode) that InheritStdio replaced to ckpt's
	// own descriptor, inheritSock an external socket (by inode).
	inherit, inheritSock map[uint64]*os.File
	// sockets are the sockets made again, by their inode in the image.
	sockets map[uint64]*os.File
	// repairs are the restored TCP connections still in repair mode.
	repairs []repairing
	// netPid is the stub whose descriptors RestoreFiles is placing:
	// sockets are made in its network namespace, where they were.
	netPid int
	// Terminal is the terminal ckpt restart runs in; descriptors that were
	// on a terminal are reopened on it. Nil when ckpt has none.
	Terminal *os.File
	// Root, when set, prefixes the paths of files to open: the restored
	// container's root ("/proc/PID/root") when it has a mount namespace of
	// its own, whose mounts ckpt's paths would miss.
	Root string
}

// path is where ckpt finds the file the process knew as p.
func (o *OpenFiles) path(p string) string { return o.Root + p }

// NewOpenFiles returns an empty table.
func NewOpenFiles() *OpenFiles {
	return &OpenFiles{byID: map[uint32]*os.File{}, recs: map[uint32]*pb.File{}, pipes: map[uint64]*openPipe{}, fifos: map[string]*os.File{}, sockets: map[uint64]*os.File{}, deleted: map[[2]uint64]*os.File{},
		filling: map[[2]uint64]*deletedFill{}}
}

// Add records a File from the image; it is opened on first use.
func (o *OpenFiles) Add(f *pb.File) error {
	if f.Id == 0 || o.recs[f.Id] != nil {
		return fmt.Errorf("image damaged: file id %d defined twice or zero", f.Id)
	}
	if f.Kind == pb.File_SOCKET {
		if err := ValidateSocket(f); err != nil {
			return err
		}
	}
	if f.DeletedChunks && (!f.Deleted || f.DeletedSize < 0) {
		return fmt.Errorf("image damaged: file id %d has deleted file content but is no deleted file", f.Id)
	}
	o.recs[f.Id] = f
	o.last = f
	return nil
}

// Record returns the image record of a file id.
func (o *OpenFiles) Record(id uint32) (*pb.File, error) {
	rec := o.recs[id]
	if rec == nil {
		return nil, fmt.Errorf("image damaged: file id %d used before it is defined", id)
	}
	return rec, nil
}

// Get opens (once) and returns the file with id.
func (o *OpenFiles) Get(id uint32) (*os.File, *pb.File, error) {
	rec, err := o.Record(id)
	if err != nil {
		return nil, nil, err
	}
	if f := o.byID[id]; f != nil {
		return f, rec, nil
	}
	f, err := o.open(id, rec)
	if err != nil {
		return nil, nil, err
	}
	if err := takeDescriptionLocks(f, rec); err != nil {
		f.Close()
		return nil, nil, err
	}
	o.byID[id] = f
	return f, rec, nil
}

// open opens the file rec (id) describes in ckpt's process, by its kind.
func (o *OpenFiles) open(id uint32, rec *pb.File) (*os.File, error) {
	switch rec.Kind {
	case pb.File_EVENTFD, pb.File_TIMERFD, pb.File_SIGNALFD, pb.File_INOTIFY:
		return openAnon(rec)
	case pb.File_EPOLL:
		return nil, fmt.Errorf("epoll file %d cannot be opened outside its process", id)
	case pb.File_SHMEM:
		return openShmem(rec)
	case pb.File_MEMFD:
		obj, orec, err := o.Get(rec.ShmemId)
		if err != nil || orec.Kind != pb.File_SHMEM {
			return nil, fmt.Errorf("image damaged: memfd %d without its shared memory (%v)", id, err)
		}
		// A new description of the same memfd, with this one's flags and
		// offset.
		f, err := reopenProc(obj, rec, 0)
		if err != nil {
			return nil, fmt.Errorf("reopen %s: %w", rec.Path, err)
		}
		if rec.Pos != 0 {
			if _, err := unix.Seek(int(f.Fd()), rec.Pos, 0); err != nil {
				f.Close()
				return nil, err
			}
		}
		return f, nil
	case pb.File_TTY:
		if o.Terminal == nil {
			return nil, fmt.Errorf("the process used the terminal %s; run ckpt restart from a terminal, which takes its place", rec.Path)
		}
		f, err := reopenProc(o.Terminal, rec, unix.O_NOCTTY)
		if err != nil {
			return nil, fmt.Errorf("open terminal for %s: %w", rec.Path, err)
		}
		return f, nil
	case pb.File_FIFO:
		return o.openFifoEnd(rec)
	case pb.File_SOCKET:
		return o.openSocket(rec)
	case pb.File_PIPE:
		return o.openPipeEnd(rec)
	}
	if rec.Deleted {
		return o.openDeleted(rec)
	}
	flags := reopenFlags(rec)
	if rec.Kind == pb.File_DIRECTORY {
		flags |= unix.O_DIRECTORY
	}
	f, err := os.OpenFile(o.path(rec.Path), flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reopen %s: %w (the file must exist at restart as it was at checkpoint)", rec.Path, err)
	}
	if rec.Kind == pb.File_REGULAR || rec.Kind == pb.File_DIRECTORY {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size < rec.Pos {
			f.Close()
			return nil, fmt.Errorf("reopen %s: file is now %d bytes, but the process had read to offset %d; restore the file", rec.Path, st.Size, rec.Pos)
		}
		if rec.Pos != 0 {
			if _, err := unix.Seek(int(f.Fd()), rec.Pos, 0); err != nil {
				f.Close()
				return nil, fmt.Errorf("seek %s to %d: %w", rec.Path, rec.Pos, err)
			}
		}
	}
	return f, nil
}

// reopenFlags are the flags to open rec's file again with: without those
// that only creating it means, and without O_CLOEXEC (a per-descriptor
// flag, set on ckpt's copies anyway). A file made by O_TMPFILE shows that
// flag (with O_DIRECTORY) among its own, linked since or not.
func reopenFlags(rec *pb.File) int {
	flags := int(rec.Flags) &^ (unix.O_CREAT | unix.O_TRUNC | unix.O_EXCL | unix.O_NOCTTY | unix.O_CLOEXEC)
	if flags&unix.O_TMPFILE == unix.O_TMPFILE {
		flags &^= unix.O_TMPFILE
	}
	return flags
}

// reopenProc opens a new description of the file ckpt's f holds, through
// /proc/self/fd, with rec's flags and extra. O_NOFOLLOW is left out: that
// link is a symbolic link to follow, and a description opened with
// O_NOFOLLOW (Python's tempfile and multiprocessing open theirs so) would
// fail with ELOOP. Its loss shows only in F_GETFL.
func reopenProc(f *os.File, rec *pb.File, extra int) (*os.File, error) {
	return os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), reopenFlags(rec)&^unix.O_NOFOLLOW|extra|unix.O_CLOEXEC, 0)
}

// Close closes every file ckpt opened.
func (o *OpenFiles) Close() {
	for _, f := range o.byID {
		f.Close()
	}
	for _, p := range o.pipes {
		p.r.Close()
		p.w.Close()
	}
	for _, f := range o.fifos {
		f.Close()
	}
	for _, f := range o.sockets {
		f.Close()
	}
	for _, f := range o.deleted {
		f.Close()
	}
	for _, fill := range o.filling {
		if fill.f != nil {
			fill.f.Close()
		}
	}
}

// FdPuller copies descriptors from ckpt into a stub.
type FdPuller struct {
	t *Target
	// pidfd is the stub's pidfd for ckpt's process, or, if send is set, its
	// end of a unix socket that ckpt sends descriptors through.
	pidfd uint64
	// send, if set, is ckpt's end of that socket. Stubs in a user namespace
	// of their own may not pidfd_getfd from ckpt (ptrace access to a
	// process of the parent user namespace), so ckpt pushes descriptors
	// with SCM_RIGHTS instead.
	send *os.File
}

// highFd bounds descriptor numbers in an image.
const highFd = 1 << 20

// NewFdPuller gives the stub its own descriptor for ckpt's pidfd, copied
// from the one it holds at from and numbered at least minFd, out of the way
// of the descriptors to restore. The pidfd is inherited rather than opened
// by PID because ckpt has no PID inside a container's PID namespace.
// With send set, from is the stub's end of ckpt's socket instead.
func NewFdPuller(t *Target, from, minFd uint64, send *os.File) (*FdPuller, error) {
	hi, err := t.Syscall(unix.SYS_FCNTL, from, unix.F_DUPFD_CLOEXEC, minFd)
	if err != nil {
		return nil, fmt.Errorf("move stub pidfd: %w", err)
	}
	return &FdPuller{t: t, pidfd: hi, send: send}, nil
}

// Fd is the stub's descriptor of ckpt's pidfd.
func (p *FdPuller) Fd() uint64 { return p.pidfd }

// Pull copies ckpt's descriptor fd into the stub and returns its number
// there (close-on-exec set).
func (p *FdPuller) Pull(f *os.File) (uint64, error) {
	if p.send != nil {
		return p.receive(f)
	}
	n, err := p.t.Syscall(unix.SYS_PIDFD_GETFD, p.pidfd, uint64(f.Fd()), 0)
	if err != nil {
		return 0, fmt.Errorf("pidfd_getfd %s: %w", f.Name(), err)
	}
	return n, nil
}

// PullAll copies ckpt's descriptors fs into the stub, as Pull does each,
// and returns their numbers there in order: with one batch of pidfd_getfd
// calls, one ptrace stop for the lot, where a receiving puller (see
// receive) needs one call each. On failure none of them is left open.
func (p *FdPuller) PullAll(fs []*os.File) ([]uint64, error) {
	var got []uint64
	var err error
	if p.send != nil {
		for _, f := range fs {
			var n uint64
			if n, err = p.receive(f); err != nil {
				break
			}
			got = append(got, n)
		}
	} else {
		calls := make([]Call, len(fs))
		for i, f := range fs {
			calls[i] = Call{Nr: unix.SYS_PIDFD_GETFD, Args: []uint64{p.pidfd, uint64(f.Fd()), 0},
				Err: func(err error) error { return fmt.Errorf("pidfd_getfd %s: %w", f.Name(), err) }}
		}
		got, err = p.t.Batch(calls)
	}
	if err != nil {
		p.CloseAll(got)
		return nil, err
	}
	return got, nil
}

// CloseAll closes the stub's descriptors fds, in one batch.
func (p *FdPuller) CloseAll(fds []uint64) error {
	calls := make([]Call, len(fds))
	for i, fd := range fds {
		calls[i] = Call{Nr: unix.SYS_CLOSE, Args: []uint64{fd},
			Err: func(err error) error { return fmt.Errorf("close descriptor %d in the stub: %w", fd, err) }}
	}
	_, err := p.t.Batch(calls)
	return err
}

// receive sends f over ckpt's socket and has the stub take it with an
// injected recvmsg. Its buffers are at the end of the scratch area, out of
// the way of arguments callers put at its start.
func (p *FdPuller) receive(f *os.File) (uint64, error) {
	if err := unix.Sendmsg(int(p.send.Fd()), []byte{0}, unix.UnixRights(int(f.Fd())), nil, 0); err != nil {
		return 0, fmt.Errorf("send %s to the stub: %w", f.Name(), err)
	}
	const size = 104 // msghdr 56, iovec 16, data 8, cmsg 24
	if p.t.ScratchLen < 128 {
		return 0, fmt.Errorf("scratch area of %d too small to receive a descriptor", p.t.Pid)
	}
	base := p.t.Scratch + p.t.ScratchLen - 128
	b := make([]byte, size)
	le := binary.LittleEndian
	le.PutUint64(b[16:], base+56) // msg_iov
	le.PutUint64(b[24:], 1)       // msg_iovlen
	le.PutUint64(b[32:], base+80) // msg_control
	le.PutUint64(b[40:], 24)      // msg_controllen
	le.PutUint64(b[56:], base+72) // iov_base
	le.PutUint64(b[64:], 1)       // iov_len
	if err := p.t.WriteMem(base, b); err != nil {
		return 0, err
	}
	if _, err := p.t.Syscall(unix.SYS_RECVMSG, p.pidfd, base, unix.MSG_CMSG_CLOEXEC); err != nil {
		return 0, fmt.Errorf("receive %s in the stub: %w", f.Name(), err)
	}
	if err := p.t.ReadMem(base+80, b[:24]); err != nil {
		return 0, err
	}
	if le.Uint64(b) != 20 || le.Uint32(b[8:]) != unix.SOL_SOCKET || le.Uint32(b[12:]) != unix.SCM_RIGHTS {
		return 0, fmt.Errorf("receive %s in the stub: no descriptor arrived", f.Name())
	}
	return uint64(le.Uint32(b[16:])), nil
}

// Close closes the stub's pidfd.
func (p *FdPuller) Close() error {
	_, err := p.t.Syscall(unix.SYS_CLOSE, p.pidfd)
	return err
}

// RestoreFiles rebuilds the descriptor table of the stub. Descriptors of
// one open file description are placed once and duplicated; epoll items are
// registered last, when every descriptor they name exists.
//
// The stub's table holds only the puller's pidfd at this point (see
// restart's preparePuller). Every description is first opened in the stub
// wherever the kernel puts it — pulled from ckpt with one batch of
// pidfd_getfd calls, or one call at a time where a call's result is needed
// (an epoll instance is created; a puller that receives over a socket, in
// an unprivileged restart, takes each with recvmsg) — then a second batch
// moves them to their own numbers (planFdMoves) and duplicates them: two
// ptrace stops per scratch-full of calls instead of three per descriptor.
func RestoreFiles(t *Target, pl *FdPuller, files *OpenFiles, p *pb.Process) error {
	files.netPid = t.Pid
	type first struct {
		fd  *pb.Fd
		tmp uint64
	}
	var firsts []first
	var batched []int // indexes in firsts of the batched pulls, in order
	var dups []*pb.Fd
	var epolls []uint32
	placed := map[uint32]int32{} // file id -> first descriptor holding it
	var pulls []Call
	for _, fd := range p.Fds {
		if fd.Fd < 0 || fd.Fd >= highFd {
			return fmt.Errorf("image damaged: descriptor %d", fd.Fd)
		}
		if _, ok := placed[fd.FileId]; ok {
			dups = append(dups, fd)
			continue
		}
		placed[fd.FileId] = fd.Fd
		rec, err := files.Record(fd.FileId)
		if err != nil {
			return fmt.Errorf("fd %d: %w", fd.Fd, err)
		}
		what := fmt.Sprintf("fd %d (%s)", fd.Fd, rec.Path)
		var tmp uint64
		switch {
		case rec.Kind == pb.File_EPOLL:
			tmp, err = createEpoll(t)
			epolls = append(epolls, fd.FileId)
		default:
			var f *os.File
			if f, _, err = files.Get(fd.FileId); err != nil {
				break
			}
			if pl.send != nil {
				tmp, err = pl.Pull(f)
				break
			}
			batched = append(batched, len(firsts))
			pulls = append(pulls, Call{Nr: unix.SYS_PIDFD_GETFD, Args: []uint64{pl.pidfd, uint64(f.Fd()), 0},
				Err: func(err error) error { return fmt.Errorf("%s: pidfd_getfd: %w", what, err) }})
		}
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		firsts = append(firsts, first{fd, tmp})
	}
	tmps, err := t.Batch(pulls)
	if err != nil {
		return err
	}
	for i, j := range batched {
		firsts[j].tmp = tmps[i]
	}
	moves := make([]fdMove, len(firsts))
	spare := pl.pidfd
	for i, f := range firsts {
		flags := uint64(0)
		if f.fd.Cloexec {
			flags = unix.O_CLOEXEC
		}
		moves[i] = fdMove{from: f.tmp, to: uint64(f.fd.Fd), flags: flags}
		spare = max(spare, f.tmp)
	}
	for _, fd := range p.Fds {
		spare = max(spare, uint64(fd.Fd))
	}
	var calls []Call
	for _, op := range planFdMoves(moves, spare+1) {
		switch {
		case op.close:
			calls = append(calls, Call{Nr: unix.SYS_CLOSE, Args: []uint64{op.from},
				Err: func(err error) error { return fmt.Errorf("close pulled descriptor %d: %w", op.from, err) }})
		case op.from == op.to:
			calls = append(calls, Call{Nr: unix.SYS_FCNTL, Args: []uint64{op.from, unix.F_SETFD, op.flags / unix.O_CLOEXEC},
				Err: func(err error) error { return fmt.Errorf("fd %d: %w", op.to, err) }})
		default:
			calls = append(calls, Call{Nr: unix.SYS_DUP3, Args: []uint64{op.from, op.to, op.flags},
				Err: func(err error) error { return fmt.Errorf("fd %d: dup3 of %d: %w", op.to, op.from, err) }})
		}
	}
	for _, fd := range dups {
		flags := uint64(0)
		if fd.Cloexec {
			flags = unix.O_CLOEXEC
		}
		prev := placed[fd.FileId]
		calls = append(calls, Call{Nr: unix.SYS_DUP3, Args: []uint64{uint64(prev), uint64(fd.Fd), flags},
			Err: func(err error) error { return fmt.Errorf("fd %d: dup3 of fd %d: %w", fd.Fd, prev, err) }})
	}
	// What is left of the first copies: numbers no descriptor of the image
	// has (the dups above may have landed on others of them).
	inImage := map[uint64]bool{}
	for _, fd := range p.Fds {
		inImage[uint64(fd.Fd)] = true
	}
	for _, m := range moves {
		if !inImage[m.from] {
			from := m.from
			calls = append(calls, Call{Nr: unix.SYS_CLOSE, Args: []uint64{from},
				Err: func(err error) error { return fmt.Errorf("close pulled descriptor %d: %w", from, err) }})
		}
	}
	if _, err := t.Batch(calls); err != nil {
		return err
	}
	for _, id := range epolls {
		rec, _ := files.Record(id)
		if err := restoreEpollItems(t, placed[id], rec); err != nil {
			return err
		}
	}
	// Last: closing any descriptor of a file drops the process's POSIX
	// locks on it, and the batch above closed the pulled copies.
	return restorePosixLocks(t, p, files)
}

// fdMove is a descriptor to move from one number to another in the stub,
// with the close-on-exec flag (0 or O_CLOEXEC) it gets there.
type fdMove struct{ from, to, flags uint64 }

// fdOp is one step of a planned move: dup3(from, to, flags), or when
// from == to setting the flag in place, or with close set close(from).
type fdOp struct {
	from, to, flags uint64
	close           bool
}

// planFdMoves orders moves that all happen "at once": no dup3 may land on
// a number that is still the source of a move not yet done. Chains are
// done from their free end; a cycle (3 -> 4 -> 3) is broken by moving one
// source to spare first (a number no move touches), which is closed when
// it has served. The sources are not closed, except spare: the caller
// closes those that no descriptor of the image reuses.
func planFdMoves(moves []fdMove, spare uint64) []fdOp {
	var ops []fdOp
	pending := map[uint64]int{} // source -> moves still to read it
	left := make([]fdMove, 0, len(moves))
	for _, m := range moves {
		if m.from == m.to {
			ops = append(ops, fdOp{from: m.from, to: m.to, flags: m.flags})
			continue
		}
		pending[m.from]++
		left = append(left, m)
	}
	for len(left) > 0 {
		progress := false
		rest := left[:0]
		for _, m := range left {
			if pending[m.to] > 0 {
				rest = append(rest, m)
				continue
			}
			ops = append(ops, fdOp{from: m.from, to: m.to, flags: m.flags})
			pending[m.from]--
			if m.from == spare {
				ops = append(ops, fdOp{from: spare, close: true})
			}
			progress = true
		}
		left = rest
		if !progress {
			// Every move left waits for another: a cycle. Park one source
			// (never the parked one: that move is always free to run by
			// the time the cycle it broke is undone).
			m := &left[0]
			ops = append(ops, fdOp{from: m.from, to: spare, flags: unix.O_CLOEXEC})
			pending[m.from]--
			pending[spare]++
			m.from = spare
		}
	}
	return ops
}
