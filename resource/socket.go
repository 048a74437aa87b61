package resource

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// Unix sockets: unconnected ones, the two ends of a connected pair
// (socketpair(2), or a connection accepted on a listener) held by the
// checkpointed processes, with the data waiting in each end, and sockets
// bound to a name (listeners, datagram sockets). A connection whose other
// end a process outside holds, or that is not accepted yet, is refused.
// IPv4 and IPv6 sockets are inet.go's and tcp.go's; they share the
// descriptor copy and the options here.
//
// ckpt takes a copy of the target's descriptor with pidfd_getfd (a socket
// cannot be reopened through /proc). The kernel's sock_diag tells the
// other end's inode and what was shut down; the waiting data is read
// without being consumed, by peeking at increasing offsets (SO_PEEK_OFF,
// put back as it was). At restart ckpt makes the pair, sends each end's
// data from the other end so that it waits where it did, shuts down what
// was, and hands the ends to the processes like any file; an end no
// restored process holds is closed after its peer's data is in.

// sockIno parses "socket:[1234]".
func sockIno(target string) (uint64, bool) {
	s, ok := strings.CutPrefix(target, "socket:[")
	if !ok || !strings.HasSuffix(s, "]") {
		return 0, false
	}
	ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
	return ino, err == nil
}

// sockFamilies names socket families for errors, with their article.
var sockFamilies = map[int]string{
	unix.AF_INET: "an IPv4", unix.AF_INET6: "an IPv6", unix.AF_NETLINK: "a netlink",
	unix.AF_PACKET: "a packet", unix.AF_VSOCK: "a vsock", unix.AF_ALG: "a crypto API",
}

var sockTypes = map[int]string{unix.SOCK_STREAM: "stream", unix.SOCK_DGRAM: "datagram", unix.SOCK_SEQPACKET: "seqpacket"}

// grabSocket returns ckpt's own descriptor of fd of pid (pidfd_getfd).
func grabSocket(pid, fd int) (int, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd of %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	sfd, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return -1, fmt.Errorf("take a copy of socket fd %d of %d: %w", fd, pid, err)
	}
	return sfd, nil
}

// unnamed tells a unix socket address that is no name: x/sys shows the
// address of an unbound socket as "@" (its empty path read as an abstract
// name).
func unnamed(sa unix.Sockaddr) bool {
	u, ok := sa.(*unix.SockaddrUnix)
	return ok && (u.Name == "" || u.Name == "@")
}

