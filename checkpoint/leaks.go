package checkpoint

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
	"github.com/ckpt/ckpt/resource"
)

// Leak detection, after the seed: what the checkpointed processes share
// with a process outside them cannot come back shared after a restart. A
// container must share nothing (the checkpoint fails, naming every leak);
// a subtree may, with a warning, and the image records the leaks.
//
// The checkpointer scans every other process of the machine: its
// namespaces, its descriptors (a pipe with an end inside; an open file
// description an inside process holds too, by kcmp; a shared memory object
// of the inside) and, when the inside has shared memory, its mappings.
// Terminals and the null/zero/random devices are not leaks: their sharing
// carries no state, and restart hands terminals over on purpose.

// insideRef is one descriptor of an inside process.
type insideRef struct{ pid, fd int }

// leakFinder holds what the inside holds, for the scan of the outside.
type leakFinder struct {
	inside map[int]bool
	// ns are the namespaces the image re-creates: kind name -> id.
	ns map[string]uint64
	// pipes by inode, other files by (dev, ino) for a kcmp check, and
	// shared memory objects by (dev, ino).
	pipes map[uint64]insideRef
	files map[[2]uint64][]insideRef
	shmem map[[2]uint64]insideRef
	// sysv are the SysV segments attached inside (shmid -> pid), when the
	// inside shares ckpt's IPC namespace.
	sysv map[uint64]int
	// links are the /proc/PID/fd link texts of the inside's files: an
	// outside descriptor on the same open file has the same text, so only
	// those are looked at closer (see scanOne). statAll says that cannot
	// do: the inside holds a named FIFO or a shared memory file, which a
	// separate open, under another path, shares too.
	links   map[string]bool
	statAll bool
}

// insideProc is what the leak scan needs to know of an inside process.
type insideProc struct {
	pid    int
	fds    []resource.FdRef
	shared []proc.Vma // its shared mappings of files (see sharedFileMaps)
}

// readInside reads the descriptors and shared mappings of pid; nothing
// for a process that is gone.
func readInside(pid int) (insideProc, error) {
	in := insideProc{pid: pid}
	fds, err := resource.FdRefs(pid)
	if err != nil && !proc.Gone(err) && !errors.Is(err, os.ErrPermission) {
		return in, err
	}
	in.fds, in.shared = fds, sharedMaps(pid)
	return in, nil
}

// newLeakFinder records the inside: its processes pids (ckpt's PIDs),
// what those alive hold, and the namespaces of their own (kind -> id).
func newLeakFinder(pids []int, inside []insideProc, ns map[string]uint64, hostIPC bool) *leakFinder {
	lf := &leakFinder{inside: map[int]bool{}, ns: ns, pipes: map[uint64]insideRef{},
		files: map[[2]uint64][]insideRef{}, shmem: map[[2]uint64]insideRef{}, sysv: map[uint64]int{}, links: map[string]bool{}}
	for _, pid := range pids {
		lf.inside[pid] = true
	}
	for _, in := range inside {
		pid := in.pid
		for i := range in.fds {
			fd, link, st := in.fds[i].Fd, in.fds[i].Link, &in.fds[i].Stat
			if noState(st) {
				continue
			}
			ref := insideRef{pid, fd}
			key := [2]uint64{st.Dev, st.Ino}
			if link != "" {
				lf.links[link] = true
			}
			switch {
			case st.Mode&unix.S_IFMT == unix.S_IFIFO:
				lf.pipes[st.Ino] = ref
				if _, anon := pipeLinkInode([]byte(link)); !anon {
					lf.statAll = true
				}
			case isShmemName(link):
				lf.shmem[key] = ref
				lf.statAll = true
			default:
				lf.files[key] = append(lf.files[key], ref)
			}
		}
		for _, v := range in.shared {
			if hostIPC && resource.SysvVma(&v) != nil {
				lf.sysv[v.Inode] = pid
			} else if isShmemName(v.Name) {
				lf.shmem[[2]uint64{unix.Mkdev(v.Major, v.Minor), v.Inode}] = insideRef{pid, -1}
			}
		}
	}
	return lf
}

// noState tells descriptors whose sharing carries no state (see
// resource.StatelessDevice).
func noState(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && resource.StatelessDevice(st.Rdev)
}

// pipeLinkInode is the inode of an anonymous pipe's link text,
// "pipe:[N]".
func pipeLinkInode(link []byte) (uint64, bool) {
	if kind, ino, ok := proc.LinkID(link); ok && string(kind) == "pipe" {
		return ino, true
	}
	return 0, false
}

// isShmemName tells the names of shared memory objects in /proc: those
// ckpt restores as shared memory, and POSIX shared memory files.
func isShmemName(name string) bool {
	return resource.IsShmemName(name) || strings.HasPrefix(name, "/dev/shm/")
}

