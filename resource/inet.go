package resource

import (
	"fmt"
	"net/netip"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
)

// IPv4 and IPv6 sockets that carry no connection: listening TCP sockets,
// TCP sockets not yet connected, and UDP sockets, bound or not, connected
// to a peer or not. What makes them is on the socket itself (address,
// backlog, options) and is made again at restart in the stub's network
// namespace: socket, options, bind, listen or connect. A restarted server
// listens on its port again; the port must be free then (after
// `checkpoint --kill` it is).
//
// A TCP connection (established, or waiting in a listener's accept queue)
// would need TCP_REPAIR and is refused. Datagrams waiting in a UDP socket
// are not kept: they could only be sent again from ckpt's own address,
// and dropping them is what the network may do to any datagram.

// tcpListen and tcpClose are the TCP states (tcp_states.h) of a socket
// that carries no connection.
const (
	tcpListen = 10
	tcpClose  = 7
)

var tcpStates = map[uint8]string{1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
	6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}

// describeInet fills in s for the IPv4 or IPv6 socket sfd, or refuses it.
func describeInet(sfd, family, typ int, s *pb.Socket, what string) error {
	proto, err := unix.GetsockoptInt(sfd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	name := sockFamilies[family]
	if !(typ == unix.SOCK_STREAM && proto == unix.IPPROTO_TCP) && !(typ == unix.SOCK_DGRAM && proto == unix.IPPROTO_UDP) {
		return fmt.Errorf("%s is %s socket of type %d, protocol %d: %w yet (TCP and UDP are)", what, name, typ, proto, ErrUnsupported)
	}
	in := &pb.InetSocket{Protocol: uint32(proto)}
	s.Family, s.Inet, s.PeekOff = uint32(family), in, -1
	local, err := unix.Getsockname(sfd)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	in.Addr, in.Port, in.ScopeId = inetAddr(local)
	if in.Port == 0 && !slices.ContainsFunc(in.Addr, func(b byte) bool { return b != 0 }) {
		in.Addr = nil // not bound
	}
	if proto == unix.IPPROTO_TCP {
		info, err := unix.GetsockoptTCPInfo(sfd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		switch info.State {
		case tcpListen:
			in.Listening, in.Backlog = true, info.Sacked // sk_max_ack_backlog
			if info.Unacked > 0 {
				return fmt.Errorf("%s, listening on %s, has %d connections waiting to be accepted: %w (TCP connections are not restored yet; checkpoint when the server has accepted them)",
					what, inetString(in.Addr, in.Port), info.Unacked, ErrUnsupported)
			}
		case tcpClose:
		case tcpEstablished:
			sa, err := unix.Getpeername(sfd)
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			in.PeerAddr, in.PeerPort, in.PeerScopeId = inetAddr(sa)
			in.Tcp = &pb.TcpConnection{} // filled in the frozen process
		default:
			peer := "?"
			if sa, err := unix.Getpeername(sfd); err == nil {
				a, p, _ := inetAddr(sa)
				peer = inetString(a, p)
			}
			return fmt.Errorf("%s is a TCP connection %s - %s in state %s: %w yet (established connections, listening and unconnected TCP sockets are)",
				what, inetString(in.Addr, in.Port), peer, tcpStates[info.State], ErrUnsupported)
		}
	} else if sa, err := unix.Getpeername(sfd); err == nil {
		in.PeerAddr, in.PeerPort, in.PeerScopeId = inetAddr(sa)
	} else if err != unix.ENOTCONN {
		return fmt.Errorf("%s: %w", what, err)
	}
	for _, o := range inetBoolOpts(uint32(family), in) {
		v, err := unix.GetsockoptInt(sfd, o.level, o.opt)
		if err != nil {
			return fmt.Errorf("%s: option %d: %w", what, o.opt, err)
		}
		*o.v = v != 0
	}
	return readInetOpts(sfd, family, in, what)
}

// boolOpt is a socket option that is on or off.
type boolOpt struct {
	level, opt int
	v          *bool
}

// inetBoolOpts are the on/off options of in that ckpt keeps, for family
// and protocol (in.Protocol); all of them are set before bind.
func inetBoolOpts(family uint32, in *pb.InetSocket) []boolOpt {
	opts := []boolOpt{
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, &in.Reuseaddr},
		{unix.SOL_SOCKET, unix.SO_REUSEPORT, &in.Reuseport},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, &in.Keepalive},
		{unix.SOL_SOCKET, unix.SO_BROADCAST, &in.Broadcast},
	}
	if family == unix.AF_INET6 {
		opts = append(opts, boolOpt{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, &in.V6Only})
	}
	if in.Protocol == unix.IPPROTO_TCP {
		opts = append(opts, boolOpt{unix.IPPROTO_TCP, unix.TCP_NODELAY, &in.Nodelay})
	}
	return opts
}

