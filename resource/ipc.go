package resource

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// SysV IPC: shared memory segments, message queues and semaphore sets.
//
// They live in an IPC namespace, not in a process, so they are dumped and
// restored per namespace. In a nutshell:
//
//   - ckpt works on the objects from a fresh OS thread that joined the
//     namespace with setns (inIPCNamespace); the thread is discarded after.
//   - Dump enumerates each kind with *_INFO (highest index) and *_STAT_ANY
//     per index, which also gives each object's id. Messages are copied
//     without being consumed (msgrcv with MSG_COPY, by position);
//     semaphore values with GETALL; segment contents by attaching each
//     segment read-only in ckpt's own address space and streaming the
//     resident pages that are not all zeros into PAGES records
//     (ipc_shm.go).
//   - Restore recreates every object under its id by writing
//     /proc/sys/kernel/{shm,msg,sem}_next_id right before the *get (the
//     id is checked after), with its creator (a thread-local setresuid /
//     setresgid around the *get, since cuid/cgid come from the creating
//     thread's credentials), then owner and mode with IPC_SET, then
//     contents. Segments removed while attached (SHM_DEST) are removed
//     again once every process has attached them (IPCRestore.Finish).
//   - Attachments are areas of the process's Mm (Vma.sysv_shm); restart
//     attaches them with an injected shmat in the process's namespace.
//   - Semaphore undo lists (semadj) have no read interface. The kernel
//     applies a list when its last holder drops it, which
//     unshare(CLONE_SYSVSEM) does: ckpt reads the values, injects that
//     unshare into every thread holding the list, reads the values again
//     (the difference is the list) and gives the list back with an
//     injected semop(-adj, SEM_UNDO). Restart sets each value to
//     value+sum(adj) and lets each process do the same semop (ipc_sem.go).
//
// When the processes share ckpt's own ("host") IPC namespace, other
// programs may use its objects: only the segments the processes have
// attached are saved (IpcNamespace.host), restored under the same id, or
// reused if that very segment still exists.

// inIPCNamespace runs f in the IPC namespace of pid: on an OS thread
// that joined it (see inNamespace), or, when that is ckpt's own, on a
// locked thread without setns, which needs CAP_SYS_ADMIN even for one's
// own namespace (ckpt may not be root).
func inIPCNamespace(pid int, f func() error) error {
	var st, self unix.Stat_t
	if unix.Stat(proc.Path(pid, "ns/ipc"), &st) == nil && unix.Stat("/proc/thread-self/ns/ipc", &self) == nil && st.Ino == self.Ino && st.Dev == self.Dev {
		// On a thread of its own anyway: f may change the thread's
		// credentials to create objects as their owner.
		return onOwnThread(f)
	}
	return inNamespace(pid, "ipc", f)
}

// IPCNamespaceOf returns the inode number that names pid's IPC namespace.
func IPCNamespaceOf(pid int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(proc.Path(pid, "ns/ipc"), &st); err != nil {
		return 0, fmt.Errorf("IPC namespace of %d: %w", pid, err)
	}
	return st.Ino, nil
}

// ipcSysctls are the per-namespace IPC limits ckpt saves and restores
// (only these names are ever written from an image).
var ipcSysctls = []string{"shmmax", "shmall", "shmmni", "shm_rmid_forced", "msgmax", "msgmnb", "msgmni", "sem"}

func readSysctl(name string) (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/" + name)
	return strings.TrimSpace(string(b)), err
}

