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
			return fmt.Errorf("the image holds a whole IPC namespace (%d objects): restoring containers is %w yet", len(ns.Shm)+len(ns.Msg)+len(ns.Sem), resource.ErrUnsupported)
		}
		r, err := resource.RestoreIPCNamespace(os.Getpid(), ns)
		if err != nil {
			return err
		}
		s.live[ns.Ns] = r
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
