package checkpoint

import (
	"fmt"
	"os"
	"strings"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
	"github.com/ckpt/ckpt/resource"
)

// ipcDump is the SysV IPC part of a checkpoint: one record per IPC
// namespace of the tree.
type ipcDump struct {
	// own are the namespaces the tree has to itself (not ckpt's), saved
	// whole, by namespace id; of is each process's own namespace record.
	own map[uint64]*pb.IpcNamespace
	of  map[int]*pb.IpcNamespace
	// pidIn names a process inside each namespace, to enter it.
	pidIn map[uint64]int
	// host is ckpt's own namespace, if processes of the tree use it:
	// other programs share it, so only attached segments are saved.
	host *pb.IpcNamespace
	recs []*pb.IpcNamespace
}

// dumpOwnIPC saves, before the processes are collected, every IPC
// namespace of the frozen tree other than ckpt's, so that their undo
// lists can be read during the injected burst (see DumpSemUndo).
// self is ckpt's own IPC namespace.
func dumpOwnIPC(ft *frozenTree, self uint64) (*ipcDump, error) {
	d := &ipcDump{own: map[uint64]*pb.IpcNamespace{}, of: map[int]*pb.IpcNamespace{}, pidIn: map[uint64]int{}}
	members := map[uint64][]int{}
	var order []uint64
	for _, f := range ft.procs {
		ns, err := resource.IPCNamespaceOf(f.pid)
		if err != nil {
			return nil, fmt.Errorf("process %d: %w", f.pid, err)
		}
		if members[ns] == nil {
			order = append(order, ns)
		}
		members[ns] = append(members[ns], f.pid)
	}
	for _, ns := range order {
		pids := members[ns]
		d.pidIn[ns] = pids[0]
		if ns == self {
			continue
		}
		attached, err := attachedShm(pids)
		if err != nil {
			return nil, err
		}
		rec, err := resource.DumpIPCNamespace(pids[0], attached)
		if err != nil {
			return nil, err
		}
		d.own[ns] = rec
		for _, p := range pids {
			d.of[p] = rec
		}
		d.recs = append(d.recs, rec)
	}
	return d, nil
}

// attachedShm lists the SysV segments the processes have attached.
func attachedShm(pids []int) (map[int32]int32, error) {
	var mms []*pb.Mm
	for _, pid := range pids {
		vmas, err := proc.ReadMaps(pid) // not smaps: no page table walk
		if err != nil {
			return nil, fmt.Errorf("process %d: %w", pid, err)
		}
		mm := &pb.Mm{}
		for i := range vmas {
			if v := resource.SysvVma(&vmas[i]); v != nil {
				mm.Vmas = append(mm.Vmas, v)
			}
		}
		mms = append(mms, mm)
	}
	return resource.AttachedShm(mms...), nil
}

// dumpHostIPC saves the segments that processes in ckpt's own IPC
// namespace have attached, and warns about what is not captured there.
func (d *ipcDump) dumpHostIPC(opts *Options, ft *frozenTree, procs []*pb.Process, mms []*pb.Mm) error {
	self := opts.self.Ns.Ipc
	pid, ok := d.pidIn[self]
	if !ok {
		return nil
	}
	var hostMms []*pb.Mm
	byID := map[uint32]*pb.Mm{}
	for _, mm := range mms {
		byID[mm.Id] = mm
	}
	for _, p := range procs {
		if p.Ns != nil && p.Ns.Ipc == self && p.MmOwner == 0 && byID[p.MmId] != nil {
			hostMms = append(hostMms, byID[p.MmId])
		}
	}
	host, err := resource.DumpIPCShared(pid, resource.AttachedShm(hostMms...))
	if err != nil {
		return err
	}
	d.host = host
	d.recs = append(d.recs, d.host)
	if opts.Warn == nil || !hostHasSemaphores() {
		return nil
	}
	for _, f := range ft.procs {
		if d.of[f.pid] != nil {
			continue
		}
		for _, th := range f.threads {
			if has, _ := opts.undo.Has(th.tid); has {
				opts.Warn(fmt.Sprintf("process %d has a semaphore undo list (SEM_UNDO); semaphores of ckpt's own IPC namespace are not captured, so the restarted process will not undo its semaphore operations when it exits (checkpoint it in an IPC namespace of its own: ckpt run --ipc)", f.pid))
				break
			}
		}
	}
	return nil
}

// hostHasSemaphores tells whether ckpt's IPC namespace holds semaphore
// sets. Without any, an undo list can only be the empty one every
// multi-threaded process has (threads are created with CLONE_SYSVSEM),
// not worth a warning.
func hostHasSemaphores() bool {
	b, err := os.ReadFile("/proc/sysvipc/sem")
	return err != nil || strings.Count(string(b), "\n") > 1
}

// translate renames the processes of the undo lists with the image's PIDs.
func (d *ipcDump) translate(inner map[uint32]uint32) {
	for _, rec := range d.own {
		for _, u := range rec.Undo {
			u.Pid = inner[u.Pid]
		}
	}
}
