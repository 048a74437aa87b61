package restart

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/resource"
)

// namespaces are the image's namespace records by id.
type namespaces struct {
	recs map[uint64]*pb.Namespace
	nets map[uint64]*pb.NetNamespace
	// mounts is the root's mount table, being filled as the image streams
	// in (tmpfs contents).
	mounts *resource.MountRestore
}

func (n *namespaces) add(ns *pb.Namespace) error {
	if n.recs == nil {
		n.recs = map[uint64]*pb.Namespace{}
	}
	if ns.Id == 0 || n.recs[ns.Id] != nil {
		return fmt.Errorf("image damaged: namespace id %d twice or zero", ns.Id)
	}
	if ns.Kind == pb.Namespace_UNKNOWN || pb.Namespace_Kind_name[int32(ns.Kind)] == "" {
		return fmt.Errorf("image damaged: namespace %d of unknown kind %d", ns.Id, ns.Kind)
	}
	n.recs[ns.Id] = ns
	return nil
}

func (n *namespaces) addNet(ns *pb.NetNamespace) error {
	if n.nets == nil {
		n.nets = map[uint64]*pb.NetNamespace{}
	}
	if ns.Id == 0 || n.nets[ns.Id] != nil {
		return fmt.Errorf("image damaged: network namespace id %d twice or zero", ns.Id)
	}
	n.nets[ns.Id] = ns
	return nil
}

// newFlags returns the clone flags that give process p the namespaces it
// had of its own: those that differ from have (its parent's, or for the
// root the namespaces ckpt ran in at checkpoint). Images without namespace
// ids (format 1) create none.
func (n *namespaces) newFlags(p *pb.Process, have *pb.NsIds, root, container bool) (uint64, error) {
	if p.Ns == nil || have == nil {
		return 0, nil
	}
	flags := resource.NewNamespaces(have, p.Ns)
	for _, k := range resource.NsKinds {
		if flags&k.Flag == 0 {
			continue
		}
		switch {
		case k.Kind == pb.Namespace_UNKNOWN:
			return 0, fmt.Errorf("image damaged: process %d has a %s namespace of its own", p.Pid, k.Name)
		case (k.Kind == pb.Namespace_PID && !(root && container)) || ((k.Kind == pb.Namespace_TIME || k.Kind == pb.Namespace_MNT) && !root):
			return 0, fmt.Errorf("image damaged: process %d has a nested %s namespace", p.Pid, k.Name)
		case k.Kind == pb.Namespace_MNT:
			if n.mounts == nil {
				return 0, fmt.Errorf("image damaged: no mount table for the mount namespace of process %d", p.Pid)
			}
		case k.Kind == pb.Namespace_NET:
			if n.nets[p.Ns.Net] == nil {
				return 0, fmt.Errorf("image damaged: no record of the network namespace of process %d", p.Pid)
			}
		case k.Kind == pb.Namespace_UTS || k.Kind == pb.Namespace_TIME:
			ns := n.recs[k.Get(p.Ns)]
			if ns == nil || ns.Kind != k.Kind {
				return 0, fmt.Errorf("image damaged: no record of the %s namespace of process %d", k.Name, p.Pid)
			}
		}
	}
	return flags, nil
}

// prepareTime gives the children of parent a new time namespace with the
// recorded offsets, which can only be set before any process enters it;
// the caller then clones without CLONE_NEWTIME.
func (n *namespaces) prepareTime(parent *stub, p *pb.Process) error {
	ns := n.recs[p.Ns.Time]
	if _, err := parent.t.Syscall(unix.SYS_UNSHARE, unix.CLONE_NEWTIME); err != nil {
		return fmt.Errorf("create time namespace: %w", err)
	}
	return resource.RestoreTimeOffsets(parent.pid, ns)
}

// fill restores the state of the namespaces that flags created for the
// process s, before anything else happens inside them.
func (n *namespaces) fill(s *stub, p *pb.Process, flags uint64, ipc *ipcState, files *resource.OpenFiles) error {
	if flags&unix.CLONE_NEWNS != 0 {
		// First: the other namespaces' pseudo-filesystems (proc, sysfs,
		// mqueue) are mounted from inside them, which exist already
		// (clone made them all at once).
		if err := resource.RestoreMountNamespace(s.t, resource.NewFdPullerFrom(s.t, stubPidfd, s.send), n.mounts); err != nil {
			return fmt.Errorf("process %d: %w", p.Pid, err)
		}
		files.Root = fmt.Sprintf("/proc/%d/root", s.pid)
	}
	if flags&unix.CLONE_NEWUTS != 0 {
		if err := resource.RestoreUTS(s.pid, n.recs[p.Ns.Uts]); err != nil {
			return fmt.Errorf("process %d: %w", p.Pid, err)
		}
	}
	if flags&unix.CLONE_NEWNET != 0 {
		if err := resource.RestoreNetNamespace(s.pid, n.nets[p.Ns.Net]); err != nil {
			return fmt.Errorf("process %d: %w", p.Pid, err)
		}
	}
	if flags&unix.CLONE_NEWIPC != 0 {
		if err := ipc.restoreOwn(s.pid, p.Ns.Ipc); err != nil {
			return fmt.Errorf("process %d: %w", p.Pid, err)
		}
	}
	return nil
}
