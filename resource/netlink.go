package resource

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// This file is the small rtnetlink client that netns.go needs: requests
// with an acknowledgement, dumps, and attribute encoding and decoding.
// Everything the kernel sends back is bounds-checked before use; rtnetlink
// speaks the host's byte order.

var ne = binary.NativeEndian

// nlMaxDump bounds the bytes one dump may return; a namespace with that much
// configuration is refused rather than held in memory.
const nlMaxDump = 64 << 20

// nlAttr is one netlink attribute; typ has the nested/byte-order bits removed.
type nlAttr struct {
	typ uint16
	val []byte
}

func nlAlign(n int) int { return (n + 3) &^ 3 }

// parseAttrs splits b into attributes, checking every length.
func parseAttrs(b []byte) ([]nlAttr, error) {
	var out []nlAttr
	for len(b) > 0 {
		if len(b) < unix.SizeofRtAttr {
			return nil, fmt.Errorf("netlink attribute truncated (%d bytes left)", len(b))
		}
		l := int(ne.Uint16(b[0:2]))
		if l < unix.SizeofRtAttr || l > len(b) {
			return nil, fmt.Errorf("netlink attribute of length %d with %d bytes left", l, len(b))
		}
		typ := ne.Uint16(b[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		out = append(out, nlAttr{typ: typ, val: b[unix.SizeofRtAttr:l]})
		b = b[min(nlAlign(l), len(b)):]
	}
	return out, nil
}

func (a nlAttr) u32() (uint32, error) {
	if len(a.val) < 4 {
		return 0, fmt.Errorf("netlink attribute %d: %d bytes, want 4", a.typ, len(a.val))
	}
	return ne.Uint32(a.val), nil
}

func (a nlAttr) u8() (uint8, error) {
	if len(a.val) < 1 {
		return 0, fmt.Errorf("netlink attribute %d is empty", a.typ)
	}
	return a.val[0], nil
}

// str returns a NUL-terminated string attribute without its NUL.
func (a nlAttr) str() string {
	s, _, _ := strings.Cut(string(a.val), "\x00")
	return s
}

func (a nlAttr) bytes() []byte { return append([]byte(nil), a.val...) }

// nlMsg builds a request body: a fixed header, then attributes.
type nlMsg struct{ b []byte }

func (m *nlMsg) attr(typ uint16, val []byte) {
	l := unix.SizeofRtAttr + len(val)
	m.b = ne.AppendUint16(m.b, uint16(l))
	m.b = ne.AppendUint16(m.b, typ)
	m.b = append(m.b, val...)
	m.b = append(m.b, make([]byte, nlAlign(l)-l)...)
}

func (m *nlMsg) u32(typ uint16, v uint32) { m.attr(typ, ne.AppendUint32(nil, v)) }
func (m *nlMsg) u8(typ uint16, v uint8)   { m.attr(typ, []byte{v}) }
func (m *nlMsg) str(typ uint16, s string) { m.attr(typ, append([]byte(s), 0)) }

// nest adds a nested attribute whose content fill appends.
func (m *nlMsg) nest(typ uint16, fill func()) {
	start := len(m.b)
	m.b = append(m.b, 0, 0, 0, 0)
	fill()
	ne.PutUint16(m.b[start:], uint16(len(m.b)-start))
	ne.PutUint16(m.b[start+2:], typ|unix.NLA_F_NESTED)
}

// nlError is an error the kernel answered a request with, plus its
// extended-ack message when it gave one. It unwraps to the errno.
type nlError struct {
	errno unix.Errno
	msg   string
}

func (e *nlError) Error() string {
	if e.msg != "" {
		return e.errno.Error() + " (" + e.msg + ")"
	}
	return e.errno.Error()
}

func (e *nlError) Unwrap() error { return e.errno }

// rtnl is an rtnetlink socket. It belongs to the network namespace of the
// thread that opened it, wherever it is used afterwards.
type rtnl struct {
	fd  int
	seq uint32
	buf []byte
}

func dialRtnl() (*rtnl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("rtnetlink socket: %w", err)
	}
	// Error messages and short acknowledgements; both are optional.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	// The kernel answers at once; a bound wait turns a lost answer into an error.
	tv := unix.Timeval{Sec: 10}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind rtnetlink socket: %w", err)
	}
	return &rtnl{fd: fd, buf: make([]byte, 1<<20)}, nil
}

func (c *rtnl) close() { unix.Close(c.fd) }

