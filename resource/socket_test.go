package resource

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
)

func socketPair(t *testing.T, typ int) [2]int {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds
}

// TestPeekQueue reads waiting data without consuming it: boundaries, a
// datagram of no bytes, one larger than the peek buffer, a stream's bytes
// in one piece, the end of a shut-down seqpacket socket; the peek offset
// is put back. A second peek sees the same, but for datagrams of no bytes
// past the head, which the kernel then skips (see peekQueue).
func TestPeekQueue(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 6000) // 96000 bytes, past the 64 KiB buffer
	tests := []struct {
		name     string
		typ      int
		send     [][]byte
		shutdown bool // the sender shuts down writing (the receiver reading)
		want     [][]byte
	}{
		{"datagrams", unix.SOCK_DGRAM, [][]byte{[]byte("one"), {}, big, []byte("four")}, false, [][]byte{[]byte("one"), {}, big, []byte("four")}},
		{"datagram of no bytes first", unix.SOCK_DGRAM, [][]byte{{}, []byte("x")}, false, [][]byte{{}, []byte("x")}},
		{"stream", unix.SOCK_STREAM, [][]byte{[]byte("ab"), big, []byte("cd")}, false, [][]byte{append(append([]byte("ab"), big...), "cd"...)}},
		{"stream shut down", unix.SOCK_STREAM, [][]byte{[]byte("last")}, true, [][]byte{[]byte("last")}},
		{"seqpacket shut down", unix.SOCK_SEQPACKET, [][]byte{[]byte("p1"), []byte("p2")}, true, [][]byte{[]byte("p1"), []byte("p2")}},
		{"empty", unix.SOCK_STREAM, nil, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fds := socketPair(t, tt.typ)
			if err := unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20); err != nil {
				t.Fatal(err)
			}
			for _, m := range tt.send {
				if err := sendAll(fds[1], m, uint32(tt.typ)); err != nil {
					t.Fatal(err)
				}
			}
			if tt.shutdown {
				unix.Shutdown(fds[1], unix.SHUT_WR)
			}
			for round := 0; round < 2; round++ { // nothing consumed: twice the same
				got, err := peekQueue(fds[0], tt.typ, -1, tt.shutdown)
				if err != nil {
					t.Fatal(err)
				}
				want := tt.want
				if round == 1 {
					want = nil
					for i, m := range tt.want {
						if len(m) > 0 || i == 0 { // the head is always seen
							want = append(want, m)
						}
					}
				}
				if len(got) != len(want) {
					t.Fatalf("round %d: %d entries, want %d", round, len(got), len(want))
				}
				for i := range got {
					if !bytes.Equal(got[i], want[i]) {
						t.Errorf("round %d: entry %d: %d bytes, want %d", round, i, len(got[i]), len(want[i]))
					}
				}
			}
			if off, err := unix.GetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_PEEK_OFF); err != nil || off != -1 {
				t.Errorf("SO_PEEK_OFF left at %d (%v), want -1", off, err)
			}
		})
	}
}

// TestPeekQueueRefusesRights: descriptors in flight are refused, and the
// copies the peek brought in are closed.
func TestPeekQueueRefusesRights(t *testing.T) {
	fds := socketPair(t, unix.SOCK_STREAM)
	if err := unix.Sendmsg(fds[1], []byte("x"), unix.UnixRights(0), nil, 0); err != nil {
		t.Fatal(err)
	}
	before, _ := ListFds(unix.Getpid())
	_, err := peekQueue(fds[0], unix.SOCK_STREAM, -1, false)
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "1 descriptors in flight") {
		t.Fatalf("err = %v, want descriptors in flight refused", err)
	}
	if after, _ := ListFds(unix.Getpid()); len(after) != len(before) {
		t.Errorf("descriptors %v before the peek, %v after", before, after)
	}
}