// intOpt is a socket option an int holds.
type intOpt struct {
	level, opt int
	v          *int32
}

// inetIntOpts are the int options of in that ckpt keeps, for family and
// protocol.
func inetIntOpts(family uint32, in *pb.InetSocket) []intOpt {
	opts := []intOpt{
		{unix.SOL_SOCKET, unix.SO_RCVLOWAT, &in.Rcvlowat},
		{unix.SOL_SOCKET, unix.SO_PRIORITY, &in.Priority},
		{unix.IPPROTO_IP, unix.IP_TOS, &in.Tos},
	}
	if family == unix.AF_INET6 {
		opts[2] = intOpt{unix.IPPROTO_IPV6, unix.IPV6_TCLASS, &in.Tos}
	}
	if in.Protocol == unix.IPPROTO_TCP {
		opts = append(opts,
			intOpt{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, &in.Keepidle},
			intOpt{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, &in.Keepintvl},
			intOpt{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, &in.Keepcnt},
			intOpt{unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, &in.UserTimeout})
	}
	return opts
}

// readInetOpts reads SO_LINGER and the int options of inetIntOpts.
func readInetOpts(sfd, family int, in *pb.InetSocket, what string) error {
	l, err := unix.GetsockoptLinger(sfd, unix.SOL_SOCKET, unix.SO_LINGER)
	if err != nil {
		return fmt.Errorf("%s: SO_LINGER: %w", what, err)
	}
	linger := int32(-1)
	if l.Onoff != 0 {
		linger = l.Linger
	}
	in.Linger = &linger
	for _, o := range inetIntOpts(uint32(family), in) {
		v, err := unix.GetsockoptInt(sfd, o.level, o.opt)
		if err != nil {
			return fmt.Errorf("%s: option %d: %w", what, o.opt, err)
		}
		*o.v = int32(v)
	}
	return nil
}

// setInetOpts sets what readInetOpts read (nothing for older images).
// SO_PRIORITY above 6 needs CAP_NET_ADMIN: 0 is the default, left alone.
func setInetOpts(fd int, family uint32, in *pb.InetSocket, what string) error {
	if in.Linger == nil {
		return nil
	}
	if *in.Linger >= 0 {
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: *in.Linger}); err != nil {
			return fmt.Errorf("%s: SO_LINGER: %w", what, err)
		}
	}
	for _, o := range inetIntOpts(family, in) {
		if o.opt == unix.SO_PRIORITY && *o.v == 0 {
			continue
		}
		if err := unix.SetsockoptInt(fd, o.level, o.opt, int(*o.v)); err != nil {
			return fmt.Errorf("%s: option %d to %d: %w", what, o.opt, *o.v, err)
		}
	}
	return nil
}

// inetAddr splits an IPv4 or IPv6 socket address.
func inetAddr(sa unix.Sockaddr) (addr []byte, port, scope uint32) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return a.Addr[:], uint32(a.Port), 0
	case *unix.SockaddrInet6:
		return a.Addr[:], uint32(a.Port), a.ZoneId
	}
	return nil, 0, 0
}

// inetSockaddr joins an address of family back.
func inetSockaddr(family uint32, addr []byte, port, scope uint32) unix.Sockaddr {
	if family == unix.AF_INET {
		return &unix.SockaddrInet4{Addr: [4]byte(addr), Port: int(port)}
	}
	return &unix.SockaddrInet6{Addr: [16]byte(addr), Port: int(port), ZoneId: scope}
}

// inetString shows an address as "127.0.0.1:80" or "[::1]:80".
func inetString(addr []byte, port uint32) string {
	ip, ok := netip.AddrFromSlice(addr)
	if !ok {
		return fmt.Sprintf("*:%d", port)
	}
	return netip.AddrPortFrom(ip, uint16(port)).String()
}

