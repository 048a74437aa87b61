package resource

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
	"github.com/ckpt/ckpt/ptrace"
)

// Self-checkpoint. A program checkpoints itself by running ckpt as its
// child (package self, include/ckpt.h): it hands ckpt the write end of a
// pipe and blocks one thread in read() on the read end. ckpt leaves itself
// out of the tree it freezes, and records that thread as if its read had
// returned 0 — end of file, the write end being gone — rather than as an
// interrupted call to restart: rax = 0, orig_rax = -1, rip where the kernel
// left it, after the syscall instruction. The pipe's write end is in no
// process of the image, so the restored pipe has no writer either. The live
// program's read, restarted by the kernel when ckpt releases it, returns the
// checkpoint id that ckpt writes into the pipe once the image is complete.

// SelfPipe returns the inode of the pipe whose write end is ckpt's own
// descriptor fd.
func SelfPipe(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("self-checkpoint descriptor %d: %w", fd, err)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return 0, fmt.Errorf("self-checkpoint descriptor %d: %w", fd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFIFO || fl&unix.O_ACCMODE != unix.O_WRONLY {
		return 0, fmt.Errorf("self-checkpoint descriptor %d is not the write end of a pipe", fd)
	}
	return st.Ino, nil
}

// WaitSelfRead waits until thread tid of pid blocks in read() on a
// descriptor that is the read end of pipe ino, and returns that
// descriptor. The caller starts ckpt before it reads, so ckpt usually
// arrives first.
func WaitSelfRead(pid, tid int, ino uint64, timeout time.Duration) (int, error) {
	if _, err := os.Stat(proc.Path(pid, "task/"+strconv.Itoa(tid))); err != nil {
		return 0, fmt.Errorf("thread %d is not a thread of process %d", tid, pid)
	}
	path := proc.Path(pid, "task/"+strconv.Itoa(tid)+"/syscall")
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		b, err := os.ReadFile(path)
		if err != nil {
			return 0, fmt.Errorf("thread %d of %d: %w", tid, pid, err)
		}
		last = strings.TrimSpace(string(b))
		if f := strings.Fields(last); len(f) > 1 && f[0] == strconv.Itoa(unix.SYS_READ) {
			fd, err := strconv.ParseUint(strings.TrimPrefix(f[1], "0x"), 16, 31)
			if err == nil {
				if target, err := os.Readlink(proc.Path(pid, "fd/"+strconv.FormatUint(fd, 10))); err == nil {
					if i, ok := pipeIno(target); ok && i == ino {
						return int(fd), nil
					}
				}
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("thread %d of %d did not block in read() on the self-checkpoint pipe within %v (it shows %q); only the self-checkpoint library may use --self-tid", tid, pid, timeout, last)
		}
		time.Sleep(time.Millisecond)
	}
}

// CheckSelfWriters refuses when a process of the image holds the write end
// of the self-checkpoint pipe ino: the restored read would then block
// instead of reporting the restart.
func CheckSelfWriters(pids []int, ino uint64) error {
	for _, pid := range pids {
		fds, err := ListFds(pid)
		if err != nil {
			return err
		}
		for _, fd := range fds {
			target, err := os.Readlink(proc.Path(pid, "fd/"+strconv.Itoa(fd)))
			if err != nil {
				continue
			}
			if i, ok := pipeIno(target); !ok || i != ino {
				continue
			}
			info, err := os.ReadFile(proc.Path(pid, "fdinfo/"+strconv.Itoa(fd)))
			if err != nil {
				return err
			}
			for _, l := range strings.Split(string(info), "\n") {
				if v, ok := strings.CutPrefix(l, "flags:"); ok {
					fl, _ := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
					if fl&unix.O_ACCMODE == unix.O_WRONLY {
						return fmt.Errorf("process %d holds the write end of the self-checkpoint pipe as fd %d; the library must close its copy before it reads", pid, fd)
					}
				}
			}
		}
	}
	return nil
}

// SelfReturn makes the image thread th, frozen with regs inside read(fd)
// on the self-checkpoint pipe, return 0 from that read at restart: the
// call is complete (orig_rax = -1, so the kernel does not restart it) and
// rip stays after the syscall instruction. Any other state of the thread
// is refused: the library's protocol would not hold.
func SelfReturn(th *pb.Thread, regs ptrace.Regs, fd int) error {
	switch -int64(regs.Rax) {
	case ptrace.ErrRestartSys, ptrace.ErrRestartNoIntr, ptrace.ErrRestartNoHand:
	default:
		return fmt.Errorf("self-checkpoint thread %d is not blocked in read() (rax %#x)", th.Tid, regs.Rax)
	}
	if regs.Orig_rax != unix.SYS_READ || regs.Rdi != uint64(fd) {
		return fmt.Errorf("self-checkpoint thread %d is in system call %d on %d, not in read() on fd %d", th.Tid, int64(regs.Orig_rax), int64(regs.Rdi), fd)
	}
	regs.Rax, regs.Orig_rax = 0, ^uint64(0)
	th.Regs = append([]byte(nil), bytesOf(&regs)...)
	th.Restart = nil
	return nil
}