func TestValidateSocket(t *testing.T) {
	tests := []struct {
		name string
		s    *pb.Socket
		ok   bool
	}{
		{"pair end", &pb.Socket{Type: unix.SOCK_STREAM, Ino: 5, PeerIno: 6, Connected: true, Queue: [][]byte{[]byte("x")}, PeekOff: -1}, true},
		{"peer closed", &pb.Socket{Type: unix.SOCK_DGRAM, Ino: 5, Connected: true, Queue: [][]byte{{}, {}}, Shutdown: 3}, true},
		{"unconnected", &pb.Socket{Type: unix.SOCK_SEQPACKET, Ino: 5}, true},
		{"no socket", nil, false},
		{"raw type", &pb.Socket{Type: unix.SOCK_RAW, Ino: 5}, false},
		{"no inode", &pb.Socket{Type: unix.SOCK_STREAM}, false},
		{"shutdown 4", &pb.Socket{Type: unix.SOCK_STREAM, Ino: 5, Shutdown: 4}, false},
		{"peek offset -2", &pb.Socket{Type: unix.SOCK_STREAM, Ino: 5, PeekOff: -2}, false},
		{"data, not connected", &pb.Socket{Type: unix.SOCK_DGRAM, Ino: 5, Queue: [][]byte{{1}}}, false},
		{"stream in pieces", &pb.Socket{Type: unix.SOCK_STREAM, Ino: 5, Connected: true, Queue: [][]byte{{1}, {2}}}, false},
		{"bound datagram with data", &pb.Socket{Type: unix.SOCK_DGRAM, Ino: 5, Name: []byte("/run/x.sock"), Queue: [][]byte{{1}}, PeekOff: -1}, true},
		{"abstract listener", &pb.Socket{Type: unix.SOCK_STREAM, Ino: 5, Name: []byte("\x00srv"), Listening: true, Backlog: 5, PeekOff: -1}, true},
		{"relative name", &pb.Socket{Type: unix.SOCK_DGRAM, Ino: 5, Name: []byte("x.sock")}, false},
		{"path with a NUL", &pb.Socket{Type: unix.SOCK_DGRAM, Ino: 5, Name: []byte("/x\x00y")}, false},
		{"name too long", &pb.Socket{Type: unix.SOCK_DGRAM, Ino: 5, Name: append([]byte("/"), bytes.Repeat([]byte("a"), 200)...)}, false},
		{"named and connected", &pb.Socket{Type: unix.SOCK_STREAM, Ino: 5, Name: []byte("/x"), Connected: true}, false},
		{"listening without a name", &pb.Socket{Type: unix.SOCK_STREAM, Ino: 5, Listening: true}, false},
		{"bound stream with data", &pb.Socket{Type: unix.SOCK_STREAM, Ino: 5, Name: []byte("/x"), Queue: [][]byte{{1}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateSocket(&pb.File{Id: 3, Kind: pb.File_SOCKET, Socket: tt.s})
			if tt.ok != (err == nil) {
				t.Fatalf("err = %v, want ok %v", err, tt.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "image damaged") {
				t.Errorf("err = %v, want image damaged", err)
			}
		})
	}
}

// TestOpenSocketPair makes a pair again from its two records: each end
// holds its own data, what was shut down is, and a pair that does not
// match is damage.
func TestOpenSocketPair(t *testing.T) {
	o := NewOpenFiles()
	defer o.Close()
	a := &pb.File{Id: 1, Kind: pb.File_SOCKET, Flags: unix.O_RDWR | unix.O_NONBLOCK, Socket: &pb.Socket{Type: unix.SOCK_DGRAM, Ino: 10, PeerIno: 11, Connected: true,
		Queue: [][]byte{[]byte("to a"), {}}, PeekOff: -1, Rcvbuf: 65536}}
	b := &pb.File{Id: 2, Kind: pb.File_SOCKET, Flags: unix.O_RDWR, Socket: &pb.Socket{Type: unix.SOCK_DGRAM, Ino: 11, PeerIno: 10, Connected: true,
		Queue: [][]byte{[]byte("to b")}, Shutdown: 2, PeekOff: -1}}
	for _, f := range []*pb.File{a, b} {
		if err := o.Add(f); err != nil {
			t.Fatal(err)
		}
	}
	fb, _, err := o.Get(2)
	if err != nil {
		t.Fatal(err)
	}
	fa, _, err := o.Get(1)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	for _, want := range []string{"to a", ""} {
		if n, err := unix.Read(int(fa.Fd()), buf); err != nil || string(buf[:n]) != want {
			t.Errorf("a: read %q, %v; want %q", buf[:max(n, 0)], err, want)
		}
	}
	if _, err := unix.Read(int(fa.Fd()), buf); err != unix.EAGAIN {
		t.Errorf("a: a third read gave %v, want EAGAIN (O_NONBLOCK, nothing left)", err)
	}
	if n, err := unix.Read(int(fb.Fd()), buf); err != nil || string(buf[:n]) != "to b" {
		t.Errorf("b: read %q, %v", buf[:max(n, 0)], err)
	}
	if _, err := unix.Write(int(fb.Fd()), []byte("x")); err != unix.EPIPE {
		t.Errorf("b shut down for writing: write gave %v, want EPIPE", err)
	}
	if v, _ := unix.GetsockoptInt(int(fa.Fd()), unix.SOL_SOCKET, unix.SO_RCVBUF); v != 65536 {
		t.Errorf("a: SO_RCVBUF %d, want 65536", v)
	}

	o2 := NewOpenFiles()
	defer o2.Close()
	c := &pb.File{Id: 1, Kind: pb.File_SOCKET, Socket: &pb.Socket{Type: unix.SOCK_STREAM, Ino: 10, PeerIno: 11, Connected: true, PeekOff: -1}}
	d := &pb.File{Id: 2, Kind: pb.File_SOCKET, Socket: &pb.Socket{Type: unix.SOCK_DGRAM, Ino: 11, PeerIno: 10, Connected: true, PeekOff: -1}}
	o2.Add(c)
	o2.Add(d)
	if _, _, err := o2.Get(1); err == nil || !strings.Contains(err.Error(), "not a pair") {
		t.Errorf("a stream end paired with a datagram end: err = %v", err)
	}
}

// TestInetRoundTrip describes IPv4 and IPv6 sockets as a checkpoint does,
// closes them, and makes them again from the records: same address,
// backlog, peer and options.
func TestInetRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T) int
		check func(t *testing.T, fd int)
	}{
		{"TCP listener", func(t *testing.T) int {
			fd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				t.Fatal(err)
			}
			unix.Listen(fd, 5)
			return fd
		}, func(t *testing.T, fd int) {
			info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
			if err != nil || info.State != tcpListen || info.Sacked != 5 {
				t.Errorf("state %d backlog %d (%v), want listening with 5", info.State, info.Sacked, err)
			}
			if v, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR); v != 1 {
				t.Error("SO_REUSEADDR lost")
			}
		}},
		{"IPv6 UDP connected", func(t *testing.T) int {
			fd, _ := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
			if err := unix.Connect(fd, &unix.SockaddrInet6{Addr: [16]byte{15: 1}, Port: 9}); err != nil {
				t.Fatal(err)
			}
			return fd
		}, func(t *testing.T, fd int) {
			sa, err := unix.Getpeername(fd)
			if p, ok := sa.(*unix.SockaddrInet6); err != nil || !ok || p.Port != 9 || p.Addr != [16]byte{15: 1} {
				t.Errorf("peer %v (%v), want [::1]:9", sa, err)
			}
		}},
		{"unbound TCP", func(t *testing.T) int {
			fd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
			return fd
		}, func(t *testing.T, fd int) {
			if v, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY); v != 1 {
				t.Error("TCP_NODELAY lost")
			}
			if sa, _ := unix.Getsockname(fd); sa.(*unix.SockaddrInet4).Port != 0 {
				t.Error("an unbound socket came back bound")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd := tt.setup(t)
			family, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
			typ, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
			local, _ := unix.Getsockname(fd)
			rec := &pb.File{Id: 1, Kind: pb.File_SOCKET, Socket: &pb.Socket{Type: uint32(typ), Ino: 7}}
			if err := describeInet(fd, family, typ, rec.Socket, "test socket"); err != nil {
				t.Fatal(err)
			}
			if err := readSockOpts(fd, rec.Socket, "test socket"); err != nil {
				t.Fatal(err)
			}
			unix.Close(fd)
			if err := ValidateSocket(rec); err != nil {
				t.Fatal(err)
			}
			o := NewOpenFiles()
			defer o.Close()
			o.Add(rec)
			f, _, err := o.Get(1)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := unix.Getsockname(int(f.Fd()))
			ga, gp, _ := inetAddr(got)
			la, lp, _ := inetAddr(local)
			if inetString(ga, gp) != inetString(la, lp) {
				t.Errorf("local address %v, want %v", got, local)
			}
			tt.check(t, int(f.Fd()))
		})
	}
}

