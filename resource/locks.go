package resource

import (
	"fmt"
	"math"
	"os"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// File locks. fdinfo lists, for each descriptor, the locks held through
// its open file description: flock(2) and OFD locks, which belong to the
// description, and the POSIX (fcntl F_SETLK) locks of the process taken
// through it, which belong to the process's descriptor table and go when
// it closes any descriptor of the file. A restart takes each lock again
// before the processes run: description locks in ckpt's own copy of the
// description (which it hands to the processes, so the lock comes with
// it), POSIX locks by an injected fcntl in their process. A lock another
// process took meanwhile makes the restart fail, naming the file, rather
// than letting the process run on believing it holds it.

// addLocks records in f the locks fdinfo showed for its descriptor fd of
// pid, the description's own first, then the POSIX locks of the process,
// which DumpFiles moves to the process's record.
func addLocks(pid, fd int, f *pb.File, locks []proc.FdLock) error {
	if len(locks) == 0 {
		return nil
	}
	own, posix, err := fileLocks(pid, fd, f, locks)
	f.Locks = append(own, posix...)
	return err
}

// fileLocks turns the locks fdinfo showed for descriptor fd of pid (file
// f) into image records: the description's own and the process's POSIX
// ones apart. Leases and delegations are refused.
func fileLocks(pid, fd int, f *pb.File, locks []proc.FdLock) (own, posix []*pb.FileLock, err error) {
	for _, l := range locks {
		rec := &pb.FileLock{Write: l.Write, Start: uint64(l.Start)}
		if l.End >= 0 {
			rec.Len = uint64(l.End-l.Start) + 1
		}
		switch l.Kind {
		case "POSIX":
			rec.Kind, rec.Fd = pb.FileLock_POSIX, int32(fd)
			posix = append(posix, rec)
			continue
		case "FLOCK":
			rec.Kind, rec.Start, rec.Len = pb.FileLock_FLOCK, 0, 0
		case "OFDLCK":
			rec.Kind = pb.FileLock_OFD
		default: // LEASE, DELEG, ACCESS (a mandatory lock's check)
			return nil, nil, fmt.Errorf("fd %d of process %d (%s) holds a %s: %w yet", fd, pid, f.Path, lockWord(l.Kind), ErrUnsupported)
		}
		own = append(own, rec)
	}
	if len(own)+len(posix) > 0 && f.Kind != pb.File_REGULAR && f.Kind != pb.File_DIRECTORY {
		return nil, nil, fmt.Errorf("fd %d of process %d (%s) holds a file lock on a %v: %w yet", fd, pid, f.Path, f.Kind, ErrUnsupported)
	}
	return own, posix, nil
}

func lockWord(kind string) string {
	switch kind {
	case "LEASE":
		return "file lease (F_SETLEASE)"
	case "DELEG":
		return "NFS delegation"
	}
	return kind + " lock"
}

// checkLock refuses a lock record a damaged image made up.
func checkLock(l *pb.FileLock) error {
	if _, ok := pb.FileLock_Kind_name[int32(l.Kind)]; !ok {
		return fmt.Errorf("image damaged: file lock of kind %d", l.Kind)
	}
	if l.Start > math.MaxInt64 || l.Len > math.MaxInt64-l.Start {
		return fmt.Errorf("image damaged: file lock on bytes %d+%d", l.Start, l.Len)
	}
	return nil
}

// flockOf is the struct flock of l.
func flockOf(l *pb.FileLock) unix.Flock_t {
	typ := int16(unix.F_RDLCK)
	if l.Write {
		typ = unix.F_WRLCK
	}
	return unix.Flock_t{Type: typ, Whence: unix.SEEK_SET, Start: int64(l.Start), Len: int64(l.Len)}
}

// DescribeLock names l for messages and inspect: "POSIX write lock on
// bytes 10-29", "flock read lock".
func DescribeLock(l *pb.FileLock) string {
	kind := map[pb.FileLock_Kind]string{pb.FileLock_POSIX: "POSIX", pb.FileLock_FLOCK: "flock", pb.FileLock_OFD: "OFD"}[l.Kind]
	mode := "read"
	if l.Write {
		mode = "write"
	}
	switch {
	case l.Kind == pb.FileLock_FLOCK:
		return fmt.Sprintf("%s %s lock", kind, mode)
	case l.Len == 0:
		return fmt.Sprintf("%s %s lock on bytes %d to the end", kind, mode, l.Start)
	}
	return fmt.Sprintf("%s %s lock on bytes %d-%d", kind, mode, l.Start, l.Start+l.Len-1)
}

// lockAdvice ends the error of a lock that could not be taken back.
const lockAdvice = "another process holds a conflicting lock (the checkpointed process itself, if it still runs: stop it, or checkpoint with --kill)"

// takeDescriptionLocks takes rec's flock and OFD locks again on f, ckpt's
// copy of the description the processes get.
func takeDescriptionLocks(f *os.File, rec *pb.File) error {
	for _, l := range rec.Locks {
		if err := checkLock(l); err != nil {
			return err
		}
		var err error
		switch l.Kind {
		case pb.FileLock_FLOCK:
			how := unix.LOCK_SH
			if l.Write {
				how = unix.LOCK_EX
			}
			err = unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		case pb.FileLock_OFD:
			fl := flockOf(l)
			err = unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &fl)
		default:
			return fmt.Errorf("image damaged: %s on the description of %s", DescribeLock(l), rec.Path)
		}
		if err != nil {
			return fmt.Errorf("take back the %s on %s: %w; %s", DescribeLock(l), rec.Path, err, lockAdvice)
		}
	}
	return nil
}

// restorePosixLocks takes p's POSIX locks again, in its stub (whose
// descriptor table is rebuilt): one batch of fcntl calls.
func restorePosixLocks(t *Target, p *pb.Process, files *OpenFiles) error {
	if len(p.PosixLocks) == 0 {
		return nil
	}
	paths := map[int32]string{}
	for _, fd := range p.Fds {
		if rec, err := files.Record(fd.FileId); err == nil {
			paths[fd.Fd] = rec.Path
		}
	}
	d := batchData{t: t}
	var calls []Call
	run := func() error {
		_, err := t.Batch(calls)
		calls, d = calls[:0], batchData{t: t}
		return err
	}
	for _, l := range p.PosixLocks {
		if len(calls) == 32 { // 1 KiB of flock structs: room in any scratch area
			if err := run(); err != nil {
				return err
			}
		}
		if err := checkLock(l); err != nil {
			return err
		}
		path, ok := paths[l.Fd]
		if l.Kind != pb.FileLock_POSIX || !ok {
			return fmt.Errorf("image damaged: %s of process %d on fd %d, which it does not have", DescribeLock(l), p.Pid, l.Fd)
		}
		fl := flockOf(l)
		addr, err := d.put(bytesOf(&fl))
		if err != nil {
			return err
		}
		calls = append(calls, Call{Nr: unix.SYS_FCNTL, Args: []uint64{uint64(l.Fd), unix.F_SETLK, addr},
			Err: func(err error) error {
				return fmt.Errorf("take back the %s on %s (fd %d): %w; %s", DescribeLock(l), path, l.Fd, err, lockAdvice)
			}})
	}
	return run()
}
