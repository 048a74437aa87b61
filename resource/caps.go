package resource

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// Capabilities. /proc/PID/status shows a thread's five sets. At restart
// the stub is root with ckpt's sets; changing its uids to a non-root user
// would clear them (and root keeps them all), so when the image's sets
// are not what its credentials give, the credentials are changed with
// SECBIT_NO_SETUID_FIXUP (the sets stay as they are) after the
// inheritable set is raised and the bounding set cut down; then the
// ambient set is raised, the securebits set to the image's (read with
// the prctl batch at checkpoint), and capset gives the final sets. A
// process with securebits takes that path even if its sets need none of
// it: after the uid change a non-root stub could no longer set them.

// secbitNoSetuidFixup is SECBIT_NO_SETUID_FIXUP (linux/securebits.h),
// which x/sys/unix does not name.
const secbitNoSetuidFixup = 1 << 2

// readCaps reads the capability sets of st (a status file).
func readCaps(st proc.Status) (*pb.Caps, error) {
	var c pb.Caps
	for _, f := range []struct {
		key string
		v   *uint64
	}{{"CapInh", &c.Inheritable}, {"CapPrm", &c.Permitted}, {"CapEff", &c.Effective}, {"CapBnd", &c.Bounding}, {"CapAmb", &c.Ambient}} {
		v, err := st.Uints(f.key, 16)
		if err != nil || len(v) != 1 {
			return nil, fmt.Errorf("capabilities %s: %q", f.key, st[f.key])
		}
		*f.v = v[0]
	}
	return &c, nil
}

// plainCaps tells whether c is what a process of its uids has without
// having changed its sets: all of the bounding set permitted and
// effective for root, none for others, nothing inheritable or ambient.
func plainCaps(c *pb.Caps, root bool) bool {
	if c.Inheritable != 0 || c.Ambient != 0 {
		return false
	}
	if root {
		return c.Permitted == c.Bounding && c.Effective == c.Bounding
	}
	return c.Permitted == 0 && c.Effective == 0
}

// ReadSelfCaps reads the capability sets of the calling thread (ckpt's,
// which the stubs it starts inherit) with capget and prctl, faster than
// /proc/self/status (~20 against ~60 µs here).
func ReadSelfCaps() (*pb.Caps, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("read ckpt's capabilities: %w", err)
	}
	c := &pb.Caps{
		Inheritable: uint64(data[0].Inheritable) | uint64(data[1].Inheritable)<<32,
		Permitted:   uint64(data[0].Permitted) | uint64(data[1].Permitted)<<32,
		Effective:   uint64(data[0].Effective) | uint64(data[1].Effective)<<32,
	}
	for n := 0; n < 64; n++ {
		in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(n), 0, 0, 0)
		if err != nil {
			break // past the last capability this kernel knows
		}
		if in == 1 {
			c.Bounding |= 1 << n
		}
		if c.Inheritable&(1<<n) == 0 {
			continue // ambient capabilities are inheritable ones
		}
		if amb, err := unix.PrctlRetInt(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_IS_SET, uintptr(n), 0, 0); err == nil && amb == 1 {
			c.Ambient |= 1 << n
		}
	}
	return c, nil
}

// sameCaps compares two sets field by field: proto.Equal would build the
// messages' reflection on its first call, ~0.4 ms of a restart.
func sameCaps(a, b *pb.Caps) bool {
	return a.Inheritable == b.Inheritable && a.Permitted == b.Permitted && a.Effective == b.Effective &&
		a.Bounding == b.Bounding && a.Ambient == b.Ambient
}

// checkThreadCaps refuses a process whose threads' sets differ from its
// main thread's c: the image keeps one copy. A thread's status file
// costs ~20 µs; a process with one thread (threads, from its status)
// pays nothing.
func checkThreadCaps(pid int, threads string, c *pb.Caps) error {
	if threads == "1" {
		return nil
	}
	tids, err := proc.Tasks(pid)
	if err != nil {
		return err
	}
	for _, tid := range tids[1:] {
		b, err := proc.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", pid, tid))
		if proc.Gone(err) {
			continue // killed meanwhile: it is not in the image either
		}
		if err != nil {
			return err
		}
		tc, err := readCaps(proc.ParseStatus(b))
		if err != nil {
			return err
		}
		if !sameCaps(tc, c) {
			return fmt.Errorf("thread %d of process %d has capabilities of its own (CapEff %016x, the process %016x): %w yet", tid, pid, tc.Effective, c.Effective, ErrUnsupported)
		}
	}
	return nil
}

// rootness is how many of a thread's uids are 0.
type rootness int

const (
	allRoot rootness = iota // real, effective, saved and filesystem uid 0
	noRoot                  // none of them
	someRoot
)

