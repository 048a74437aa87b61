package checkpoint

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"time"

	"github.com/ckpt/ckpt/resource"
)

// A self-checkpoint is asked for by the process itself (package self,
// include/ckpt.h): ckpt runs as its child, so the tree leaves out ckpt's
// own process and its descendants, and the calling thread, blocked in
// read() on the pipe ckpt writes the id into, returns end of file in the
// image (resource/self.go).

// selfWait bounds how long ckpt waits for the caller to block in read().
const selfWait = 10 * time.Second

// skip is the process whose subtree a checkpoint leaves out: ckpt itself
// in a self-checkpoint, none otherwise.
func (o *Options) skip() int {
	if o.SelfTid != 0 {
		return os.Getpid()
	}
	return 0
}

// prepareSelf checks a self-checkpoint request and waits until the caller
// blocks in read() on the pipe.
func prepareSelf(o *Options) error {
	if o.Kill || o.Freezer != "" {
		return fmt.Errorf("a self-checkpoint takes neither --kill nor --freezer (the freezer would stop ckpt too)")
	}
	ino, err := resource.SelfPipe(o.SelfFd)
	if err != nil {
		return err
	}
	fd, err := resource.WaitSelfRead(o.Pid, o.SelfTid, ino, selfWait)
	if err != nil {
		return err
	}
	o.selfIno, o.selfReadFd = ino, fd
	return nil
}

// checkSelf checks the frozen tree of a self-checkpoint: the calling
// thread is in it, and no process of it can still write into the pipe.
func checkSelf(o *Options, ft *frozenTree) error {
	if o.SelfTid == 0 {
		return nil
	}
	if len(ft.procs) == 0 || ft.procs[0].pid != o.Pid {
		return fmt.Errorf("self-checkpoint: process %d is not frozen", o.Pid)
	}
	found := false
	for _, th := range ft.procs[0].threads {
		found = found || th.tid == o.SelfTid
	}
	if !found {
		return fmt.Errorf("self-checkpoint: thread %d is not a thread of process %d", o.SelfTid, o.Pid)
	}
	pids := make([]int, len(ft.procs))
	for i, f := range ft.procs {
		pids[i] = f.pid
	}
	return resource.CheckSelfWriters(pids, o.selfIno)
}

// newID returns a random positive checkpoint id: unlike a timestamp, two
// checkpoints never share one, even from two machines.
func newID() (int64, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, fmt.Errorf("checkpoint id: %w", err)
		}
		if id := int64(binary.LittleEndian.Uint64(b[:]) >> 1); id > 0 {
			return id, nil
		}
	}
}