// dumpInet rechecks, in the frozen process, what may have changed since
// preflight (a listener's accept queue) and reads a TCP connection, whose
// copy it hands to s when repair mode is to last until the process dies.
func dumpInet(s *FileSet, pid, fd int, f *pb.File) error {
	in := f.Socket.Inet
	sfd, err := grabSocket(pid, fd)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("fd %d of process %d (socket:[%d])", fd, pid, f.Socket.Ino)
	if in.Tcp != nil {
		if s.KeepRepair {
			if s.guard == nil {
				if s.guard, err = startRepairGuard(); err != nil {
					unix.Close(sfd)
					return err
				}
			}
			if err := s.guard.hold(sfd); err != nil {
				unix.Close(sfd)
				return err
			}
		}
		err := dumpTCP(sfd, in, what)
		if err == nil {
			err = readSockOpts(sfd, f.Socket, what)
		}
		if err == nil && s.KeepRepair {
			s.repaired = append(s.repaired, sfd)
			return nil
		}
		if eerr := endRepair(sfd); eerr != nil && err == nil {
			err = fmt.Errorf("%s: end repair mode: %w", what, eerr)
		}
		unix.Close(sfd)
		return err
	}
	defer unix.Close(sfd)
	if in.Listening {
		info, err := unix.GetsockoptTCPInfo(sfd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return fmt.Errorf("fd %d of process %d: %w", fd, pid, err)
		}
		if info.Unacked > 0 {
			return fmt.Errorf("fd %d of process %d (socket:[%d]), listening on %s, has %d connections waiting to be accepted: %w (TCP connections are not restored yet; checkpoint when the server has accepted them)",
				fd, pid, f.Socket.Ino, inetString(in.Addr, in.Port), info.Unacked, ErrUnsupported)
		}
	}
	return readSockOpts(sfd, f.Socket, what)
}

// validateInet checks the IPv4 or IPv6 part of a socket record.
func validateInet(f *pb.File) error {
	s, in := f.Socket, f.Socket.Inet
	alen := 4
	if s.Family == unix.AF_INET6 {
		alen = 16
	}
	if in != nil && in.Tcp != nil && !validateTCP(in) {
		return fmt.Errorf("image damaged: TCP connection file %d", f.Id)
	}
	ok := in != nil && !s.Connected && s.PeerIno == 0 && len(s.Queue) == 0 &&
		((s.Type == unix.SOCK_STREAM && in.Protocol == unix.IPPROTO_TCP) || (s.Type == unix.SOCK_DGRAM && in.Protocol == unix.IPPROTO_UDP && !in.Listening)) &&
		(len(in.Addr) == 0 || len(in.Addr) == alen) && (len(in.PeerAddr) == 0 || len(in.PeerAddr) == alen) &&
		in.Port < 1<<16 && in.PeerPort < 1<<16 && (!in.Listening || len(in.Addr) != 0)
	if !ok {
		return fmt.Errorf("image damaged: IP socket file %d", f.Id)
	}
	return nil
}

// openInet makes an IPv4 or IPv6 socket again: options that bind reads
// first, then bind, listen or connect.
func (o *OpenFiles) openInet(rec *pb.File) (*os.File, error) {
	s, in := rec.Socket, rec.Socket.Inet
	var fd int
	err := o.inSocketNetns(func() (err error) {
		fd, err = unix.Socket(int(s.Family), int(s.Type)|unix.SOCK_CLOEXEC, int(in.Protocol))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("make socket:[%d]: %w", s.Ino, err)
	}
	f := os.NewFile(uintptr(fd), "socket")
	fail := func(err error) (*os.File, error) {
		f.Close()
		return nil, err
	}
	what := fmt.Sprintf("socket:[%d]", s.Ino)
	for _, op := range inetBoolOpts(s.Family, in) {
		v := 0
		if *op.v {
			v = 1
		}
		if err := unix.SetsockoptInt(fd, op.level, op.opt, v); err != nil {
			return fail(fmt.Errorf("%s: option %d: %w", what, op.opt, err))
		}
	}
	if err := setSockOpts(fd, rec); err != nil {
		return fail(err)
	}
	if err := setInetOpts(fd, s.Family, in, what); err != nil {
		return fail(err)
	}
	if in.Tcp != nil {
		if err := restoreTCP(fd, rec, what); err != nil {
			return fail(err)
		}
		o.repairs = append(o.repairs, repairing{f, in.Tcp})
		return f, nil
	}
	if len(in.Addr) != 0 {
		if err := unix.Bind(fd, inetSockaddr(s.Family, in.Addr, in.Port, in.ScopeId)); err != nil {
			hint := ""
			if err == unix.EADDRINUSE {
				hint = " (another socket holds it: stop its owner, e.g. the checkpointed process if it still runs, or restart in a network namespace of its own)"
			}
			return fail(fmt.Errorf("bind %s to %s: %w%s", what, inetString(in.Addr, in.Port), err, hint))
		}
	}
	if in.Listening {
		if err := unix.Listen(fd, int(in.Backlog)); err != nil {
			return fail(fmt.Errorf("listen on %s: %w", inetString(in.Addr, in.Port), err))
		}
	}
	if len(in.PeerAddr) != 0 {
		if err := unix.Connect(fd, inetSockaddr(s.Family, in.PeerAddr, in.PeerPort, in.PeerScopeId)); err != nil {
			return fail(fmt.Errorf("connect %s to %s: %w", what, inetString(in.PeerAddr, in.PeerPort), err))
		}
	}
	return f, nil
}
