package resource

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
)

// Established TCP connections, through the kernel's repair mode
// (TCP_REPAIR, CAP_NET_ADMIN). In repair mode a socket sends nothing and
// lets its state be read and set: the sequence numbers at the start of
// the send and receive queues, their data, the options the two ends
// agreed on (MSS, window scaling, SACK, timestamps), the window and the
// timestamp clock.
//
// Checkpoint: ckpt puts its copy of the socket (pidfd_getfd, the same
// socket) into repair mode and reads it. With --kill it stays so until
// the process is dead and ckpt closes its copy: a socket in repair mode
// closes without a FIN or RST, so the peer sees nothing. Otherwise, or if
// the checkpoint fails, repair mode ends (without --kill at once after
// reading): the process runs on with the connection as it was; the
// kernel probes the window. Should ckpt be killed meanwhile, a guard
// process ends repair mode instead (repairGuard).
//
// Restart: a new socket in repair mode gets the sequence numbers, is bound
// and connected (in repair mode connect sends no SYN: the connection is
// established at once), gets the options and window, and its queues are
// filled: the send queue as already sent (the data not sent yet at
// checkpoint is sent normally once repair mode ends), the receive queue
// as received. Repair mode ends just before the processes are released
// (OpenFiles.FinishSockets), both ends of a connection within the image
// being in place by then.
//
// The peer of a connection to the outside keeps its side meanwhile; it
// must not have given up (keepalive or user timeouts) by the restart.

const (
	tcpNoQueue   = 0
	tcpRecvQueue = 1
	tcpSendQueue = 2

	tcpEstablished = 1

	// tcpi_options bits (struct tcp_info).
	tcpiOptTimestamps = 1
	tcpiOptSack       = 2
	tcpiOptWscale     = 4
)

// rawGetsockopt reads an option of any size into b; it returns the length.
func rawGetsockopt(fd, level, opt int, b []byte) (int, error) {
	l := uint32(len(b))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, e
	}
	return int(l), nil
}

