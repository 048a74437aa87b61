package resource

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// NsKind describes one kind of namespace: its /proc/PID/ns name and its
// clone flag.
type NsKind struct {
	Name string
	Flag uint64
	Kind pb.Namespace_Kind
	get  func(*pb.NsIds) uint64
	set  func(*pb.NsIds, uint64)
}

// NsKinds are the namespace kinds ckpt records, in the order restart
// creates them.
var NsKinds = []NsKind{
	{"user", unix.CLONE_NEWUSER, pb.Namespace_UNKNOWN, (*pb.NsIds).GetUser, func(n *pb.NsIds, v uint64) { n.User = v }},
	{"pid", unix.CLONE_NEWPID, pb.Namespace_PID, (*pb.NsIds).GetPid, func(n *pb.NsIds, v uint64) { n.Pid = v }},
	{"mnt", unix.CLONE_NEWNS, pb.Namespace_MNT, (*pb.NsIds).GetMnt, func(n *pb.NsIds, v uint64) { n.Mnt = v }},
	{"uts", unix.CLONE_NEWUTS, pb.Namespace_UTS, (*pb.NsIds).GetUts, func(n *pb.NsIds, v uint64) { n.Uts = v }},
	{"ipc", unix.CLONE_NEWIPC, pb.Namespace_IPC, (*pb.NsIds).GetIpc, func(n *pb.NsIds, v uint64) { n.Ipc = v }},
	{"net", unix.CLONE_NEWNET, pb.Namespace_NET, (*pb.NsIds).GetNet, func(n *pb.NsIds, v uint64) { n.Net = v }},
	{"time", unix.CLONE_NEWTIME, pb.Namespace_TIME, (*pb.NsIds).GetTime, func(n *pb.NsIds, v uint64) { n.Time = v }},
	{"cgroup", unix.CLONE_NEWCGROUP, pb.Namespace_UNKNOWN, (*pb.NsIds).GetCgroup, func(n *pb.NsIds, v uint64) { n.Cgroup = v }},
}

// Get returns the id of this kind in ids.
func (k NsKind) Get(ids *pb.NsIds) uint64 { return k.get(ids) }

// ReadNsIds reads the namespaces of pid (0: ckpt itself). It reads the
// /proc/PID/ns links ("net:[4026531833]"), whose number is the namespace's
// inode: a readlink costs about half a stat of the same link here, and a
// checkpoint reads a dozen sets.
func ReadNsIds(pid int) (*pb.NsIds, error) {
	ids := &pb.NsIds{}
	dir := "/proc/self/ns/"
	if pid != 0 {
		dir = proc.Path(pid, "ns/")
	}
	var buf [64]byte
	for _, k := range NsKinds {
		n, err := unix.Readlink(dir+k.Name, buf[:])
		if err != nil {
			return nil, fmt.Errorf("%s namespace of %d: %w", k.Name, pid, err)
		}
		id, ok := nsLinkID(string(buf[:n]))
		if !ok {
			return nil, fmt.Errorf("%s namespace of %d: unexpected link %q", k.Name, pid, buf[:n])
		}
		k.set(ids, id)
	}
	return ids, nil
}

// nsLinkID is the inode number in a namespace link's text, "kind:[N]".
func nsLinkID(link string) (uint64, bool) {
	_, id, ok := proc.LinkID([]byte(link))
	return id, ok
}

// NewNamespaces returns the clone flags that give a process the
// namespaces of want that differ from those of have (its parent's).
func NewNamespaces(have, want *pb.NsIds) uint64 {
	var flags uint64
	for _, k := range NsKinds {
		if k.get(want) != k.get(have) {
			flags |= k.Flag
		}
	}
	return flags
}

// PreflightNamespaces refuses namespaces that ckpt cannot re-create.
// have are the parent's namespaces (ckpt's for the root), want pid's own
// (ReadNsIds); container tells
// whether pid is the root of a --container checkpoint.
func PreflightNamespaces(pid int, have, want *pb.NsIds, root, container bool) error {
	for _, k := range NsKinds {
		if k.get(want) == k.get(have) {
			continue
		}
		switch {
		case k.Kind == pb.Namespace_UNKNOWN:
			return fmt.Errorf("process %d is in a %s namespace of its own: %w yet; run ckpt inside that namespace", pid, k.Name, ErrUnsupported)
		case k.Kind == pb.Namespace_PID && !(root && container):
			if root {
				return fmt.Errorf("process %d is in a PID namespace of its own: checkpoint it as a container (ckpt checkpoint --container)", pid)
			}
			return fmt.Errorf("process %d starts a nested PID namespace: %w yet", pid, ErrUnsupported)
		case (k.Kind == pb.Namespace_TIME || k.Kind == pb.Namespace_MNT) && !root:
			return fmt.Errorf("process %d starts a nested time namespace: %w yet", pid, ErrUnsupported)
		}
	}
	// A process that called unshare(CLONE_NEWPID/NEWTIME) but has no child
	// there yet would give its next children a namespace we do not record.
	// want holds its own namespaces: only the links for children are read.
	for _, k := range []struct {
		name string
		id   uint64
	}{{"pid", want.Pid}, {"time", want.Time}} {
		b, err := os.Readlink(proc.Path(pid, "ns/"+k.name+"_for_children"))
		if id, ok := nsLinkID(b); err == nil && ok && id != k.id {
			return fmt.Errorf("process %d has unshared a %s namespace for its children (%s): %w yet", pid, k.name, b, ErrUnsupported)
		}
	}
	return nil
}

