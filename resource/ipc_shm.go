package resource

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// SysV shared memory segments: their description, their contents and
// their attachments. See ipc.go for the mechanism.

// maxShmSize bounds a segment size read from an image.
const maxShmSize = 1 << 46

// dumpShmSegments describes the segments of the current thread's
// namespace: those in only (all if nil). nameKeys gives the key of a
// removed segment's mapping name.
//
// Preconditions: on a thread inside the namespace (inIPCNamespace).
func dumpShmSegments(only map[int32]int32, nameKeys map[int32]int32) ([]*pb.ShmSegment, error) {
	var out []*pb.ShmSegment
	add := func(id int, ds *unix.SysvShmDesc) {
		s := &pb.ShmSegment{Id: int32(id), Perm: permOf(&ds.Perm), Size: ds.Segsz,
			Dest: ds.Perm.Mode&shmDest != 0, Locked: ds.Perm.Mode&shmLocked != 0,
			Cpid: uint32(ds.Cpid), Lpid: uint32(ds.Lpid), Atime: ds.Atime, Dtime: ds.Dtime, Ctime: ds.Ctime, Nattch: ds.Nattch}
		if k, ok := nameKeys[int32(id)]; ok {
			s.NameKey = k
		} else {
			s.NameKey = s.Perm.Key
		}
		out = append(out, s)
	}
	if only != nil {
		ids := make([]int, 0, len(only))
		for id := range only {
			ids = append(ids, int(id))
		}
		sort.Ints(ids)
		for _, id := range ids {
			var ds unix.SysvShmDesc
			if _, err := shmctl(id, unix.IPC_STAT, &ds); err != nil {
				return nil, fmt.Errorf("shared memory segment %d: %w", id, err)
			}
			add(id, &ds)
		}
		return out, nil
	}
	maxIdx, err := ipcMaxIndex(unix.SYS_SHMCTL, ipcInfoShm)
	if err != nil {
		return nil, fmt.Errorf("list shared memory segments: %w", err)
	}
	for idx := 0; idx <= maxIdx; idx++ {
		var ds unix.SysvShmDesc
		id, err := shmctl(idx, ipcStatShm, &ds)
		if ipcGone(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("shared memory segment at index %d: %w", idx, err)
		}
		add(id, &ds)
	}
	return out, nil
}