func (c *rtnl) send(typ, flags uint16, body []byte) (uint32, error) {
	c.seq++
	msg := make([]byte, 0, unix.NLMSG_HDRLEN+len(body))
	msg = ne.AppendUint32(msg, uint32(unix.NLMSG_HDRLEN+len(body)))
	msg = ne.AppendUint16(msg, typ)
	msg = ne.AppendUint16(msg, flags|unix.NLM_F_REQUEST)
	msg = ne.AppendUint32(msg, c.seq)
	msg = ne.AppendUint32(msg, 0)
	msg = append(msg, body...)
	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, err
	}
	return c.seq, nil
}

// errDumpInterrupted says the configuration changed during a dump.
var errDumpInterrupted = errors.New("dump interrupted by a concurrent change")

// receive reads the answer to request seq, handing every data message to f,
// until the acknowledgement (or, for a dump, NLMSG_DONE) arrives.
func (c *rtnl) receive(seq uint32, f func(typ uint16, data []byte) error) error {
	intr := false
	for {
		n, _, rflags, from, err := unix.Recvmsg(c.fd, c.buf, nil, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("rtnetlink receive: %w", err)
		}
		if rflags&unix.MSG_TRUNC != 0 {
			return fmt.Errorf("rtnetlink message larger than %d bytes", len(c.buf))
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // not from the kernel
		}
		b := c.buf[:n]
		for len(b) > 0 {
			if len(b) < unix.NLMSG_HDRLEN {
				return fmt.Errorf("rtnetlink message header truncated (%d bytes)", len(b))
			}
			l := int(ne.Uint32(b[0:4]))
			typ, flags, s := ne.Uint16(b[4:6]), ne.Uint16(b[6:8]), ne.Uint32(b[8:12])
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return fmt.Errorf("rtnetlink message of length %d with %d bytes left", l, len(b))
			}
			data := b[unix.NLMSG_HDRLEN:l]
			b = b[min(nlAlign(l), len(b)):]
			if s != seq {
				continue
			}
			if flags&unix.NLM_F_DUMP_INTR != 0 {
				intr = true
			}
			switch typ {
			case unix.NLMSG_NOOP:
			case unix.NLMSG_DONE:
				if len(data) >= 4 {
					if e := int32(ne.Uint32(data)); e < 0 {
						return &nlError{errno: unix.Errno(-e)}
					}
				}
				if intr {
					return errDumpInterrupted
				}
				return nil
			case unix.NLMSG_ERROR:
				return parseNlError(flags, data)
			default:
				if err := f(typ, data); err != nil {
					return err
				}
			}
		}
	}
}

// parseNlError reads an NLMSG_ERROR payload: errno, the echoed request
// header (and body unless capped), then extended-ack attributes.
func parseNlError(flags uint16, data []byte) error {
	if len(data) < 4 {
		return fmt.Errorf("rtnetlink error message truncated")
	}
	e := int32(ne.Uint32(data))
	if e == 0 {
		return nil
	}
	if e > 0 {
		return fmt.Errorf("rtnetlink error message with positive code %d", e)
	}
	nerr := &nlError{errno: unix.Errno(-e)}
	rest := data[4:]
	if flags&unix.NLM_F_ACK_TLVS == 0 || len(rest) < unix.NLMSG_HDRLEN {
		return nerr
	}
	echoed := unix.NLMSG_HDRLEN
	if flags&unix.NLM_F_CAPPED == 0 {
		echoed = int(ne.Uint32(rest))
	}
	if echoed < unix.NLMSG_HDRLEN || nlAlign(echoed) > len(rest) {
		return nerr
	}
	attrs, err := parseAttrs(rest[nlAlign(echoed):])
	if err != nil {
		return nerr
	}
	for _, a := range attrs {
		if a.typ == unix.NLMSGERR_ATTR_MSG {
			nerr.msg = a.str()
		}
	}
	return nerr
}

// do sends a request and waits for its acknowledgement.
func (c *rtnl) do(typ, flags uint16, body []byte) error {
	seq, err := c.send(typ, flags|unix.NLM_F_ACK, body)
	if err != nil {
		return err
	}
	return c.receive(seq, func(uint16, []byte) error { return nil })
}

// dump returns the payloads of every message a dump request answers with,
// repeating the dump (a few times) if a concurrent change interrupted it.
func (c *rtnl) dump(typ uint16, body []byte) ([][]byte, error) {
	for try := 0; ; try++ {
		seq, err := c.send(typ, unix.NLM_F_DUMP, body)
		if err != nil {
			return nil, err
		}
		var msgs [][]byte
		total := 0
		err = c.receive(seq, func(_ uint16, data []byte) error {
			total += len(data)
			if total > nlMaxDump {
				return fmt.Errorf("rtnetlink dump larger than %d MiB", nlMaxDump>>20)
			}
			msgs = append(msgs, append([]byte(nil), data...))
			return nil
		})
		if err == errDumpInterrupted && try < 5 {
			continue
		}
		return msgs, err
	}
}