func rawSetsockopt(fd, level, opt int, b []byte) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// dumpTCP reads an established connection from sfd, ckpt's copy of the
// socket, in repair mode, which it is left in (the caller ends it).
func dumpTCP(sfd int, in *pb.InetSocket, what string) error {
	if err := unix.SetsockoptInt(sfd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%s is a TCP connection: checkpointing one needs CAP_NET_ADMIN (TCP_REPAIR); run ckpt as root: %w", what, err)
		}
		return fmt.Errorf("%s: repair mode (TCP_REPAIR): %w", what, err)
	}
	c := &pb.TcpConnection{}
	in.Tcp = c
	var info [256]byte
	if _, err := rawGetsockopt(sfd, unix.IPPROTO_TCP, unix.TCP_INFO, info[:]); err != nil {
		return fmt.Errorf("%s: TCP_INFO: %w", what, err)
	}
	if info[0] != tcpEstablished {
		return fmt.Errorf("%s: the connection left the established state (%s) while being read", what, tcpStates[info[0]])
	}
	opts := info[5]
	c.Sack, c.Timestamps = opts&tcpiOptSack != 0, opts&tcpiOptTimestamps != 0
	if opts&tcpiOptWscale != 0 {
		c.Wscale, c.SndWscale, c.RcvWscale = true, uint32(info[6]&0xf), uint32(info[6]>>4)
	}
	mss, err := unix.GetsockoptInt(sfd, unix.IPPROTO_TCP, unix.TCP_MAXSEG)
	if err != nil {
		return fmt.Errorf("%s: TCP_MAXSEG: %w", what, err)
	}
	c.Mss = uint32(mss)
	if c.Timestamps {
		ts, err := unix.GetsockoptInt(sfd, unix.IPPROTO_TCP, unix.TCP_TIMESTAMP)
		if err != nil {
			return fmt.Errorf("%s: TCP_TIMESTAMP: %w", what, err)
		}
		c.Timestamp = uint32(ts)
	}
	var win [20]byte
	if _, err := rawGetsockopt(sfd, unix.IPPROTO_TCP, unix.TCP_REPAIR_WINDOW, win[:]); err != nil {
		return fmt.Errorf("%s: TCP_REPAIR_WINDOW: %w", what, err)
	}
	for i := 0; i < 5; i++ {
		c.Window = append(c.Window, binary.NativeEndian.Uint32(win[4*i:]))
	}
	// The queues: their sizes, then their data, peeked.
	outq, err := unix.IoctlGetInt(sfd, unix.SIOCOUTQ)
	if err != nil {
		return fmt.Errorf("%s: send queue length: %w", what, err)
	}
	unsent, err := unix.IoctlGetInt(sfd, unix.SIOCOUTQNSD)
	if err != nil {
		return fmt.Errorf("%s: unsent length: %w", what, err)
	}
	inq, err := unix.IoctlGetInt(sfd, unix.SIOCINQ)
	if err != nil {
		return fmt.Errorf("%s: receive queue length: %w", what, err)
	}
	for _, q := range []struct {
		queue int
		n     int
		seq   *uint32
		data  *[]byte
	}{{tcpSendQueue, outq, &c.SndSeq, &c.SendQueue}, {tcpRecvQueue, inq, &c.RcvSeq, &c.RecvQueue}} {
		if err := unix.SetsockoptInt(sfd, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, q.queue); err != nil {
			return fmt.Errorf("%s: TCP_REPAIR_QUEUE: %w", what, err)
		}
		seq, err := unix.GetsockoptInt(sfd, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ)
		if err != nil {
			return fmt.Errorf("%s: TCP_QUEUE_SEQ: %w", what, err)
		}
		// The queue's next sequence number, less what it holds.
		*q.seq = uint32(seq) - uint32(q.n)
		if q.n > maxSockQueue {
			return fmt.Errorf("%s: more than %d MiB of data queued", what, maxSockQueue>>20)
		}
		if q.n > 0 {
			b := make([]byte, q.n)
			got, _, err := unix.Recvfrom(sfd, b, unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if err != nil || got != q.n {
				return fmt.Errorf("%s: peek at %d queued bytes: got %d, %v", what, q.n, got, err)
			}
			*q.data = b
		}
	}
	c.SendUnsent = uint32(unsent)
	if err := unix.SetsockoptInt(sfd, unix.IPPROTO_TCP, unix.TCP_REPAIR_QUEUE, tcpNoQueue); err != nil {
		return fmt.Errorf("%s: TCP_REPAIR_QUEUE: %w", what, err)
	}
	return nil
}

// endRepair takes ckpt's copy of a socket out of repair mode, so that the
// process that holds it runs on with it.
func endRepair(sfd int) error {
	return unix.SetsockoptInt(sfd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF)
}

// validateTCP checks the saved state of a connection.
func validateTCP(in *pb.InetSocket) bool {
	c := in.Tcp
	return in.Protocol == unix.IPPROTO_TCP && !in.Listening && len(in.Addr) != 0 && len(in.PeerAddr) != 0 &&
		len(c.Window) == 5 && int(c.SendUnsent) <= len(c.SendQueue) && c.SndWscale <= 14 && c.RcvWscale <= 14 && c.Mss < 1<<16
}

