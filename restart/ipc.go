package restart

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/resource"
)

// ipcState is the restore of an image's SysV IPC namespaces (records of
// type IPC). Segments of ckpt's own ("host") namespace are restored before
// the tree is built, since areas attach them by id.
type ipcState struct {
	recs []*pb.IpcNamespace
	live map[uint64]*resource.IPCRestore // by IpcNamespace.ns
}

func (s *ipcState) add(ns *pb.IpcNamespace) error {
	if err := resource.ValidateIPC(ns); err != nil {
		return err
	}
	for _, r := range s.recs {
		if r.Ns == ns.Ns {
			return fmt.Errorf("image damaged: IPC namespace %d twice", ns.Ns)
		}
	}
	s.recs = append(s.recs, ns)
	return nil
}

// restoreHost recreates the segments of a host-namespace record in ckpt's
// own IPC namespace, where the restored processes will live.
func (s *ipcState) restoreHost() error {
	if s.live == nil {
		s.live = map[uint64]*resource.IPCRestore{}
	}
	for _, ns := range s.recs {
		if !ns.Host {
			continue // restored into its new namespace (restoreOwn)
		}
		r, err := resource.RestoreIPCNamespace(os.Getpid(), ns)
		if err != nil {
			return err
		}
		s.live[ns.Ns] = r
	}
	return nil
}

// restoreOwn fills the new IPC namespace of process pid (ckpt's PID of a
// stub inside it) with the objects of the image's namespace id, if the
// image saved any.
func (s *ipcState) restoreOwn(pid int, id uint64) error {
	if s.live == nil {
		s.live = map[uint64]*resource.IPCRestore{}
	}
	for _, ns := range s.recs {
		if ns.Ns != id || ns.Host {
			continue
		}
		if s.live[id] != nil {
			return fmt.Errorf("image damaged: IPC namespace %d created twice", id)
		}
		r, err := resource.RestoreIPCNamespace(pid, ns)
		if err != nil {
			return err
		}
		s.live[id] = r
	}
	return nil
}

// semUndo gives the processes of the namespaces restored whole their
// semaphore undo lists; main returns a process's stub by image PID.
func (s *ipcState) semUndo(main func(pid uint32) *resource.Target) error {
	for _, ns := range s.recs {
		if ns.Host || len(ns.Undo) == 0 {
			continue
		}
		if s.live[ns.Ns] == nil {
			return fmt.Errorf("image damaged: undo lists of IPC namespace %d, which no process is in", ns.Ns)
		}
		if err := resource.RestoreSemUndo(ns, main); err != nil {
			return err
		}
	}
	return nil
}

// pages writes the pages of a SysV segment.
func (s *ipcState) pages(pm *pb.PageMap, r io.Reader, buf []byte) error {
	live := s.live[pm.SysvNs]
	if live == nil {
		return fmt.Errorf("image damaged: shared memory pages for IPC namespace %d, which the image does not describe", pm.SysvNs)
	}
	return live.RestorePages(pm, r, buf)
}

// finish ends every namespace's restore, once every process has attached
// its segments and every page is in.
func (s *ipcState) finish() error {
	var errs []error
	for _, r := range s.live {
		errs = append(errs, r.Finish())
	}
	return errors.Join(errs...)
}

// abort undoes what restoreHost created.
func (s *ipcState) abort() {
	for _, r := range s.live {
		r.Abort()
	}
}
