package checkpoint

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
	"github.com/ckpt/ckpt/resource"
)

// checkContainerInit refuses a --container checkpoint of anything but the
// init (PID 1) of a PID namespace other than ckpt's.
func checkContainerInit(pid int) error {
	ids, err := proc.NsIDs(pid, "NSpid")
	if err != nil {
		return err
	}
	if len(ids) < 2 {
		return fmt.Errorf("process %d is in ckpt's own PID namespace: --container needs the init (PID 1) of a container's PID namespace (start one with `ckpt run --pid -- CMD`), or checkpoint it without --container", pid)
	}
	if inner := ids[len(ids)-1]; inner != 1 {
		return fmt.Errorf("process %d is PID %d inside its PID namespace, not its init: --container needs the container's PID 1 (its init is an ancestor of %d)", pid, inner, pid)
	}
	return nil
}

// translatePids rewrites every PID of a container image as seen inside the
// container's PID namespace. Processes (and their threads) are named by
// their own NSpid; groups and sessions by NSpgid and NSsid, which the
// kernel reports as 0 when the group lies outside the namespace.
// It returns the map from ckpt's PIDs to the image's.
func translatePids(procs []*pb.Process) (map[uint32]uint32, error) {
	inner := map[uint32]uint32{}
	for _, p := range procs {
		if p.Zombie {
			// A zombie's status still has its NSpid lines.
			v, err := proc.InnerID(int(p.Pid), "NSpid")
			if err != nil {
				return nil, fmt.Errorf("zombie %d: %w", p.Pid, err)
			}
			inner[p.Pid] = v
			continue
		}
		for _, th := range p.Threads {
			v, err := proc.InnerID(int(th.Tid), "NSpid")
			if err != nil {
				return nil, fmt.Errorf("thread %d: %w", th.Tid, err)
			}
			inner[th.Tid] = v
		}
	}
	for _, p := range procs {
		host := int(p.Pid)
		g, err := proc.InnerID(host, "NSpgid")
		if err != nil {
			return nil, err
		}
		s, err := proc.InnerID(host, "NSsid")
		if err != nil {
			return nil, err
		}
		if g == 0 || s == 0 {
			return nil, fmt.Errorf("process %d is in a process group or session outside its container (the container's init must be a session leader: start it with `ckpt run`, or setsid)", host)
		}
		p.Pid, p.Pgid, p.Sid = inner[p.Pid], g, s
		p.Ppid = inner[p.Ppid] // 0 for the init: its parent is outside
		if p.TtyFgPgid != 0 {
			p.TtyFgPgid = inner[p.TtyFgPgid]
		}
		if p.FilesOwner != 0 {
			p.FilesOwner = inner[p.FilesOwner]
		}
		if p.MmOwner != 0 {
			p.MmOwner = inner[p.MmOwner]
		}
		for _, th := range p.Threads {
			th.Tid = inner[th.Tid]
		}
		if err := resource.TranslatePosixTimers(p, inner); err != nil {
			return nil, err
		}
	}
	return inner, nil
}

// collectNamespaces lists the namespaces the image re-creates: for every
// process, those of its kinds that differ from its parent's (the root's:
// from ckpt's own), once each.
// The configurations of new network namespaces come in their own records.
func collectNamespaces(procs []*pb.Process, outer *pb.NsIds) ([]*pb.Namespace, []*pb.NetNamespace, error) {
	byPid := map[uint32]*pb.Process{}
	for _, p := range procs {
		byPid[p.Pid] = p
	}
	seen := map[uint64]bool{}
	var out []*pb.Namespace
	var nets []*pb.NetNamespace
	for i, p := range procs {
		if p.Ns == nil {
			continue
		}
		have := outer
		if i > 0 {
			parent := byPid[p.Ppid]
			if parent == nil || parent.Ns == nil {
				continue
			}
			have = parent.Ns
		}
		for _, k := range resource.NsKinds {
			id := k.Get(p.Ns)
			if id == k.Get(have) || seen[id] {
				continue
			}
			seen[id] = true
			ns, err := resource.DumpNamespace(int(p.Pid), k, id)
			if err != nil {
				return nil, nil, err
			}
			out = append(out, ns)
			if k.Kind == pb.Namespace_NET {
				net, err := resource.DumpNetNamespace(int(p.Pid))
				if err != nil {
					return nil, nil, fmt.Errorf("process %d: %w", p.Pid, err)
				}
				net.Id = id
				nets = append(nets, net)
			}
		}
	}
	return out, nets, nil
}

// outerOf returns the namespaces a checkpoint of root takes as given:
// ckpt's own, except for a subtree (not a container) whose root is a child
// of the init of a PID namespace of its own — as after an unprivileged
// ckpt restart, which builds the tree under an init stub in a new user
// and PID namespace. Its PID and user namespaces then count as outside
// the tree: the image holds the PIDs inside (restart puts them back in
// whatever PID namespace it restores into) and no namespace to create.
// nested reports that case.
// self are ckpt's own namespaces, mine root's, as the caller read them.
func outerOf(self, mine *pb.NsIds, root int, container bool) (outer *pb.NsIds, nested bool, err error) {
	outer = self
	if container || mine.Pid == outer.Pid {
		return outer, false, nil
	}
	st, err := proc.ReadStat(root)
	if err != nil {
		return nil, false, err
	}
	if parent, err := proc.InnerID(st.Ppid, "NSpid"); err != nil || parent != 1 {
		return outer, false, nil // refused by PreflightNamespaces
	}
	if self, err := proc.InnerID(root, "NSpid"); err != nil || self == 1 {
		return outer, false, nil // an init: a container
	}
	if pns, err := resource.ReadNsIds(st.Ppid); err != nil || pns.Pid != mine.Pid {
		return outer, false, nil
	}
	adj := proto.Clone(outer).(*pb.NsIds)
	adj.Pid, adj.User = mine.Pid, mine.User
	return adj, true, nil
}