// fdStats calls fn for each descriptor of pid, in order, with what it
// refers to; nothing for a process that is gone or not ckpt's to look at.
func fdStats(pid int, fn func(fd int, st *unix.Stat_t)) error {
	fds, sts, err := resource.FdStats(pid, true)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) || errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return err
	}
	for i, fd := range fds {
		if sts[i].Mode != 0 { // 0: closed meanwhile
			fn(fd, &sts[i])
		}
	}
	return nil
}

// scan looks at every process outside and returns what it shares with
// the inside, at most one leak per object and outside process.
func (lf *leakFinder) scan() ([]*pb.Leak, error) {
	self := os.Getpid()
	kthreads := kernelThreads()
	var leaks []*pb.Leak
	err := proc.EachPid(func(pid int) {
		if pid != self && !lf.inside[pid] && !kthreads[pid] {
			// ckpt's own children (the repair-mode guard, which holds
			// copies of TCP connections) share what ckpt shares.
			if l := lf.scanOne(pid); len(l) > 0 && !childOf(pid, self) {
				leaks = append(leaks, l...)
			}
		}
	})
	if err != nil {
		return nil, err
	}
	sort.SliceStable(leaks, func(i, j int) bool { return leaks[i].Pid < leaks[j].Pid })
	return leaks, nil
}

// childOf tells whether pid is a child of parent.
func childOf(pid, parent int) bool {
	st, err := proc.ReadStat(pid)
	return err == nil && st.Ppid == parent
}

// kernelThreads lists the kernel threads, which have no namespaces and no
// descriptors to look at: the children of kthreadd, when PID 2 is kthreadd
// (it is not inside a PID namespace): often a third of a machine's
// processes, each an open and a read of an empty directory saved.
func kernelThreads() map[int]bool {
	st, err := proc.ReadStat(2)
	if err != nil || !st.KernelThread() {
		return nil
	}
	b, err := proc.ReadFile(proc.Path(2, "task/2/children"))
	if err != nil {
		return nil
	}
	out := map[int]bool{2: true}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			out[pid] = true
		}
	}
	return out
}

func (lf *leakFinder) scanOne(pid int) []*pb.Leak {
	var out []*pb.Leak
	seen := map[string]bool{}
	comm := ""
	add := func(in int, what string) {
		if seen[what] {
			return
		}
		seen[what] = true
		if comm == "" {
			b, _ := proc.ReadFile(proc.Path(pid, "comm"))
			comm = strings.TrimSpace(string(b))
		}
		out = append(out, &pb.Leak{Pid: uint32(in), What: what, OutsidePid: uint32(pid), OutsideComm: comm})
	}
	for kind, id := range lf.ns {
		var st unix.Stat_t
		if unix.Stat(proc.Path(pid, "ns/"+kind), &st) == nil && st.Ino == id {
			add(0, fmt.Sprintf("%s namespace %d", kind, id))
		}
	}
	check := func(fd int, st *unix.Stat_t) {
		if noState(st) {
			return
		}
		key := [2]uint64{st.Dev, st.Ino}
		if st.Mode&unix.S_IFMT == unix.S_IFIFO {
			if ref, ok := lf.pipes[st.Ino]; ok {
				add(ref.pid, fmt.Sprintf("pipe:[%d] (fd %d inside)", st.Ino, ref.fd))
			}
			return
		}
		if ref, ok := lf.shmem[key]; ok {
			add(ref.pid, fmt.Sprintf("shared memory %s", describeShmem(ref, st.Ino)))
			return
		}
		for _, ref := range lf.files[key] {
			r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(ref.pid), uintptr(pid), 0 /* KCMP_FILE */, uintptr(ref.fd), uintptr(fd), 0)
			if errno == 0 && r == 0 {
				target, _ := os.Readlink(proc.Path(ref.pid, "fd/"+strconv.Itoa(ref.fd)))
				add(ref.pid, fmt.Sprintf("open file %s (fd %d inside, %d outside)", target, ref.fd, fd))
				break
			}
		}
	}
	if lf.statAll {
		fdStats(pid, check)
	} else {
		// An anonymous pipe is known by its link, and any other open file
		// the inside holds has the same link text in every process: stat
		// only the descriptors whose text is one of the inside's.
		proc.EachFdLink(pid, func(fd int, link []byte) {
			if ino, ok := pipeLinkInode(link); ok {
				if ref, ok := lf.pipes[ino]; ok {
					add(ref.pid, fmt.Sprintf("pipe:[%d] (fd %d inside)", ino, ref.fd))
				}
				return
			}
			if !lf.links[string(link)] {
				return
			}
			var st unix.Stat_t
			if unix.Stat(proc.Path(pid, "fd/"+strconv.Itoa(fd)), &st) == nil {
				check(fd, &st)
			}
		})
	}
	if len(lf.shmem) > 0 || len(lf.sysv) > 0 {
		for _, v := range sharedMaps(pid) {
			if in, ok := lf.sysv[v.Inode]; ok && resource.SysvVma(&v) != nil {
				add(in, fmt.Sprintf("SysV shared memory segment %d", v.Inode))
			} else if ref, ok := lf.shmem[[2]uint64{unix.Mkdev(v.Major, v.Minor), v.Inode}]; ok {
				add(ref.pid, fmt.Sprintf("shared memory %s", describeShmem(ref, v.Inode)))
			}
		}
	}
	return out
}