// DumpIPCShmPages writes the contents of every segment of ns (described
// by DumpIPCNamespace or DumpIPCShared for pid's namespace): each is
// attached read-only in ckpt's own address space, and its resident pages
// that are not all zeros are copied into PAGES records, 4 MiB at a time.
// (If the namespace has swapped-out shared memory, every page is read, as
// mincore cannot see swapped shmem pages.)
func DumpIPCShmPages(pid int, ns *pb.IpcNamespace, w *image.Writer) error {
	if len(ns.Shm) == 0 {
		return nil
	}
	err := inIPCNamespace(pid, func() error {
		swapped, err := shmSwapped()
		if err != nil {
			return fmt.Errorf("shared memory usage: %w", err)
		}
		buf := make([]byte, 4<<20)
		for _, s := range ns.Shm {
			mem, err := shmAttach(int(s.Id), s.Size, unix.SHM_RDONLY)
			if err != nil {
				return fmt.Errorf("attach %s: %w", shmName(s), err)
			}
			err = dumpShmContents(ns.Ns, s.Id, mem, swapped > 0, w, buf)
			if derr := shmDetach(mem); err == nil && derr != nil {
				err = derr
			}
			if err != nil {
				return fmt.Errorf("%s: %w", shmName(s), err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("IPC namespace of %d: %w", pid, err)
	}
	return nil
}

// dumpShmContents streams the pages of one attached segment.
func dumpShmContents(nsID uint64, id int32, mem []byte, all bool, w *image.Writer, buf []byte) error {
	const window = 64 << 20
	vec := make([]byte, window/pageSize)
	var runs []*pb.PageRun
	used := 0
	flush := func() error {
		if len(runs) == 0 {
			return nil
		}
		err := w.Pages(&pb.PageMap{SysvNs: nsID, SysvShmid: id, Runs: runs}, func(out io.Writer) error {
			_, err := out.Write(buf[:used])
			return err
		})
		runs, used = nil, 0
		return err
	}
	for start := 0; start < len(mem); start += window {
		end := min(start+window, len(mem))
		if !all {
			if err := mincore(mem[start:end], vec); err != nil {
				return fmt.Errorf("mincore: %w", err)
			}
		}
		for off := start; off < end; off += pageSize {
			if !all && vec[(off-start)/pageSize]&1 == 0 {
				continue
			}
			page := mem[off : off+pageSize]
			if bytes.Equal(page, zeroPage[:]) {
				continue
			}
			copy(buf[used:], page)
			used += pageSize
			if n := len(runs); n > 0 && runs[n-1].Addr+runs[n-1].Npages*pageSize == uint64(off) {
				runs[n-1].Npages++
			} else {
				runs = append(runs, &pb.PageRun{Addr: uint64(off), Npages: 1})
			}
			if used == len(buf) {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	return flush()
}

// restoreShm creates one segment under its id.
//
// Preconditions: on a discardable locked thread inside the namespace.
func (r *IPCRestore) restoreShm(s *pb.ShmSegment, liveKeys map[int32]bool) error {
	var ds unix.SysvShmDesc
	_, err := shmctl(int(s.Id), unix.IPC_STAT, &ds)
	switch {
	case err == nil && r.Image.Host && !s.Dest && ds.Perm.Key == s.Perm.Key && ds.Segsz == s.Size && ds.Perm.Mode&shmDest == 0:
		// The very segment is still there (the namespace is shared with
		// other programs, and a segment outlives its processes): use it
		// as it is now.
		r.reused[s.Id] = true
		return nil
	case err == nil:
		return fmt.Errorf("id %d is taken by another segment (key %#x, %d bytes); remove it (ipcrm -m %d) or restart in a new IPC namespace",
			s.Id, uint32(ds.Perm.Key), ds.Segsz, s.Id)
	case !ipcGone(err):
		return err
	}
	key := s.Perm.Key
	if s.Dest {
		// A removed segment has lost its key; create it with the key its
		// mappings are named after, unless a live segment has that key.
		key = 0
		if s.NameKey != 0 && !liveKeys[s.NameKey] {
			key = s.NameKey
		}
	}
	if key != 0 {
		if other, err := shmget(key, 0, 0); err == nil {
			return fmt.Errorf("key %#x is used by segment %d; remove it (ipcrm -M %#x) or restart in a new IPC namespace", uint32(key), other, uint32(key))
		}
	}
	err = createWithID("shm", s.Id, s.Perm, func() (int, error) {
		return shmget(key, s.Size, unix.IPC_CREAT|unix.IPC_EXCL|int(s.Perm.Mode))
	})
	if err != nil {
		return err
	}
	r.created = append(r.created, s)
	ds = unix.SysvShmDesc{}
	ds.Perm.Uid, ds.Perm.Gid, ds.Perm.Mode = s.Perm.Uid, s.Perm.Gid, s.Perm.Mode
	if _, err := shmctl(int(s.Id), unix.IPC_SET, &ds); err != nil {
		return fmt.Errorf("set owner %d:%d and mode %#o: %w", s.Perm.Uid, s.Perm.Gid, s.Perm.Mode, err)
	}
	if s.Locked {
		if _, err := shmctl(int(s.Id), shmLock, nil); err != nil {
			return fmt.Errorf("lock in memory (SHM_LOCK): %w", err)
		}
	}
	mem, err := shmAttach(int(s.Id), s.Size, 0)
	if err != nil {
		return fmt.Errorf("attach to fill: %w", err)
	}
	r.maps[s.Id] = mem
	return nil
}

// RestorePages writes the pages of one PAGES record (whose page map names
// this namespace, pm.sysv_ns) into their segment. Pages of a segment that
// was reused as it is are read and dropped.
func (r *IPCRestore) RestorePages(pm *pb.PageMap, rd io.Reader, buf []byte) error {
	seg := r.segs[pm.SysvShmid]
	if seg == nil || pm.SysvNs != r.Image.Ns {
		return fmt.Errorf("image damaged: pages for shared memory segment %d not in the image", pm.SysvShmid)
	}
	mem := r.maps[pm.SysvShmid]
	if mem == nil && !r.reused[pm.SysvShmid] {
		return fmt.Errorf("pages for shared memory segment %d after its restore was finished", pm.SysvShmid)
	}
	limit := (seg.Size + pageSize - 1) &^ (pageSize - 1)
	for _, run := range pm.Runs {
		size := run.Npages * pageSize
		if run.Addr%pageSize != 0 || run.Addr+size > limit || run.Addr+size < run.Addr {
			return fmt.Errorf("image damaged: pages %#x+%d outside shared memory segment %d of %d bytes", run.Addr, run.Npages, seg.Id, seg.Size)
		}
		if mem != nil {
			if _, err := io.ReadFull(rd, mem[run.Addr:run.Addr+size]); err != nil {
				return err
			}
			continue
		}
		for left := size; left > 0; {
			n := min(left, uint64(len(buf)))
			if _, err := io.ReadFull(rd, buf[:n]); err != nil {
				return err
			}
			left -= n
		}
	}
	return nil
}

// shmGroup returns the areas of mm from index i on that belong to one
// attachment: contiguous areas of the same segment with consecutive
// offsets (mprotect splits an attachment into several areas).
func shmGroup(vmas []*pb.Vma, i int) []*pb.Vma {
	j := i + 1
	for j < len(vmas) && vmas[j].SysvShm && vmas[j].SysvShmid == vmas[i].SysvShmid && vmas[j].Start == vmas[j-1].End &&
		vmas[j].Pgoff == vmas[j-1].Pgoff+(vmas[j-1].End-vmas[j-1].Start)/pageSize {
		j++
	}
	return vmas[i:j]
}

// attachShm attaches a segment in the stub where the image had it, with
// an injected shmat (in the stub's IPC namespace), and gives each of its
// areas its protection.
func attachShm(t *Target, group []*pb.Vma) error {
	first, last := group[0], group[len(group)-1]
	id := first.SysvShmid
	var ds unix.SysvShmDesc
	addr, err := t.Put(0, bytesOf(&ds))
	if err != nil {
		return err
	}
	if _, err := t.Syscall(unix.SYS_SHMCTL, uint64(id), unix.IPC_STAT, addr); err != nil {
		return fmt.Errorf("shared memory segment %d: %w", id, err)
	}
	b := bytesOf(&ds)
	if err := t.ReadMem(addr, b); err != nil {
		return err
	}
	if size := (ds.Segsz + pageSize - 1) &^ (pageSize - 1); first.Pgoff != 0 || last.End-first.Start != size {
		return fmt.Errorf("shared memory segment %d is attached only in part at %#x-%#x (it has %d bytes): %w", id, first.Start, last.End, ds.Segsz, ErrUnsupported)
	}
	flags, prot := uint64(unix.SHM_RDONLY), uint32(unix.PROT_READ)
	for _, v := range group {
		if v.Prot&unix.PROT_WRITE != 0 {
			flags, prot = 0, unix.PROT_READ|unix.PROT_WRITE
			break
		}
	}
	for _, v := range group {
		if v.Prot&unix.PROT_EXEC != 0 {
			flags |= shmExec
			prot |= unix.PROT_EXEC
			break
		}
	}
	got, err := t.Syscall(unix.SYS_SHMAT, uint64(id), first.Start, flags)
	if err != nil {
		return fmt.Errorf("attach shared memory segment %d at %#x: %w", id, first.Start, err)
	}
	if got != first.Start {
		return fmt.Errorf("attach shared memory segment %d: got %#x instead of %#x", id, got, first.Start)
	}
	for _, v := range group {
		if v.Prot != prot {
			if _, err := t.Syscall(unix.SYS_MPROTECT, v.Start, v.End-v.Start, uint64(v.Prot)); err != nil {
				return fmt.Errorf("protect shared memory %#x-%#x: %w", v.Start, v.End, err)
			}
		}
	}
	return nil
}

// Finish ends the restore of the namespace's segments, once every process
// has attached its segments again (after MapVmas of every process) and
// every page has been read: segments removed while attached at checkpoint
// are removed again (they go away with their last attachment), and ckpt
// detaches its own attachments.
func (r *IPCRestore) Finish() error {
	var errs []error
	var dest []*pb.ShmSegment
	for _, s := range r.created {
		if s.Dest {
			dest = append(dest, s)
		}
	}
	if len(dest) > 0 {
		errs = append(errs, inIPCNamespace(r.pid, func() error {
			for _, s := range dest {
				if _, err := shmctl(int(s.Id), unix.IPC_RMID, nil); err != nil {
					return fmt.Errorf("remove shared memory segment %d again: %w", s.Id, err)
				}
			}
			return nil
		}))
	}
	errs = append(errs, r.detach())
	r.finished = true
	return errors.Join(errs...)
}

// Abort undoes a failed restore: ckpt detaches, and in a shared (host)
// namespace removes the segments it created. (A fresh namespace goes away
// with its processes.)
func (r *IPCRestore) Abort() {
	r.detach()
	if !r.Image.Host || len(r.created) == 0 {
		return
	}
	inIPCNamespace(r.pid, func() error {
		for _, s := range r.created {
			if !(r.finished && s.Dest) { // those are removed already
				shmctl(int(s.Id), unix.IPC_RMID, nil)
			}
		}
		return nil
	})
	r.created = nil
}

func (r *IPCRestore) detach() error {
	var errs []error
	for id, mem := range r.maps {
		if err := shmDetach(mem); err != nil {
			errs = append(errs, fmt.Errorf("detach shared memory segment %d: %w", id, err))
		}
		delete(r.maps, id)
	}
	return errors.Join(errs...)
}

// isSysvShm tells a SysV segment's mapping: "/SYSV%08x (deleted)", the
// key in the name and the id as inode.
func isSysvShm(v *proc.Vma) bool {
	_, ok := sysvNameKey(v.Name)
	return ok && v.Inode <= 1<<31-1
}

// shmName names a segment in messages.
func shmName(s *pb.ShmSegment) string {
	if s.Dest {
		return fmt.Sprintf("shared memory segment %d (key %#x, removed while attached)", s.Id, uint32(s.NameKey))
	}
	return fmt.Sprintf("shared memory segment %d (key %#x)", s.Id, uint32(s.Perm.GetKey()))
}