func writeSysctl(name, value string) error {
	f, err := os.OpenFile("/proc/sys/kernel/"+name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// DumpIPCNamespace describes every SysV IPC object of pid's IPC namespace,
// and its limits. Segment contents are written later by DumpIPCShmPages,
// undo lists added by DumpSemUndo. attached maps the ids of attached
// segments to the key of their mapping name (see AttachedShm), which a
// segment removed while attached still shows; it may be nil.
//
// Preconditions: every process of the namespace is frozen (otherwise the
// objects may change while they are read).
func DumpIPCNamespace(pid int, attached map[int32]int32) (*pb.IpcNamespace, error) {
	ino, err := IPCNamespaceOf(pid)
	if err != nil {
		return nil, err
	}
	out := &pb.IpcNamespace{Ns: ino}
	err = inIPCNamespace(pid, func() error {
		for _, name := range ipcSysctls {
			v, err := readSysctl(name)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("read kernel.%s: %w", name, err)
			}
			out.Sysctls = append(out.Sysctls, &pb.IpcSysctl{Name: name, Value: v})
		}
		var err error
		if out.Shm, err = dumpShmSegments(nil, attached); err != nil {
			return err
		}
		if out.Msg, err = dumpMsgQueues(); err != nil {
			return err
		}
		out.Sem, err = dumpSemSets()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("IPC namespace of %d: %w", pid, err)
	}
	return out, nil
}

// DumpIPCShared describes the segments of attached (ids, see AttachedShm)
// in pid's IPC namespace, which other programs share: the image records
// that nothing else of it (message queues, semaphores, other segments,
// limits) was captured.
func DumpIPCShared(pid int, attached map[int32]int32) (*pb.IpcNamespace, error) {
	ino, err := IPCNamespaceOf(pid)
	if err != nil {
		return nil, err
	}
	out := &pb.IpcNamespace{Ns: ino, Host: true}
	if len(attached) == 0 {
		return out, nil
	}
	err = inIPCNamespace(pid, func() error {
		var err error
		out.Shm, err = dumpShmSegments(attached, attached)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("IPC namespace of %d: %w", pid, err)
	}
	return out, nil
}

// AttachedShm lists the SysV segments attached in the given address
// spaces: id -> the key in the mapping's name.
func AttachedShm(mms ...*pb.Mm) map[int32]int32 {
	out := map[int32]int32{}
	for _, mm := range mms {
		for _, v := range mm.Vmas {
			if v.SysvShm {
				key, _ := sysvNameKey(v.Name)
				out[v.SysvShmid] = key
			}
		}
	}
	return out
}

// sysvNameKey parses the key out of a SysV segment's mapping name,
// "/SYSV%08x (deleted)".
func sysvNameKey(name string) (int32, bool) {
	hex, ok := strings.CutPrefix(name, "/SYSV")
	if !ok {
		return 0, false
	}
	hex, ok = strings.CutSuffix(hex, " (deleted)")
	if !ok || len(hex) != 8 {
		return 0, false
	}
	k, err := strconv.ParseUint(hex, 16, 32)
	return int32(uint32(k)), err == nil
}

func permOf(p *unix.SysvIpcPerm) *pb.IpcPerm {
	return &pb.IpcPerm{Key: p.Key, Uid: p.Uid, Gid: p.Gid, Cuid: p.Cuid, Cgid: p.Cgid, Mode: p.Mode & ipcModeBits}
}

// ipcGone reports errors that mean "no object at this index or id".
func ipcGone(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EIDRM)
}

// dumpMsgQueues describes every message queue of the current thread's
// namespace with its messages, in queue order.
//
// Preconditions: on a thread inside the namespace (inIPCNamespace).
func dumpMsgQueues() ([]*pb.MsgQueue, error) {
	maxIdx, err := ipcMaxIndex(unix.SYS_MSGCTL, ipcInfoMsg)
	if err != nil {
		return nil, fmt.Errorf("list message queues: %w", err)
	}
	msgmax := 8192
	if v, err := readSysctl("msgmax"); err == nil {
		if n, err := strconv.Atoi(v); err == nil && n > 0 && n <= 64<<20 {
			msgmax = n
		}
	}
	var out []*pb.MsgQueue
	for idx := 0; idx <= maxIdx; idx++ {
		var ds msqidDS
		id, err := msgctl(idx, ipcStatMsg, &ds)
		if ipcGone(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("message queue at index %d: %w", idx, err)
		}
		q := &pb.MsgQueue{Id: int32(id), Perm: permOf(&ds.Perm), Qbytes: ds.Qbytes, Lspid: uint32(ds.Lspid), Lrpid: uint32(ds.Lrpid),
			Stime: ds.Stime, Rtime: ds.Rtime, Ctime: ds.Ctime}
		buf := make([]byte, 8+msgmax)
		for i := uint64(0); i < ds.Qnum; i++ {
			n, err := msgrcv(id, buf, int64(i), unix.IPC_NOWAIT|msgCopy)
			if errors.Is(err, unix.E2BIG) && len(buf) < 8+int(min(ds.Qbytes, 64<<20)) {
				buf = make([]byte, 8+int(min(ds.Qbytes, 64<<20)))
				n, err = msgrcv(id, buf, int64(i), unix.IPC_NOWAIT|msgCopy)
			}
			if errors.Is(err, unix.ENOSYS) {
				return nil, fmt.Errorf("message queue %d: copying messages needs a kernel with CONFIG_CHECKPOINT_RESTORE: %w", id, ErrUnsupported)
			}
			if err != nil {
				return nil, fmt.Errorf("message queue %d: copy message %d of %d: %w", id, i, ds.Qnum, err)
			}
			typ := int64(leUint64(buf))
			q.Messages = append(q.Messages, &pb.Msg{Type: typ, Text: append([]byte(nil), buf[8:8+n]...)})
		}
		out = append(out, q)
	}
	return out, nil
}

// dumpSemSets describes every semaphore set of the current thread's
// namespace with its values.
//
// Preconditions: on a thread inside the namespace (inIPCNamespace).
func dumpSemSets() ([]*pb.SemSet, error) {
	maxIdx, err := ipcMaxIndex(unix.SYS_SEMCTL, ipcInfoSem)
	if err != nil {
		return nil, fmt.Errorf("list semaphore sets: %w", err)
	}
	var out []*pb.SemSet
	for idx := 0; idx <= maxIdx; idx++ {
		var ds semidDS
		id, err := semctlDS(idx, ipcStatSem, &ds)
		if ipcGone(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("semaphore set at index %d: %w", idx, err)
		}
		vals := make([]uint16, ds.Nsems)
		if err := semctlAll(id, semGetAll, vals); err != nil {
			return nil, fmt.Errorf("semaphore set %d: read values: %w", id, err)
		}
		s := &pb.SemSet{Id: int32(id), Perm: permOf(&ds.Perm), Otime: ds.Otime, Ctime: ds.Ctime}
		for _, v := range vals {
			s.Values = append(s.Values, uint32(v))
		}
		out = append(out, s)
	}
	return out, nil
}

func leUint64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

func putLeUint64(b []byte, v uint64) {
	for i := range 8 {
		b[i] = byte(v >> (8 * i))
	}
}

// withCreator runs create with the thread's effective uid and gid set to
// the object's creator, so that the kernel records them as cuid/cgid, and
// switches back to root after.
//
// Preconditions: on a discardable locked thread (inIPCNamespace), as root.
func withCreator(p *pb.IpcPerm, create func() (int, error)) (int, error) {
	keep := ^uintptr(0)
	if p.Cgid != 0 {
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, keep, uintptr(p.Cgid), keep); e != 0 {
			return -1, fmt.Errorf("become creator gid %d: %w", p.Cgid, e)
		}
		defer unix.RawSyscall(unix.SYS_SETRESGID, keep, 0, keep)
	}
	if p.Cuid != 0 {
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, keep, uintptr(p.Cuid), keep); e != 0 {
			return -1, fmt.Errorf("become creator uid %d: %w", p.Cuid, e)
		}
		// Deferred calls run last-in first-out: uid back before gid.
		defer unix.RawSyscall(unix.SYS_SETRESUID, keep, 0, keep)
	}
	return create()
}