// restoreTCP makes socket fd (new, options set) the connection c again,
// up to ending repair mode: sequence numbers, bind, connect, options,
// queues, window.
func restoreTCP(fd int, rec *pb.File, what string) error {
	s, in := rec.Socket, rec.Socket.Inet
	c := in.Tcp
	set := func(opt, v int) error {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, opt, v); err != nil {
			return fmt.Errorf("%s: TCP option %d: %w", what, opt, err)
		}
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%s is a TCP connection: restoring one needs CAP_NET_ADMIN (TCP_REPAIR); run ckpt restart as root: %w", what, err)
		}
		return fmt.Errorf("%s: repair mode (TCP_REPAIR): %w", what, err)
	}
	for _, q := range []struct{ queue, seq int }{{tcpSendQueue, int(int32(c.SndSeq))}, {tcpRecvQueue, int(int32(c.RcvSeq))}} {
		if err := set(unix.TCP_REPAIR_QUEUE, q.queue); err != nil {
			return err
		}
		if err := set(unix.TCP_QUEUE_SEQ, q.seq); err != nil {
			return err
		}
	}
	if err := unix.Bind(fd, inetSockaddr(s.Family, in.Addr, in.Port, in.ScopeId)); err != nil {
		return fmt.Errorf("bind %s to %s: %w", what, inetString(in.Addr, in.Port), err)
	}
	if err := unix.Connect(fd, inetSockaddr(s.Family, in.PeerAddr, in.PeerPort, in.PeerScopeId)); err != nil {
		return fmt.Errorf("connect %s to %s (repair mode): %w", what, inetString(in.PeerAddr, in.PeerPort), err)
	}
	var opts []byte
	opt := func(code, val uint32) {
		opts = binary.NativeEndian.AppendUint32(opts, code)
		opts = binary.NativeEndian.AppendUint32(opts, val)
	}
	opt(unix.TCPOPT_MAXSEG, c.Mss)
	if c.Wscale {
		opt(unix.TCPOPT_WINDOW, c.SndWscale|c.RcvWscale<<16)
	}
	if c.Sack {
		opt(unix.TCPOPT_SACK_PERMITTED, 0)
	}
	if c.Timestamps {
		opt(unix.TCPOPT_TIMESTAMP, 0)
	}
	if err := rawSetsockopt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR_OPTIONS, opts); err != nil {
		return fmt.Errorf("%s: TCP_REPAIR_OPTIONS: %w", what, err)
	}
	if c.Timestamps {
		if err := set(unix.TCP_TIMESTAMP, int(int32(c.Timestamp))); err != nil {
			return err
		}
	}
	sent := c.SendQueue[:len(c.SendQueue)-int(c.SendUnsent)]
	for _, q := range []struct {
		queue int
		data  []byte
	}{{tcpSendQueue, sent}, {tcpRecvQueue, c.RecvQueue}} {
		if len(q.data) == 0 {
			continue
		}
		if err := set(unix.TCP_REPAIR_QUEUE, q.queue); err != nil {
			return err
		}
		for b := q.data; len(b) > 0; {
			n, err := unix.Write(fd, b)
			if err != nil {
				return fmt.Errorf("%s: refill queue %d with %d bytes: %w", what, q.queue, len(b), err)
			}
			b = b[n:]
		}
	}
	if err := set(unix.TCP_REPAIR_QUEUE, tcpNoQueue); err != nil {
		return err
	}
	// The window last: the kernel checks it against the receive queue's
	// end, which the data just queued moved to where it was.
	var win []byte
	for _, v := range c.Window {
		win = binary.NativeEndian.AppendUint32(win, v)
	}
	if err := rawSetsockopt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR_WINDOW, win); err != nil {
		return fmt.Errorf("%s: TCP_REPAIR_WINDOW: %w", what, err)
	}
	return nil
}

