package resource

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// Pipes. Each end is its own open file description (File record, kind
// PIPE) with the pipe's inode number; the unread bytes travel once, on the
// first end written. ckpt reads them without consuming them: it opens the
// pipe again through /proc/PID/fd/N (which gives a fresh read end even for
// a write end) and tee(2)s its content into a pipe of its own. At restart
// the pipe is created in ckpt's process, refilled, and its ends handed to
// the processes like any file; an end no restored process holds is closed.

// pipeIno parses "pipe:[1234]".
func pipeIno(target string) (uint64, bool) {
	s, ok := strings.CutPrefix(target, "pipe:[")
	if !ok || !strings.HasSuffix(s, "]") {
		return 0, false
	}
	ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
	return ino, err == nil
}

// dumpPipeData reads the unread bytes and capacity of the pipe behind
// /proc/PID/fd/FD without consuming them.
func dumpPipeData(pid, fd int) ([]byte, uint32, error) {
	src, err := os.OpenFile(proc.Path(pid, "fd/"+strconv.Itoa(fd)), os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("open pipe fd %d of %d: %w", fd, pid, err)
	}
	defer src.Close()
	size, err := unix.FcntlInt(src.Fd(), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("pipe size: %w", err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, 0, err
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, size); err != nil {
		return nil, 0, fmt.Errorf("size a pipe to %d bytes for the copy: %w", size, err)
	}
	n, err := unix.Tee(int(src.Fd()), p[1], size, unix.SPLICE_F_NONBLOCK)
	if err == unix.EAGAIN {
		return nil, uint32(size), nil // empty
	}
	if err != nil {
		return nil, 0, fmt.Errorf("copy pipe data: %w", err)
	}
	data := make([]byte, n)
	for got := 0; got < int(n); {
		k, err := unix.Read(p[0], data[got:])
		if err != nil {
			return nil, 0, fmt.Errorf("read pipe copy: %w", err)
		}
		got += k
	}
	return data, uint32(size), nil
}

// openPipe is a pipe re-created in ckpt's process.
type openPipe struct {
	r, w *os.File
}

// InheritStdio gives the root process, for each of its descriptors 0, 1
// and 2 that was one end of a pipe whose other end only processes outside
// the image held (a member of a shell pipeline: `prog | cat`), ckpt
// restart's own descriptor of that number instead (stdio[n]), as a
// program started from that command line would get it. A pipe made again
// without its outside end kills a writer with SIGPIPE at its next write
// and gives a reader end of file. Every description of that pipe end, in
// any process, becomes that descriptor. The pipe's unread bytes stay with
// the old pipe (its outside reader may still read them). Where stdio[n]
// is nil (a detached restart, whose caller would wait for a descriptor
// the restored process keeps open; standard input that the image comes
// from) or of no use that way, the pipe comes back alone, and warn says
// so; warn also says what was replaced.
func (o *OpenFiles) InheritStdio(root *pb.Process, stdio [3]*os.File, warn func(string)) {
	for _, fd := range root.Fds {
		if fd.Fd < 0 || fd.Fd > 2 {
			continue
		}
		rec := o.recs[fd.FileId]
		if rec != nil && rec.Kind == pb.File_SOCKET && rec.Socket != nil && rec.Socket.External {
			o.inheritSocket(root, fd.Fd, rec, stdio[fd.Fd], warn)
			continue
		}
		if rec == nil || rec.Kind != pb.File_PIPE || o.inherit[rec.PipeIno] != nil {
			continue
		}
		mode := rec.Flags & unix.O_ACCMODE
		half, unread := true, 0
		for _, r := range o.recs {
			if r.Kind == pb.File_PIPE && r.PipeIno == rec.PipeIno {
				half = half && r.Flags&unix.O_ACCMODE == mode
				unread = max(unread, len(r.PipeData))
			}
		}
		if !half {
			continue
		}
		what := stdioNames[fd.Fd]
		if !openFor(stdio[fd.Fd], mode == unix.O_RDONLY, mode == unix.O_WRONLY) {
			end := "its next write fails (SIGPIPE)"
			if mode == unix.O_RDONLY {
				end = "it reads end of file"
			}
			warn(fmt.Sprintf("fd %d of process %d (%s) was a pipe to processes outside the image; it comes back without them, and %s; a restart without --detach gives it the restart's own %s instead", fd.Fd, root.Pid, root.Comm, end, what))
			continue
		}
		if o.inherit == nil {
			o.inherit = map[uint64]*os.File{}
		}
		o.inherit[rec.PipeIno] = stdio[fd.Fd]
		msg := fmt.Sprintf("fd %d of process %d (%s) was a pipe to processes outside the image; it is now this restart's %s", fd.Fd, root.Pid, root.Comm, what)
		if unread > 0 {
			msg += fmt.Sprintf(" (the %d bytes that were waiting in the pipe stay with the old one)", unread)
		}
		warn(msg)
	}
}

var stdioNames = [3]string{"standard input", "standard output", "standard error"}

// openFor says whether f, one of ckpt's own descriptors, is open (not
// nil, not closed) and open for reading if read, for writing if write.
func openFor(f *os.File, read, write bool) bool {
	if f == nil {
		return false
	}
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	mode := fl & unix.O_ACCMODE
	return err == nil && !(read && mode == unix.O_WRONLY) && !(write && mode == unix.O_RDONLY)
}

// dupOwn returns a copy of f, one of ckpt's own descriptors that
// InheritStdio gives a restored process (what names the object it stands
// for), its status flags left as they are: they are shared with whoever
// else holds it.
func dupOwn(f *os.File, what string) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("copy ckpt's descriptor for %s: %w", what, err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// inheritSocket is InheritStdio for an external socket (pb.Socket), the
// root's descriptor n: it becomes f if f is open for that use (reading for
// standard input, writing for the others); otherwise the socket comes
// back with its other end closed.
func (o *OpenFiles) inheritSocket(root *pb.Process, n int32, rec *pb.File, f *os.File, warn func(string)) {
	s := rec.Socket
	if o.inheritSock[s.Ino] != nil {
		return
	}
	what := stdioNames[n]
	waiting := 0
	for _, m := range s.Queue {
		waiting += len(m)
	}
	if !openFor(f, n == 0, n > 0) {
		warn(fmt.Sprintf("fd %d of process %d (%s) was a socket connected to a process outside the image; it comes back with its other end closed (its next write fails, reads see the %d bytes that were waiting, then end of file); a restart without --detach gives it the restart's own %s instead", n, root.Pid, root.Comm, waiting, what))
		return
	}
	if o.inheritSock == nil {
		o.inheritSock = map[uint64]*os.File{}
	}
	o.inheritSock[s.Ino] = f
	msg := fmt.Sprintf("fd %d of process %d (%s) was a socket connected to a process outside the image; it is now this restart's %s", n, root.Pid, root.Comm, what)
	if waiting > 0 {
		msg += fmt.Sprintf(" (the %d bytes that were waiting in it are dropped)", waiting)
	}
	warn(msg)
}

// openPipeEnd returns ckpt's copy of the end rec describes, creating and
// refilling the pipe on first use. data holds the pipe's unread bytes (from
// whichever end record carried them).
func (o *OpenFiles) openPipeEnd(rec *pb.File) (*os.File, error) {
	if f := o.inherit[rec.PipeIno]; f != nil {
		return dupOwn(f, fmt.Sprintf("pipe:[%d]", rec.PipeIno))
	}
	pp := o.pipes[rec.PipeIno]
	if pp == nil {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return nil, fmt.Errorf("create pipe: %w", err)
		}
		pp = &openPipe{r: os.NewFile(uintptr(p[0]), "pipe"), w: os.NewFile(uintptr(p[1]), "pipe")}
		o.pipes[rec.PipeIno] = pp
		var data []byte
		var size uint32
		for _, r := range o.recs {
			if r.Kind == pb.File_PIPE && r.PipeIno == rec.PipeIno && (len(r.PipeData) > 0 || r.PipeSize > 0) {
				data, size = r.PipeData, r.PipeSize
			}
		}
		if size > 0 {
			if _, err := unix.FcntlInt(pp.w.Fd(), unix.F_SETPIPE_SZ, int(size)); err != nil {
				return nil, fmt.Errorf("size pipe to %d bytes: %w", size, err)
			}
		}
		if len(data) > 0 {
			if _, err := pp.w.Write(data); err != nil {
				return nil, fmt.Errorf("refill pipe with %d bytes: %w", len(data), err)
			}
		}
	}
	f := pp.r
	if rec.Flags&unix.O_ACCMODE == unix.O_WRONLY {
		f = pp.w
	}
	// Status flags (O_NONBLOCK) belong to each end's description.
	if _, err := unix.FcntlInt(f.Fd(), unix.F_SETFL, int(rec.Flags&unix.O_NONBLOCK)); err != nil {
		return nil, err
	}
	return f, nil
}

// openFifoEnd reopens one end of a FIFO by its path. A read-write keeper
// opened first holds the FIFO open (so that neither end blocks or sees the
// other missing) and refills it with the saved bytes.
func (o *OpenFiles) openFifoEnd(rec *pb.File) (*os.File, error) {
	if o.fifos[rec.Path] == nil {
		var st unix.Stat_t
		if err := unix.Stat(o.path(rec.Path), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
			return nil, fmt.Errorf("FIFO %s must exist at restart (%v)", rec.Path, err)
		}
		k, err := os.OpenFile(o.path(rec.Path), os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open FIFO %s: %w", rec.Path, err)
		}
		o.fifos[rec.Path] = k
		for _, r := range o.recs {
			if r.Kind == pb.File_FIFO && r.Path == rec.Path && len(r.PipeData) > 0 {
				if r.PipeSize > 0 {
					unix.FcntlInt(k.Fd(), unix.F_SETPIPE_SZ, int(r.PipeSize))
				}
				if _, err := k.Write(r.PipeData); err != nil {
					return nil, fmt.Errorf("refill FIFO %s: %w", rec.Path, err)
				}
			}
		}
	}
	f, err := os.OpenFile(o.path(rec.Path), int(rec.Flags&(unix.O_ACCMODE|unix.O_NONBLOCK))|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reopen FIFO %s: %w", rec.Path, err)
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_SETFL, int(rec.Flags&unix.O_NONBLOCK)); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