// tcpConn is a saved TCP connection that passes the checks.
func tcpConn() *pb.InetSocket {
	return &pb.InetSocket{Protocol: unix.IPPROTO_TCP, Addr: []byte{127, 0, 0, 1}, Port: 80, PeerAddr: []byte{127, 0, 0, 1}, PeerPort: 4000,
		Tcp: &pb.TcpConnection{SndSeq: 1, RcvSeq: 2, SendQueue: []byte("abc"), SendUnsent: 2, Mss: 65483, Wscale: true, SndWscale: 7, RcvWscale: 7, Window: []uint32{1, 2, 3, 4, 5}}}
}

func TestValidateInet(t *testing.T) {
	good := func() *pb.Socket {
		return &pb.Socket{Family: unix.AF_INET, Type: unix.SOCK_STREAM, Ino: 3, PeekOff: -1,
			Inet: &pb.InetSocket{Protocol: unix.IPPROTO_TCP, Addr: []byte{127, 0, 0, 1}, Port: 80, Listening: true, Backlog: 5}}
	}
	tests := []struct {
		name string
		bend func(s *pb.Socket)
		ok   bool
	}{
		{"listener", func(*pb.Socket) {}, true},
		{"no inet part", func(s *pb.Socket) { s.Inet = nil }, false},
		{"UDP over stream", func(s *pb.Socket) { s.Inet.Protocol = unix.IPPROTO_UDP }, false},
		{"IPv6 family, IPv4 address", func(s *pb.Socket) { s.Family = unix.AF_INET6 }, false},
		{"port 70000", func(s *pb.Socket) { s.Inet.Port = 70000 }, false},
		{"listening unbound", func(s *pb.Socket) { s.Inet.Addr = nil }, false},
		{"data waiting", func(s *pb.Socket) { s.Queue = [][]byte{{1}} }, false},
		{"unix part", func(s *pb.Socket) { s.Connected = true }, false},
		{"family 99", func(s *pb.Socket) { s.Family = 99 }, false},
		{"unix with an address", func(s *pb.Socket) { s.Family = unix.AF_UNIX }, false},
		{"TCP connection", func(s *pb.Socket) { s.Inet = tcpConn() }, true},
		{"TCP connection without a peer", func(s *pb.Socket) { s.Inet = tcpConn(); s.Inet.PeerAddr = nil }, false},
		{"TCP connection, short window", func(s *pb.Socket) { s.Inet = tcpConn(); s.Inet.Tcp.Window = s.Inet.Tcp.Window[:4] }, false},
		{"TCP connection, more unsent than queued", func(s *pb.Socket) { s.Inet = tcpConn(); s.Inet.Tcp.SendUnsent = 9 }, false},
		{"TCP connection, window scale 15", func(s *pb.Socket) { s.Inet = tcpConn(); s.Inet.Tcp.SndWscale = 15 }, false},
		{"listening connection", func(s *pb.Socket) { s.Inet = tcpConn(); s.Inet.Listening = true }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := good()
			tt.bend(s)
			err := ValidateSocket(&pb.File{Id: 2, Kind: pb.File_SOCKET, Socket: s})
			if tt.ok != (err == nil) || (err != nil && !strings.Contains(err.Error(), "image damaged")) {
				t.Fatalf("err = %v, want ok %v", err, tt.ok)
			}
		})
	}
}