func describeShmem(ref insideRef, ino uint64) string {
	if ref.fd >= 0 {
		target, _ := os.Readlink(proc.Path(ref.pid, "fd/"+strconv.Itoa(ref.fd)))
		return fmt.Sprintf("%s (fd %d inside)", target, ref.fd)
	}
	return fmt.Sprintf("inode %d (mapped inside)", ino)
}

// describeLeaks says what is shared with whom, one clause per inside
// object, its outside holders together.
func describeLeaks(leaks []*pb.Leak) string {
	return strings.Join(leakLines(leaks), "; ")
}

// leakLines groups leaks by inside object.
func leakLines(leaks []*pb.Leak) []string {
	type key struct {
		pid  uint32
		what string
	}
	var order []key
	holders := map[key][]string{}
	for _, l := range leaks {
		k := key{l.Pid, l.What}
		if holders[k] == nil {
			order = append(order, k)
		}
		holders[k] = append(holders[k], fmt.Sprintf("%d (%s)", l.OutsidePid, l.OutsideComm))
	}
	var out []string
	for _, k := range order {
		who := strings.Join(holders[k], ", ")
		if k.pid != 0 {
			out = append(out, fmt.Sprintf("process %d shares %s with %s outside", k.pid, k.what, who))
		} else {
			out = append(out, fmt.Sprintf("%s outside the tree %s in its %s", who, map[bool]string{true: "is", false: "are"}[len(holders[k]) == 1], k.what))
		}
	}
	return out
}

// findLeaks lists what the processes pids share with the rest of the
// machine; ns are the namespaces the image re-creates (kind -> id), self
// ckpt's own IPC namespace.
func findLeaks(pids []int, ns map[string]uint64, self uint64) ([]*pb.Leak, error) {
	hostIPC := false
	var inside []insideProc
	for _, pid := range pids {
		if id, err := resource.IPCNamespaceOf(pid); err == nil && id == self {
			hostIPC = true
		}
		in, err := readInside(pid)
		if err != nil {
			return nil, err
		}
		inside = append(inside, in)
	}
	return newLeakFinder(pids, inside, ns, hostIPC).scan()
}

// ownNamespaces are the namespaces the image re-creates, by kind.
func ownNamespaces(namespaces []*pb.Namespace) map[string]uint64 {
	out := map[string]uint64{}
	for _, ns := range namespaces {
		for _, k := range resource.NsKinds {
			if k.Kind == ns.Kind {
				out[k.Name] = ns.Id
			}
		}
	}
	return out
}

// sharedFileMaps keeps the shared mappings of files: what can hold shared
// memory.
func sharedFileMaps(vmas []proc.Vma) []proc.Vma {
	var out []proc.Vma
	for _, v := range vmas {
		if v.Shared() && v.Inode != 0 && v.Name != "" {
			out = append(out, v)
		}
	}
	return out
}

// sharedMaps lists the shared mappings of files of pid from
// /proc/PID/maps (lighter than smaps).
func sharedMaps(pid int) []proc.Vma {
	vmas, err := proc.ReadMaps(pid)
	if err != nil {
		return nil
	}
	return sharedFileMaps(vmas)
}

// startLeakScan looks for what a subtree shares with the outside on the
// side, once preflight has read the inside: the scan of the whole machine
// is the bulk of a tiny checkpoint's work, and on a second core it costs
// neither wall nor frozen time. Its findings are only warnings (and a
// record at the end of the image), so a scan that races with the tree's
// last changes is good enough. The returned function waits for the scan.
func startLeakScan(opts *Options, in *inspected) (wait func()) {
	type result struct {
		leaks []*pb.Leak
		err   error
	}
	done := make(chan result, 1)
	go func() {
		l, err := newLeakFinder(in.pids, in.inside, in.ns, in.hostIPC).scan()
		done <- result{l, err}
	}()
	var once sync.Once
	var r result
	wait = func() { once.Do(func() { r = <-done }) }
	opts.subtreeLeaks = func() ([]*pb.Leak, error) {
		wait()
		if r.err != nil {
			return nil, fmt.Errorf("look for what the tree shares with other processes: %w", r.err)
		}
		if opts.Warn != nil {
			for _, l := range leakLines(r.leaks) {
				opts.Warn(l + "; a restart cannot share it again")
			}
		}
		return r.leaks, nil
	}
	return wait
}