// DumpNamespace reads the state of one namespace of pid that restart
// re-creates itself (UTS names, time offsets); other kinds only need
// their id here.
func DumpNamespace(pid int, k NsKind, id uint64) (*pb.Namespace, error) {
	ns := &pb.Namespace{Kind: k.Kind, Id: id}
	switch k.Kind {
	case pb.Namespace_UTS:
		var uts unix.Utsname
		err := inNamespace(pid, "uts", func() error { return unix.Uname(&uts) })
		if err != nil {
			return nil, fmt.Errorf("read UTS namespace of %d: %w", pid, err)
		}
		ns.Hostname = unix.ByteSliceToString(uts.Nodename[:])
		ns.Domainname = unix.ByteSliceToString(uts.Domainname[:])
	case pb.Namespace_TIME:
		b, err := os.ReadFile(proc.Path(pid, "timens_offsets"))
		if err != nil {
			return nil, fmt.Errorf("read time namespace of %d: %w", pid, err)
		}
		if ns.MonotonicOffsetNs, ns.BoottimeOffsetNs, err = parseTimensOffsets(string(b)); err != nil {
			return nil, fmt.Errorf("time namespace of %d: %w", pid, err)
		}
	}
	return ns, nil
}

// parseTimensOffsets reads /proc/PID/timens_offsets ("monotonic S NS").
func parseTimensOffsets(text string) (mono, boot int64, err error) {
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			return 0, 0, fmt.Errorf("unexpected timens_offsets line %q", line)
		}
		sec, err1 := strconv.ParseInt(f[1], 10, 64)
		nsec, err2 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, 0, fmt.Errorf("unexpected timens_offsets line %q", line)
		}
		switch f[0] {
		case "monotonic":
			mono = sec*1e9 + nsec
		case "boottime":
			boot = sec*1e9 + nsec
		}
	}
	return mono, boot, nil
}

// RestoreUTS sets the host and domain name of the (new) UTS namespace of
// pid.
func RestoreUTS(pid int, ns *pb.Namespace) error {
	if len(ns.Hostname) > 64 || len(ns.Domainname) > 64 {
		return fmt.Errorf("image damaged: UTS names longer than 64 bytes")
	}
	err := inNamespace(pid, "uts", func() error {
		if err := unix.Sethostname([]byte(ns.Hostname)); err != nil {
			return fmt.Errorf("sethostname %q: %w", ns.Hostname, err)
		}
		if err := unix.Setdomainname([]byte(ns.Domainname)); err != nil {
			return fmt.Errorf("setdomainname %q: %w", ns.Domainname, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("restore UTS namespace: %w", err)
	}
	return nil
}

// RestoreTimeOffsets writes the offsets of the time namespace that pid
// has unshared for its children, before any process is in it.
func RestoreTimeOffsets(pid int, ns *pb.Namespace) error {
	return WriteTimeOffsets(proc.Path(pid, "timens_offsets"), ns)
}

// WriteTimeOffsets writes ns's offsets into a timens_offsets file (path).
func WriteTimeOffsets(path string, ns *pb.Namespace) error {
	split := func(off int64) (int64, int64) {
		sec, nsec := off/1e9, off%1e9
		if nsec < 0 {
			sec, nsec = sec-1, nsec+1e9
		}
		return sec, nsec
	}
	ms, mn := split(ns.MonotonicOffsetNs)
	bs, bn := split(ns.BoottimeOffsetNs)
	text := fmt.Sprintf("monotonic %d %d\nboottime %d %d\n", ms, mn, bs, bn)
	if err := os.WriteFile(path, []byte(text), 0); err != nil {
		return fmt.Errorf("restore time namespace offsets: %w", err)
	}
	return nil
}

// inNamespace runs fn on an OS thread that has joined the kind namespace
// of pid (see onOwnThread).
func inNamespace(pid int, kind string, fn func() error) error {
	return onOwnThread(func() error {
		fd, err := unix.Open(proc.Path(pid, "ns/"+kind), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		err = unix.Setns(fd, 0)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("join %s namespace of %d: %w", kind, pid, err)
		}
		return fn()
	})
}

// onOwnThread runs fn on an OS thread of its own, which fn may change
// (namespaces, credentials): the thread is never unlocked, so the Go
// runtime throws it away when the goroutine ends and no other goroutine
// ever runs on it.
//
// The main thread is never used: the runtime cannot end it, and /proc/self
// (as opposed to /proc/thread-self) shows its namespaces and credentials,
// which must stay ckpt's own. When the goroutine lands on it, it keeps the
// main thread locked, unchanged, while a second goroutine (which thus
// cannot get the main thread) does the work.
func onOwnThread(fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() != unix.Getpid() {
			done <- fn()
			return // still locked: the thread ends here
		}
		inner := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			inner <- fn()
		}()
		done <- <-inner
		runtime.UnlockOSThread() // the main thread, untouched
	}()
	return <-done
}