// finishTCP ends repair mode of a restored connection and sends the data
// that had not been sent at checkpoint.
func finishTCP(f *os.File, c *pb.TcpConnection) error {
	fd := int(f.Fd())
	if err := endRepair(fd); err != nil {
		return fmt.Errorf("end repair mode: %w", err)
	}
	for b := c.SendQueue[len(c.SendQueue)-int(c.SendUnsent):]; len(b) > 0; {
		n, err := unix.SendmsgN(fd, b, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if err != nil {
			return fmt.Errorf("send %d bytes not sent at checkpoint: %w", len(b), err)
		}
		b = b[n:]
	}
	return nil
}

// repairing is a restored connection waiting for the end of repair mode.
type repairing struct {
	f *os.File
	c *pb.TcpConnection
}

// FinishSockets ends repair mode of the restored TCP connections, once
// every descriptor is in place and before the processes run.
func (o *OpenFiles) FinishSockets() error {
	for _, r := range o.repairs {
		if err := finishTCP(r.f, r.c); err != nil {
			return err
		}
	}
	o.repairs = nil
	return nil
}

// EndRepair lets go of the connections kept in repair mode. After the
// processes were killed (killed), ckpt's copies are the last: closed in
// repair mode, the connections end without a word to their peers.
// Otherwise repair mode ends first, and the processes carry on with them.
func (s *FileSet) EndRepair(killed bool) error {
	var first error
	for _, fd := range s.repaired {
		if !killed {
			if err := endRepair(fd); err != nil && first == nil {
				first = fmt.Errorf("end repair mode of a TCP connection: %w", err)
			}
		}
		unix.Close(fd)
	}
	s.repaired = nil
	if s.guard != nil {
		s.guard.release(killed)
		s.guard = nil
	}
	return first
}

// repairGuard is a child process (`ckpt __repair-guard`) that holds a copy
// of every connection ckpt keeps in repair mode. Should ckpt die before it
// lets go of them (SIGKILL), its end of their control socket closes and
// the guard takes them out of repair mode: the processes, which ptrace
// then lets run, carry on with working connections. The kernel wakes the
// guard before it lets the processes go, but cannot make it run first: a
// process that uses a connection at once may get one error from it.
type repairGuard struct {
	ctrl  *os.File
	child *os.Process
}

// Messages to the guard, each a byte on a seqpacket socket: H holds the
// descriptor that comes with it, and the guard answers A once it does;
// K and E let go of all, after the processes were killed (close in
// repair mode) or after ckpt ended repair mode itself.
const (
	guardHold  = 'H'
	guardHeld  = 'A'
	guardKill  = 'K'
	guardEnded = 'E'
)

func startRepairGuard() (*repairGuard, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("start the repair-mode guard: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "guard"), os.NewFile(uintptr(fds[1]), "guard")
	defer theirs.Close()
	exe, err := os.Executable()
	if err != nil {
		ours.Close()
		return nil, fmt.Errorf("start the repair-mode guard: %w", err)
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		ours.Close()
		return nil, err
	}
	defer null.Close()
	child, err := os.StartProcess(exe, []string{"ckpt", "__repair-guard"}, &os.ProcAttr{Files: []*os.File{null, null, null, theirs}})
	if err != nil {
		ours.Close()
		return nil, fmt.Errorf("start the repair-mode guard: %w", err)
	}
	return &repairGuard{ctrl: ours, child: child}, nil
}

// hold gives the guard a copy of connection fd, before repair mode
// begins, and waits until the guard has it: a guard still starting when
// ckpt dies would come too late for processes that run on at once.
func (g *repairGuard) hold(fd int) error {
	if err := unix.Sendmsg(int(g.ctrl.Fd()), []byte{guardHold}, unix.UnixRights(fd), nil, 0); err != nil {
		return fmt.Errorf("hand a connection to the repair-mode guard: %w", err)
	}
	var b [1]byte
	for {
		n, err := unix.Read(int(g.ctrl.Fd()), b[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil || n != 1 || b[0] != guardHeld {
			return fmt.Errorf("the repair-mode guard did not take the connection (%v)", err)
		}
		return nil
	}
}

// release lets the guard go and waits for it.
func (g *repairGuard) release(killed bool) {
	msg := byte(guardEnded)
	if killed {
		msg = guardKill
	}
	unix.Write(int(g.ctrl.Fd()), []byte{msg})
	g.ctrl.Close()
	g.child.Wait()
}

// RunRepairGuard is the guard: it holds what ctrl brings until ckpt lets
// go, or ends repair mode of all if ckpt is gone first.
func RunRepairGuard(ctrl *os.File) error {
	var held []int
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(int(ctrl.Fd()), buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 { // ckpt is gone
			for _, fd := range held {
				endRepair(fd)
			}
			return nil
		}
		switch buf[0] {
		case guardHold:
			cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				return err
			}
			for _, c := range cmsgs {
				fds, err := unix.ParseUnixRights(&c)
				if err == nil {
					held = append(held, fds...)
				}
			}
			if _, err := unix.Write(int(ctrl.Fd()), []byte{guardHeld}); err != nil {
				return err
			}
		case guardKill, guardEnded:
			return nil // the copies close with this process
		}
	}
}
