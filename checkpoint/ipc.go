package checkpoint

import (
	"fmt"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/resource"
)

// dumpIPC describes the tree's SysV IPC state. The tree shares ckpt's own
// IPC namespace (PreflightTask refuses others for now), which other
// programs may use too: only the segments the tree has attached are saved,
// and the image records that message queues and semaphores were not.
func dumpIPC(opts *Options, ft *frozenTree, mms []*pb.Mm) (*pb.IpcNamespace, error) {
	ns, err := resource.DumpIPCShared(opts.Pid, resource.AttachedShm(mms...))
	if err != nil {
		return nil, err
	}
	if opts.Warn == nil {
		return ns, nil
	}
	for _, f := range ft.procs {
		for _, th := range f.threads {
			if has, _ := resource.HasSemUndo(th.tid); has {
				opts.Warn(fmt.Sprintf("process %d has a semaphore undo list (SEM_UNDO); semaphores of ckpt's own IPC namespace are not captured, so the restarted process will not undo its semaphore operations when it exits", f.pid))
				break
			}
		}
	}
	return ns, nil
}