// createWithID creates an object under id: it writes the namespace's
// next-id sysctl (kind is "shm", "msg" or "sem"), runs get as the creator
// and checks the id it got.
//
// Preconditions: on a discardable locked thread inside the namespace.
func createWithID(kind string, id int32, p *pb.IpcPerm, get func() (int, error)) error {
	if err := writeSysctl(kind+"_next_id", strconv.Itoa(int(id))); err != nil {
		return fmt.Errorf("set kernel.%s_next_id (needs CONFIG_CHECKPOINT_RESTORE and CAP_SYS_ADMIN): %w", kind, err)
	}
	got, err := withCreator(p, get)
	// A failed get leaves next_id set: clear it, so that the next object
	// anyone creates is not forced onto that id.
	if err != nil {
		writeSysctl(kind+"_next_id", "-1")
	}
	switch {
	case errors.Is(err, unix.ENOSPC):
		return fmt.Errorf("id %d is taken (its slot holds another object); remove that object or restart in a new IPC namespace", id)
	case errors.Is(err, unix.EEXIST):
		return fmt.Errorf("key %#x is used by another object; remove it (ipcrm) or restart in a new IPC namespace", uint32(p.Key))
	case err != nil:
		return err
	case got != int(id):
		return fmt.Errorf("got id %d instead of %d", got, id)
	}
	return nil
}

// validPerm checks an image's ipc_perm.
func validPerm(p *pb.IpcPerm) error {
	if p == nil {
		return fmt.Errorf("no owner and mode")
	}
	if p.Mode&^ipcModeBits != 0 {
		return fmt.Errorf("mode %#o", p.Mode)
	}
	return nil
}