// rootnessOf tells c's rootness.
func rootnessOf(c *pb.Creds) rootness {
	switch n := countZero(c.Uid, c.Euid, c.Suid, c.Fsuid); n {
	case 4:
		return allRoot
	case 0:
		return noRoot
	}
	return someRoot
}

func countZero(ids ...uint32) int {
	n := 0
	for _, id := range ids {
		if id == 0 {
			n++
		}
	}
	return n
}

// capsCalls are the calls that give a stub thread, whose sets are now
// cur, the sets want around the credential changes ids (root says how
// many of the new uids are 0): ids alone when they give them.
func capsCalls(cur, want *pb.Caps, root rootness, ids []Call, d *batchData, securebits uint32) ([]Call, error) {
	if want == nil {
		return ids, nil
	}
	// What the uid changes alone leave (the stub is root): all of it to
	// a root whose uids are all 0, none of the permitted, effective and
	// ambient sets to a user whose uids are all other. Mixed uids take
	// the whole sequence below, which gives want whatever they are.
	var after *pb.Caps
	switch root {
	case allRoot:
		after = cur
	case noRoot:
		after = &pb.Caps{Inheritable: cur.Inheritable, Bounding: cur.Bounding}
	}
	if after != nil && sameCaps(after, want) && securebits == 0 {
		return ids, nil
	}
	if drop := want.Bounding &^ cur.Bounding; drop != 0 {
		return nil, fmt.Errorf("bounding set %016x has capabilities ckpt lacks (%016x): restart as root with them", want.Bounding, drop)
	}
	// Keep the sets through the uid changes. The inheritable set goes
	// before the bounding set is cut (it may hold capabilities the
	// bounding set lost later, as it did in the process), and both take
	// CAP_SETPCAP, which the stub still has.
	raise, err := capsetCall(d, &pb.Caps{Inheritable: want.Inheritable, Permitted: cur.Permitted, Effective: cur.Effective}, "inheritable")
	if err != nil {
		return nil, err
	}
	calls := []Call{{Nr: unix.SYS_PRCTL, Args: []uint64{unix.PR_SET_SECUREBITS, secbitNoSetuidFixup},
		Err: func(err error) error { return fmt.Errorf("keep capabilities through the uid change: %w", err) }}, raise}
	for drop := cur.Bounding &^ want.Bounding; drop != 0; drop &= drop - 1 {
		n := uint64(bits.TrailingZeros64(drop))
		calls = append(calls, Call{Nr: unix.SYS_PRCTL, Args: []uint64{unix.PR_CAPBSET_DROP, n},
			Err: func(err error) error { return fmt.Errorf("drop capability %d from the bounding set: %w", n, err) }})
	}
	calls = append(calls, ids...)
	// Then the ambient capabilities (which must be permitted and
	// inheritable), the image's securebits (still with CAP_SETPCAP), and
	// the final sets.
	for amb := want.Ambient; amb != 0; amb &= amb - 1 {
		n := uint64(bits.TrailingZeros64(amb))
		calls = append(calls, Call{Nr: unix.SYS_PRCTL, Args: []uint64{unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, n},
			Err: func(err error) error { return fmt.Errorf("raise ambient capability %d: %w", n, err) }})
	}
	calls = append(calls, Call{Nr: unix.SYS_PRCTL, Args: []uint64{unix.PR_SET_SECUREBITS, uint64(securebits)},
		Err: func(err error) error { return fmt.Errorf("set the securebits %#x: %w", securebits, err) }})
	final, err := capsetCall(d, want, "permitted and effective")
	if err != nil {
		return nil, err
	}
	return append(calls, final), nil
}

// capsetCall is a capset(2) of c's inheritable, permitted and effective
// sets for the calling thread, its arguments put with d.
func capsetCall(d *batchData, c *pb.Caps, what string) (Call, error) {
	b := make([]byte, 8+2*12)
	le := binary.LittleEndian
	le.PutUint32(b, unix.LINUX_CAPABILITY_VERSION_3) // pid 0: the caller
	for i, shift := range []uint{0, 32} {
		e := b[8+12*i:]
		le.PutUint32(e, uint32(c.Effective>>shift))
		le.PutUint32(e[4:], uint32(c.Permitted>>shift))
		le.PutUint32(e[8:], uint32(c.Inheritable>>shift))
	}
	addr, err := d.put(b)
	if err != nil {
		return Call{}, err
	}
	return Call{Nr: unix.SYS_CAPSET, Args: []uint64{addr, addr + 8},
		Err: func(err error) error {
			return fmt.Errorf("set capabilities (%s): effective %016x permitted %016x inheritable %016x: %w", what, c.Effective, c.Permitted, c.Inheritable, err)
		}}, nil
}