// describeSocket fills in f for the socket behind fd of pid (inode ino),
// or refuses it. The state that needs the whole set (the waiting data,
// the peer) is read by dumpSocket, once per open file description.
func describeSocket(pid, fd int, ino uint64, f *pb.File) error {
	sfd, err := grabSocket(pid, fd)
	if err != nil {
		return err
	}
	defer unix.Close(sfd)
	what := fmt.Sprintf("fd %d of process %d (socket:[%d])", fd, pid, ino)
	family, err := unix.GetsockoptInt(sfd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	typ, err := unix.GetsockoptInt(sfd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if family == unix.AF_INET || family == unix.AF_INET6 {
		f.Kind = pb.File_SOCKET
		f.Socket = &pb.Socket{Type: uint32(typ), Ino: ino}
		return describeInet(sfd, family, typ, f.Socket, what)
	}
	if family != unix.AF_UNIX {
		name := sockFamilies[family]
		if name == "" {
			name = "a family " + strconv.Itoa(family)
		}
		return fmt.Errorf("%s is %s socket: %w yet (unix, TCP and UDP sockets are)", what, name, ErrUnsupported)
	}
	if sockTypes[typ] == "" {
		return fmt.Errorf("%s is a unix socket of type %d: %w", what, typ, ErrUnsupported)
	}
	local, err := unix.Getsockname(sfd)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	// A connection accepted on a listener's name, or made to it, is a
	// pair like socketpair's once both ends are held; the names it shows
	// (getsockname of the accepted end, getpeername of the other) are not
	// kept: the pair is made again without them. A datagram socket
	// connected to a name is no pair: the named socket is not connected
	// back.
	peer, err := unix.Getpeername(sfd)
	if err != nil && err != unix.ENOTCONN {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err == nil && typ == unix.SOCK_DGRAM && !unnamed(peer) {
		return fmt.Errorf("%s is a datagram socket connected to %q: %w yet", what, peer.(*unix.SockaddrUnix).Name, ErrUnsupported)
	}
	name := local.(*unix.SockaddrUnix).Name
	if err != nil && !unnamed(local) && !strings.HasPrefix(name, "/") && !strings.HasPrefix(name, "@") {
		return fmt.Errorf("%s is bound to the relative path %q: %w (bind it to an absolute path)", what, name, ErrUnsupported)
	}
	f.Kind = pb.File_SOCKET
	f.Socket = &pb.Socket{Family: unix.AF_UNIX, Type: uint32(typ), Ino: ino, Connected: err == nil}
	return nil
}

// Attributes of unix_diag (linux/unix_diag.h).
const (
	udiagShowName    = 0x1
	udiagShowVfs     = 0x2
	udiagShowPeer    = 0x4
	udiagShowRqlen   = 0x10
	unixDiagName     = 0
	unixDiagVfs      = 1
	unixDiagPeer     = 2
	unixDiagRqlen    = 4
	unixDiagShutdown = 6
	unixDiagMsgLen   = 16 // struct unix_diag_msg
	unixListen       = 10 // TCP_LISTEN, as unix sockets use it
)

// unixDiag is what sock_diag tells of one unix socket.
type unixDiag struct {
	state    uint8
	peer     uint32 // inode of the other end, 0 when not connected
	shutdown uint8  // RCV_SHUTDOWN 1, SEND_SHUTDOWN 2
	name     []byte // sun_path, abstract names with their NUL
	fileIno  uint32 // the inode of a path's socket file
	// rqueue and wqueue: of a listener, the connections waiting to be
	// accepted and the backlog.
	rqueue, wqueue uint32
}

// errNoSocket: sock_diag knows no socket of that inode (it was closed).
var errNoSocket = errors.New("no such socket")

// queryUnixDiag asks sock_diag about unix socket ino, from the network
// namespace of pid (the one the socket was made in, as a rule).
func queryUnixDiag(pid int, ino uint64) (unixDiag, error) {
	var d unixDiag
	query := func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err != nil {
			return fmt.Errorf("sock_diag socket: %w", err)
		}
		c := &rtnl{fd: fd, buf: make([]byte, 8192)}
		defer c.close()
		tv := unix.Timeval{Sec: 10}
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		// struct unix_diag_req: family, protocol, pad, states, ino, show,
		// cookie (none: ~0, ~0).
		req := []byte{unix.AF_UNIX, 0, 0, 0}
		req = binary.NativeEndian.AppendUint32(req, ^uint32(0))
		req = binary.NativeEndian.AppendUint32(req, uint32(ino))
		req = binary.NativeEndian.AppendUint32(req, udiagShowName|udiagShowVfs|udiagShowPeer|udiagShowRqlen)
		req = binary.NativeEndian.AppendUint32(req, ^uint32(0))
		req = binary.NativeEndian.AppendUint32(req, ^uint32(0))
		seq, err := c.send(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_ACK, req)
		if err != nil {
			return fmt.Errorf("sock_diag request: %w", err)
		}
		return c.receive(seq, func(_ uint16, data []byte) error {
			if len(data) < unixDiagMsgLen {
				return fmt.Errorf("sock_diag answer of %d bytes", len(data))
			}
			attrs, err := parseAttrs(data[unixDiagMsgLen:])
			if err != nil {
				return err
			}
			d.state = data[2]
			for _, a := range attrs {
				switch a.typ {
				case unixDiagName:
					d.name = a.bytes()
				case unixDiagVfs:
					if d.fileIno, err = a.u32(); err != nil {
						return err
					}
				case unixDiagRqlen:
					if len(a.val) < 8 {
						return fmt.Errorf("sock_diag queue lengths of %d bytes", len(a.val))
					}
					d.rqueue, d.wqueue = binary.NativeEndian.Uint32(a.val), binary.NativeEndian.Uint32(a.val[4:])
				case unixDiagPeer:
					if d.peer, err = a.u32(); err != nil {
						return err
					}
				case unixDiagShutdown:
					if d.shutdown, err = a.u8(); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	var err error
	if sameNetns(pid) {
		err = query()
	} else {
		err = inNetns(pid, query)
	}
	if errors.Is(err, unix.ENOENT) {
		return d, errNoSocket
	}
	if err != nil {
		return d, fmt.Errorf("sock_diag of socket:[%d]: %w", ino, err)
	}
	return d, nil
}

// ProbeUnixDiag checks that sock_diag answers for unix sockets (ckpt
// check): it asks about one end of a pair of its own.
func ProbeUnixDiag() error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	var st unix.Stat_t
	if err := unix.Fstat(fds[0], &st); err != nil {
		return err
	}
	d, err := queryUnixDiag(os.Getpid(), st.Ino)
	if err != nil {
		return err
	}
	if d.peer == 0 {
		return errors.New("sock_diag does not name a pair's other end")
	}
	return nil
}

// sameNetns tells whether pid is in ckpt's network namespace.
func sameNetns(pid int) bool {
	var a, b unix.Stat_t
	return unix.Stat(proc.Path(pid, "ns/net"), &a) == nil && unix.Stat("/proc/thread-self/ns/net", &b) == nil &&
		a.Ino == b.Ino && a.Dev == b.Dev
}

// dumpSocket reads what a socket description holds beyond its kind: the
// other end, what is shut down, options, and the data waiting in it.
func dumpSocket(set *FileSet, pid, fd int, f *pb.File) error {
	s := f.Socket
	if s.Inet != nil {
		return dumpInet(set, pid, fd, f)
	}
	d, err := queryUnixDiag(pid, s.Ino)
	if err != nil {
		return fmt.Errorf("fd %d of process %d: %w", fd, pid, err)
	}
	s.PeerIno, s.Shutdown = uint64(d.peer), uint32(d.shutdown)
	what := fmt.Sprintf("fd %d of process %d (socket:[%d])", fd, pid, s.Ino)
	// A connection whose other end has no socket inode: closed (then the
	// kernel shut this end down both ways), or still waiting in a
	// listener's queue to be accepted.
	if s.Connected && s.PeerIno == 0 && s.Type != unix.SOCK_DGRAM && s.Shutdown != 3 {
		return fmt.Errorf("%s is connected to a listener that has not accepted the connection yet: %w (checkpoint once it has, with the listener's process)", what, ErrUnsupported)
	}
	if len(d.name) > 0 && !s.Connected {
		if err := dumpSocketName(pid, s, d, what); err != nil {
			return err
		}
	}
	sfd, err := grabSocket(pid, fd)
	if err != nil {
		return err
	}
	defer unix.Close(sfd)
	if err := readSockOpts(sfd, s, what); err != nil {
		return err
	}
	// (Linux 6.16 refuses SO_PASSCRED on other families.)
	pc, err := unix.GetsockoptInt(sfd, unix.SOL_SOCKET, unix.SO_PASSCRED)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	s.Passcred = pc != 0
	peekOff, err := unix.GetsockoptInt(sfd, unix.SOL_SOCKET, unix.SO_PEEK_OFF)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	s.PeekOff = int32(peekOff)
	if s.Listening {
		return nil // no data: connections, refused above
	}
	if s.Queue, err = peekQueue(sfd, int(s.Type), peekOff, s.Shutdown&1 != 0); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// dumpSocketName records a bound socket's name, the socket file's owner
// and mode, and a listener's backlog; a listener with connections waiting
// to be accepted is refused (they are connections).
func dumpSocketName(pid int, s *pb.Socket, d unixDiag, what string) error {
	if i := bytes.IndexByte(d.name, 0); i > 0 {
		d.name = d.name[:i] // a path, bound with its NUL
	}
	s.Name = d.name
	if d.state == unixListen {
		if d.rqueue > 0 {
			return fmt.Errorf("%s, listening on %s, has %d connections waiting to be accepted: %w (connections not accepted yet are not restored; checkpoint when the server has accepted them)",
				what, sockName(d.name), d.rqueue, ErrUnsupported)
		}
		s.Listening, s.Backlog = true, d.wqueue
	}
	if d.name[0] == 0 {
		return nil // abstract: no file
	}
	// The file as the process sees it (its root).
	var st unix.Stat_t
	err := unix.Lstat(proc.Path(pid, "root")+string(d.name), &st)
	if err != nil && err != unix.ENOENT {
		return fmt.Errorf("%s is bound to %s: %w", what, sockName(d.name), err)
	}
	if err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK || uint32(st.Ino) != d.fileIno {
		return fmt.Errorf("%s is bound to %s, which is no longer its socket file (removed or replaced): %w", what, sockName(d.name), ErrUnsupported)
	}
	s.NameMode, s.NameUid, s.NameGid = st.Mode&07777, st.Uid, st.Gid
	return nil
}

// sockName shows a unix socket name: a path, or "@" and an abstract name.
func sockName(name []byte) string {
	if len(name) > 0 && name[0] == 0 {
		return strconv.Quote("@" + string(name[1:]))
	}
	return strconv.Quote(string(name))
}

// readSockOpts reads the options of any socket that setSockOpts sets.
func readSockOpts(sfd int, s *pb.Socket, what string) error {
	for _, o := range []struct {
		opt int
		v   *uint32
	}{{unix.SO_SNDBUF, &s.Sndbuf}, {unix.SO_RCVBUF, &s.Rcvbuf}} {
		v, err := unix.GetsockoptInt(sfd, unix.SOL_SOCKET, o.opt)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		*o.v = uint32(v)
	}
	if v, err := unix.GetsockoptInt(sfd, unix.SOL_SOCKET, unix.SO_BUF_LOCK); err == nil {
		lock := uint32(v)
		s.BufLock = &lock
	}
	for _, o := range []struct {
		opt int
		v   *int64
	}{{unix.SO_RCVTIMEO, &s.RcvtimeoNs}, {unix.SO_SNDTIMEO, &s.SndtimeoNs}} {
		tv, err := unix.GetsockoptTimeval(sfd, unix.SOL_SOCKET, o.opt)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		*o.v = tv.Nano()
	}
	return nil
}

// peekQueue reads the data waiting in socket sfd without consuming it:
// one entry per datagram or packet, one for a stream. SO_PEEK_OFF makes
// each peek start where the last ended; it is put back to peekOff.
//
// Datagrams of no bytes: the kernel marks one peeked when a peek returns
// it, and a peek at an offset passes a marked one, so that the next peek
// moves on. The mark stays: a later checkpoint of the same running process
// (or a program that peeks with SO_PEEK_OFF itself) no longer sees one that
// is still waiting behind others. At the head it is seen: a peek without
// an offset returns the head, marked or not, so the head is peeked that
// way first. And a
// seqpacket socket shut down for reading answers 0 when nothing is left,
// as for a packet of no bytes: there 0 ends the queue (packets of no bytes
// at its end are lost). No interface counts a socket's datagrams.
func peekQueue(sfd, typ, peekOff int, rdShut bool) (queue [][]byte, err error) {
	defer func() {
		if perr := unix.SetsockoptInt(sfd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, peekOff); perr != nil && err == nil {
			err = fmt.Errorf("put SO_PEEK_OFF back to %d: %w", peekOff, perr)
		}
	}()
	buf := make([]byte, 64<<10)
	oob := make([]byte, 4096)
	if typ != unix.SOCK_STREAM && !(typ == unix.SOCK_SEQPACKET && rdShut) {
		if err := unix.SetsockoptInt(sfd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, -1); err != nil {
			return nil, fmt.Errorf("peek at its data (SO_PEEK_OFF): %w", err)
		}
		n, oobn, _, _, err := unix.Recvmsg(sfd, buf, oob, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err == nil && oobn > 0 {
			if err := refuseRights(oob[:oobn]); err != nil {
				return nil, err
			}
		}
		if err == nil && n == 0 {
			queue = append(queue, []byte{}) // now marked: the walk passes it
		}
	}
	if err := unix.SetsockoptInt(sfd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, 0); err != nil {
		return nil, fmt.Errorf("peek at its data (SO_PEEK_OFF): %w", err)
	}
	var stream []byte
	var msg []byte // the datagram being read, when it is larger than buf
	for {
		flags := unix.MSG_PEEK | unix.MSG_DONTWAIT
		if typ != unix.SOCK_STREAM {
			flags |= unix.MSG_TRUNC // the datagram's length, not what fit
		}
		n, oobn, _, _, err := unix.Recvmsg(sfd, buf, oob, flags)
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("peek at its data: %w", err)
		}
		if oobn > 0 {
			if err := refuseRights(oob[:oobn]); err != nil {
				return nil, err
			}
		}
		if n == 0 && typ == unix.SOCK_SEQPACKET && rdShut {
			break
		}
		if typ == unix.SOCK_STREAM {
			if n == 0 { // shut down, and nothing left
				break
			}
			stream = append(stream, buf[:n]...)
			if len(stream) > maxSockQueue {
				return nil, fmt.Errorf("more than %d MiB of data waiting", maxSockQueue>>20)
			}
			continue
		}
		// n is what is left of the datagram from the peek offset.
		got := min(n, len(buf))
		msg = append(msg, buf[:got]...)
		if got < n {
			continue // the offset moved by got: the rest comes next
		}
		queue = append(queue, msg)
		msg = nil
		if len(queue) > maxSockDgrams {
			return nil, fmt.Errorf("more than %d datagrams waiting", maxSockDgrams)
		}
	}
	if len(stream) > 0 {
		queue = [][]byte{stream}
	}
	return queue, nil
}

// Bounds of what ckpt keeps of a socket's waiting data: more than any
// buffer a socket is given by default.
const (
	maxSockQueue  = 256 << 20
	maxSockDgrams = 1 << 16
)

// refuseRights closes the descriptors a peek at waiting data brought in
// (descriptors in flight, SCM_RIGHTS) and refuses them.
func refuseRights(oob []byte) error {
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	n := 0
	for _, c := range cmsgs {
		fds, err := unix.ParseUnixRights(&c)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
		n += len(fds)
	}
	if n > 0 {
		return fmt.Errorf("%d descriptors in flight in its waiting data (SCM_RIGHTS): %w yet", n, ErrUnsupported)
	}
	return nil
}

// CheckSocketPeers refuses a pair of which only one end was checkpointed
// while a process outside holds the other (the pair cannot be made again
// across the checkpoint's border), except on the root's standard
// descriptors (stdio, by file id): those are marked external, for the
// restart to give the root its own (see OpenFiles.InheritStdio), as it
// does for pipes. sock_diag is asked from the network namespace of the
// process that holds the checkpointed end.
func (s *FileSet) CheckSocketPeers(stdio map[uint32]bool) error {
	held := map[uint64]bool{}
	for _, f := range s.Files {
		if f.Socket != nil {
			held[f.Socket.Ino] = true
		}
	}
	for id, f := range s.Files {
		if f.Socket == nil || f.Socket.PeerIno == 0 || held[f.Socket.PeerIno] {
			continue
		}
		owner := s.owners[uint32(id+1)]
		_, err := queryUnixDiag(owner[0], f.Socket.PeerIno)
		if errors.Is(err, errNoSocket) {
			continue // the other end was closed
		}
		if err != nil {
			return err
		}
		if stdio[uint32(id+1)] && f.Socket.Family == unix.AF_UNIX && f.Socket.Type != unix.SOCK_DGRAM {
			f.Socket.External = true
			continue
		}
		return fmt.Errorf("fd %d of process %d (socket:[%d]) is connected to socket:[%d], which a process outside the checkpoint holds: %w (checkpoint both, e.g. their common parent's tree)",
			owner[1], owner[0], f.Socket.Ino, f.Socket.PeerIno, ErrUnsupported)
	}
	return nil
}

// ValidateSocket checks a socket record of an image.
func ValidateSocket(f *pb.File) error {
	s := f.Socket
	if s == nil || sockTypes[int(s.Type)] == "" || s.Ino == 0 || s.Shutdown > 3 || s.PeekOff < -1 {
		return fmt.Errorf("image damaged: socket file %d", f.Id)
	}
	switch s.Family {
	case 0, unix.AF_UNIX:
		if s.Inet != nil {
			return fmt.Errorf("image damaged: unix socket file %d with an IP address", f.Id)
		}
	case unix.AF_INET, unix.AF_INET6:
		return validateInet(f)
	default:
		return fmt.Errorf("image damaged: socket file %d of family %d", f.Id, s.Family)
	}
	if !s.Connected && (s.PeerIno != 0 || (len(s.Queue) > 0 && (len(s.Name) == 0 || s.Type != unix.SOCK_DGRAM))) {
		return fmt.Errorf("image damaged: socket file %d has data or a peer but is not connected", f.Id)
	}
	if len(s.Name) > 0 && (s.Connected || !validSockName(s.Name)) || (s.Listening && (len(s.Name) == 0 || s.Type == unix.SOCK_DGRAM)) {
		return fmt.Errorf("image damaged: socket file %d: name %q", f.Id, s.Name)
	}
	if s.Type == unix.SOCK_STREAM && len(s.Queue) > 1 {
		return fmt.Errorf("image damaged: stream socket file %d has %d pieces of data", f.Id, len(s.Queue))
	}
	return nil
}

// validSockName tells a name bind takes: an absolute path without NULs,
// or a NUL and an abstract name; at most 107 bytes.
func validSockName(name []byte) bool {
	if len(name) < 2 || len(name) > 107 {
		return false
	}
	return name[0] == 0 || (name[0] == '/' && bytes.IndexByte(name, 0) < 0)
}

// openSocket returns ckpt's copy of the socket rec describes, making the
// pair on first use of either end.
func (o *OpenFiles) openSocket(rec *pb.File) (*os.File, error) {
	if err := ValidateSocket(rec); err != nil {
		return nil, err
	}
	s := rec.Socket
	if f := o.sockets[s.Ino]; f != nil {
		return f, nil
	}
	if f := o.inheritSock[s.Ino]; f != nil && s.External {
		nf, err := dupOwn(f, fmt.Sprintf("socket:[%d]", s.Ino))
		if err == nil {
			o.sockets[s.Ino] = nf
		}
		return nf, err
	}
	if s.Inet != nil {
		f, err := o.openInet(rec)
		if err == nil {
			o.sockets[s.Ino] = f
		}
		return f, err
	}
	if !s.Connected {
		var fd int
		err := o.inSocketNetns(func() (err error) {
			fd, err = unix.Socket(unix.AF_UNIX, int(s.Type)|unix.SOCK_CLOEXEC, 0)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("make socket:[%d]: %w", s.Ino, err)
		}
		f := os.NewFile(uintptr(fd), "socket")
		o.sockets[s.Ino] = f
		if err := setSockOpts(fd, rec); err != nil {
			return nil, err
		}
		if len(s.Name) > 0 {
			if err := o.bindName(fd, rec); err != nil {
				return nil, err
			}
		}
		return f, nil
	}
	var peer *pb.File
	for _, r := range o.recs {
		if s.PeerIno != 0 && r.Kind == pb.File_SOCKET && r.Socket != nil && r.Socket.Ino == s.PeerIno && r != rec {
			if err := ValidateSocket(r); err != nil {
				return nil, err
			}
			if r.Socket.Type != s.Type || r.Socket.PeerIno != s.Ino {
				return nil, fmt.Errorf("image damaged: sockets:[%d] and [%d] are not a pair", s.Ino, s.PeerIno)
			}
			peer = r
		}
	}
	var fds [2]int
	err := o.inSocketNetns(func() (err error) {
		fds, err = unix.Socketpair(unix.AF_UNIX, int(s.Type)|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("make socket pair for socket:[%d]: %w", s.Ino, err)
	}
	a, b := os.NewFile(uintptr(fds[0]), "socket"), os.NewFile(uintptr(fds[1]), "socket")
	o.sockets[s.Ino] = a
	if peer != nil {
		o.sockets[s.PeerIno] = b
	} else {
		defer b.Close() // nobody holds it: closed once a's data is in
	}
	ends := []struct {
		f    *os.File
		rec  *pb.File
		from *os.File
	}{{a, rec, b}, {b, peer, a}}
	for _, e := range ends {
		if e.rec == nil {
			continue
		}
		if err := setSockOpts(int(e.f.Fd()), e.rec); err != nil {
			return nil, err
		}
	}
	// Each end's waiting data is sent from the other end, then what was
	// shut down is shut down.
	for _, e := range ends {
		if e.rec == nil {
			continue
		}
		for _, m := range e.rec.Socket.Queue {
			if err := sendAll(int(e.from.Fd()), m, e.rec.Socket.Type); err != nil {
				return nil, fmt.Errorf("refill socket:[%d] with %d bytes: %w", e.rec.Socket.Ino, len(m), err)
			}
		}
	}
	for _, e := range ends {
		if e.rec == nil {
			continue
		}
		sh := e.rec.Socket.Shutdown
		how := -1
		switch {
		case sh == 3:
			how = unix.SHUT_RDWR
		case sh&1 != 0:
			how = unix.SHUT_RD
		case sh&2 != 0:
			how = unix.SHUT_WR
		}
		if how >= 0 {
			if err := unix.Shutdown(int(e.f.Fd()), how); err != nil {
				return nil, fmt.Errorf("shut down socket:[%d]: %w", e.rec.Socket.Ino, err)
			}
		}
	}
	return a, nil
}

// bindName binds a unix socket to its name again, gives its file the
// owner and mode it had, listens, and queues the datagrams others had
// sent to it (from a socket without a name: their senders' addresses are
// not kept). A socket file left by the checkpointed process (no socket is
// bound to it any more) is removed first.
func (o *OpenFiles) bindName(fd int, rec *pb.File) error {
	s := rec.Socket
	name := sockName(s.Name)
	path := string(s.Name)
	abstract := s.Name[0] == 0
	if !abstract {
		if o.Root != "" {
			return fmt.Errorf("socket:[%d] is bound to %s in a container with a mount namespace of its own: %w yet", s.Ino, name, ErrUnsupported)
		}
		if err := removeStaleSocket(path); err != nil {
			return fmt.Errorf("bind socket:[%d] to %s: %w", s.Ino, name, err)
		}
	}
	sa := &unix.SockaddrUnix{Name: path}
	if abstract {
		sa.Name = "@" + path[1:]
	}
	if err := unix.Bind(fd, sa); err != nil {
		hint := ""
		if err == unix.EADDRINUSE {
			hint = " (a live socket holds the name: stop its owner, e.g. the checkpointed process if it still runs)"
		}
		return fmt.Errorf("bind socket:[%d] to %s: %w%s", s.Ino, name, err, hint)
	}
	if !abstract {
		if err := unix.Lchown(path, int(s.NameUid), int(s.NameGid)); err != nil && !(err == unix.EPERM && os.Geteuid() != 0) {
			return fmt.Errorf("socket file %s: %w", name, err)
		}
		if err := unix.Chmod(path, s.NameMode); err != nil {
			return fmt.Errorf("socket file %s: %w", name, err)
		}
	}
	if s.Listening {
		if err := unix.Listen(fd, int(s.Backlog)); err != nil {
			return fmt.Errorf("listen on %s: %w", name, err)
		}
	}
	if len(s.Queue) == 0 {
		return nil
	}
	var from int
	err := o.inSocketNetns(func() (err error) {
		from, err = unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return err
	}
	defer unix.Close(from)
	for _, m := range s.Queue {
		if err := unix.Sendto(from, m, unix.MSG_DONTWAIT, sa); err != nil {
			return fmt.Errorf("refill socket:[%d] (%s) with %d bytes: %w", s.Ino, name, len(m), err)
		}
	}
	return nil
}

// removeStaleSocket removes the socket file at path if no socket is bound
// to it: a datagram socket's connect there is refused then, where a
// bound socket of any type would accept it or refuse the type. Anything
// else at path is left for bind to fail on.
func removeStaleSocket(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil
	}
	probe, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(probe)
	if err := unix.Connect(probe, &unix.SockaddrUnix{Name: path}); err != unix.ECONNREFUSED {
		return nil // live (or unknown): bind reports it
	}
	return unix.Unlink(path)
}

// inSocketNetns runs mk, which makes sockets, in the network namespace of
// the stub being given its descriptors: a socket belongs to the namespace
// it was made in, and sock_diag (a later checkpoint) looks for it there.
func (o *OpenFiles) inSocketNetns(mk func() error) error {
	if o.netPid == 0 || sameNetns(o.netPid) {
		return mk()
	}
	return inNetns(o.netPid, mk)
}

// sendAll sends one datagram, or all of a stream's data, without blocking.
func sendAll(fd int, b []byte, typ uint32) error {
	for {
		n, err := unix.SendmsgN(fd, b, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if err != nil {
			return err
		}
		if typ != unix.SOCK_STREAM || n == len(b) {
			return nil
		}
		b = b[n:]
	}
}

// setSockOpts sets the options rec saved on socket fd (before its data:
// the buffer sizes bound how much it can hold). The sizes are set as
// root would (SO_*BUFFORCE, past the system's maximum) where allowed; the
// kernel doubles what it is given, as it did the first time.
func setSockOpts(fd int, rec *pb.File) error {
	s := rec.Socket
	what := fmt.Sprintf("socket:[%d]", s.Ino)
	for _, o := range []struct {
		force, opt int
		v          uint32
	}{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, s.Sndbuf}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, s.Rcvbuf}} {
		if o.v == 0 {
			continue
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.force, int(o.v/2)); err != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o.opt, int(o.v/2)); err != nil {
				return fmt.Errorf("size %s to %d bytes: %w", what, o.v, err)
			}
		}
	}
	// Setting a size locks it; a size the kernel was tuning goes on being
	// tuned (TCP's buffers grow with the traffic), from where it was.
	if s.BufLock != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BUF_LOCK, int(*s.BufLock&3)); err != nil {
			return fmt.Errorf("%s: SO_BUF_LOCK %d: %w", what, *s.BufLock, err)
		}
	}
	if s.Passcred {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
			return fmt.Errorf("%s: SO_PASSCRED: %w", what, err)
		}
	}
	for _, o := range []struct {
		opt int
		ns  int64
	}{{unix.SO_RCVTIMEO, s.RcvtimeoNs}, {unix.SO_SNDTIMEO, s.SndtimeoNs}} {
		if o.ns == 0 {
			continue
		}
		tv := unix.NsecToTimeval(o.ns)
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, o.opt, &tv); err != nil {
			return fmt.Errorf("%s: timeout %v: %w", what, time.Duration(o.ns), err)
		}
	}
	if s.PeekOff >= 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, int(s.PeekOff)); err != nil {
			return fmt.Errorf("%s: SO_PEEK_OFF: %w", what, err)
		}
	}
	// Status flags (O_NONBLOCK) belong to the description.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, int(rec.Flags&unix.O_NONBLOCK)); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