// restoreSysctls writes the namespace's IPC limits.
//
// Preconditions: on a discardable locked thread inside the namespace.
func restoreSysctls(list []*pb.IpcSysctl) error {
	for _, s := range list {
		known := false
		for _, n := range ipcSysctls {
			known = known || n == s.Name
		}
		if !known || len(s.Value) > 64 || strings.Trim(s.Value, "0123456789 \t-") != "" {
			return fmt.Errorf("image damaged: IPC limit %q = %q", s.Name, s.Value)
		}
		cur, err := readSysctl(s.Name)
		if err == nil && strings.Join(strings.Fields(cur), " ") == strings.Join(strings.Fields(s.Value), " ") {
			continue
		}
		if err := writeSysctl(s.Name, s.Value); err != nil {
			return fmt.Errorf("set kernel.%s to %q: %w", s.Name, s.Value, err)
		}
	}
	return nil
}

// IPCRestore is the restore of one IPC namespace's objects, from
// RestoreIPCNamespace until Finish (or Abort on failure).
type IPCRestore struct {
	// Image is the namespace's record.
	Image *pb.IpcNamespace
	// pid is a process inside the namespace.
	pid  int
	segs map[int32]*pb.ShmSegment
	// maps are ckpt's own attachments, through which pages are written.
	maps map[int32][]byte
	// created are the segments created; reused those found in place (host
	// namespace only).
	created  []*pb.ShmSegment
	reused   map[int32]bool
	finished bool
}

// ValidateIPC checks an image's IPC namespace record before anything is
// built.
func ValidateIPC(ns *pb.IpcNamespace) error {
	if ns.Ns == 0 {
		return fmt.Errorf("image damaged: IPC namespace without an id")
	}
	seen := map[string]bool{}
	check := func(kind string, id int32, p *pb.IpcPerm) error {
		k := kind + strconv.Itoa(int(id))
		if id < 0 || seen[k] {
			return fmt.Errorf("image damaged: %s id %d negative or twice", kind, id)
		}
		seen[k] = true
		if err := validPerm(p); err != nil {
			return fmt.Errorf("image damaged: %s %d: %w", kind, id, err)
		}
		return nil
	}
	for _, s := range ns.Shm {
		if err := check("shm", s.Id, s.Perm); err != nil {
			return err
		}
		if s.Size == 0 || s.Size > maxShmSize {
			return fmt.Errorf("image damaged: shared memory segment %d of %d bytes", s.Id, s.Size)
		}
	}
	if ns.Host && (len(ns.Msg) > 0 || len(ns.Sem) > 0 || len(ns.Undo) > 0 || len(ns.Sysctls) > 0) {
		return fmt.Errorf("image damaged: host IPC namespace record with more than shared memory")
	}
	for _, q := range ns.Msg {
		if err := check("msg", q.Id, q.Perm); err != nil {
			return err
		}
		for _, m := range q.Messages {
			if m.Type <= 0 {
				return fmt.Errorf("image damaged: message queue %d: message type %d", q.Id, m.Type)
			}
		}
	}
	sems := map[int32]int{}
	for _, s := range ns.Sem {
		if err := check("sem", s.Id, s.Perm); err != nil {
			return err
		}
		if len(s.Values) == 0 || len(s.Values) > 32000 {
			return fmt.Errorf("image damaged: semaphore set %d of %d semaphores", s.Id, len(s.Values))
		}
		for _, v := range s.Values {
			if v > semMaxValue {
				return fmt.Errorf("image damaged: semaphore set %d: value %d", s.Id, v)
			}
		}
		sems[s.Id] = len(s.Values)
	}
	for _, u := range ns.Undo {
		for _, a := range u.Adj {
			if n, ok := sems[a.Semid]; !ok || int(a.Num) >= n || a.Adj < -semMaxValue || a.Adj > semMaxValue {
				return fmt.Errorf("image damaged: undo list of %d: semaphore %d.%d adjustment %d", u.Pid, a.Semid, a.Num, a.Adj)
			}
		}
	}
	return nil
}

// RestoreIPCNamespace recreates the objects of ns inside the IPC
// namespace of pid: a fresh namespace (ns.host false) whose only process
// is a restore stub, or ckpt's own (ns.host) for the segments attached in
// it. Each object gets its id, key, creator, owner and mode; message
// queues their messages in order; semaphores their values plus the undo
// adjustments that RestoreSemUndo takes back. Segment contents follow
// with RestorePages.
//
// Call it before any process of the namespace maps its areas (MapVmas
// attaches segments by id); call Finish after every process has, and
// after the last page; Abort on failure.
func RestoreIPCNamespace(pid int, ns *pb.IpcNamespace) (*IPCRestore, error) {
	if err := ValidateIPC(ns); err != nil {
		return nil, err
	}
	r := &IPCRestore{Image: ns, pid: pid, segs: map[int32]*pb.ShmSegment{}, maps: map[int32][]byte{}, reused: map[int32]bool{}}
	liveKeys := map[int32]bool{}
	for _, s := range ns.Shm {
		r.segs[s.Id] = s
		if !s.Dest && s.Perm.Key != 0 {
			liveKeys[s.Perm.Key] = true
		}
	}
	adj := map[[2]int32]int32{} // semid, num -> sum of adjustments
	for _, u := range ns.Undo {
		for _, a := range u.Adj {
			adj[[2]int32{a.Semid, int32(a.Num)}] += a.Adj
		}
	}
	if len(ns.Sysctls)+len(ns.Shm)+len(ns.Msg)+len(ns.Sem) == 0 {
		// Nothing to create (a plain process's record of ckpt's own
		// namespace): no thread to enter it on, 0.25 ms of a tiny restart.
		return r, nil
	}
	err := inIPCNamespace(pid, func() error {
		if err := restoreSysctls(ns.Sysctls); err != nil {
			return err
		}
		for _, s := range ns.Shm {
			if err := r.restoreShm(s, liveKeys); err != nil {
				return fmt.Errorf("restore %s: %w", shmName(s), err)
			}
		}
		for _, q := range ns.Msg {
			if err := restoreMsgQueue(q); err != nil {
				return fmt.Errorf("restore message queue %d (key %#x): %w", q.Id, uint32(q.Perm.Key), err)
			}
		}
		for _, s := range ns.Sem {
			if err := restoreSemSet(s, adj); err != nil {
				return fmt.Errorf("restore semaphore set %d (key %#x): %w", s.Id, uint32(s.Perm.Key), err)
			}
		}
		return nil
	})
	if err != nil {
		r.Abort()
		return nil, err
	}
	return r, nil
}

// restoreMsgQueue creates one message queue under its id and sends its
// messages in their order.
//
// Preconditions: on a discardable locked thread inside the namespace.
func restoreMsgQueue(q *pb.MsgQueue) error {
	err := createWithID("msg", q.Id, q.Perm, func() (int, error) {
		return msgget(q.Perm.Key, unix.IPC_CREAT|unix.IPC_EXCL|int(q.Perm.Mode))
	})
	if err != nil {
		return err
	}
	var ds msqidDS
	if _, err := msgctl(int(q.Id), unix.IPC_STAT, &ds); err != nil {
		return err
	}
	set := func() error {
		ds.Perm.Uid, ds.Perm.Gid, ds.Perm.Mode, ds.Qbytes = q.Perm.Uid, q.Perm.Gid, q.Perm.Mode, q.Qbytes
		if _, err := msgctl(int(q.Id), unix.IPC_SET, &ds); err != nil {
			return fmt.Errorf("set owner %d:%d, mode %#o and size %d: %w (a size above kernel.msgmnb needs CAP_SYS_RESOURCE)", q.Perm.Uid, q.Perm.Gid, q.Perm.Mode, q.Qbytes, err)
		}
		return nil
	}
	// A queue larger than the default must grow before it is filled.
	if q.Qbytes > ds.Qbytes {
		if err := set(); err != nil {
			return err
		}
	}
	var buf []byte
	for i, m := range q.Messages {
		buf = append(buf[:0], make([]byte, 8)...)
		putLeUint64(buf, uint64(m.Type))
		buf = append(buf, m.Text...)
		if err := msgsnd(int(q.Id), buf, unix.IPC_NOWAIT); err != nil {
			return fmt.Errorf("send message %d of %d (%d bytes, type %d): %w", i+1, len(q.Messages), len(m.Text), m.Type, err)
		}
	}
	return set()
}

// SysvVma describes an area of /proc/PID/smaps as far as AttachedShm needs
// it, or returns nil if it is no SysV segment.
func SysvVma(v *proc.Vma) *pb.Vma {
	if !isSysvShm(v) {
		return nil
	}
	return &pb.Vma{Name: v.Name, SysvShm: true, SysvShmid: int32(v.Inode)}
}
