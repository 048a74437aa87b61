package resource

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/ptrace"
)

// TestWaitSelfRead blocks a thread of the test in read() on a pipe, as the
// self-checkpoint library does, and finds it; a thread that reads another
// pipe is refused.
func TestWaitSelfRead(t *testing.T) {
	var p, other [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	if err := unix.Pipe2(other[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(other[0])
	defer unix.Close(other[1])
	tids := make(chan int)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tids <- unix.Gettid()
		var b [8]byte
		unix.Read(p[0], b[:])
		close(done)
	}()
	tid := <-tids
	ino, err := SelfPipe(p[1])
	if err != nil {
		t.Fatal(err)
	}
	fd, err := WaitSelfRead(os.Getpid(), tid, ino, 5*time.Second)
	if err != nil || fd != p[0] {
		t.Errorf("WaitSelfRead = %d, %v; want fd %d", fd, err, p[0])
	}
	otherIno, err := SelfPipe(other[1])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WaitSelfRead(os.Getpid(), tid, otherIno, 50*time.Millisecond); err == nil || !strings.Contains(err.Error(), "did not block in read()") {
		t.Errorf("reading another pipe: error %v", err)
	}
	if _, err := SelfPipe(p[0]); err == nil {
		t.Error("SelfPipe accepted a read end")
	}
	unix.Close(p[1])
	<-done
	unix.Close(p[0])
}

func TestSelfReturn(t *testing.T) {
	blocked := ptrace.Regs{Rax: ^uint64(ptrace.ErrRestartSys - 1), Orig_rax: unix.SYS_READ, Rdi: 5, Rip: 0x401002}
	th := &pb.Thread{Tid: 9, Restart: &pb.SyscallRestart{Nr: unix.SYS_READ}}
	if err := SelfReturn(th, blocked, 5); err != nil {
		t.Fatal(err)
	}
	r, err := ThreadRegs(th)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rax != 0 || r.Orig_rax != ^uint64(0) || r.Rip != 0x401002 || th.Restart != nil {
		t.Errorf("image registers rax %#x orig_rax %#x rip %#x restart %v; want a completed read returning 0 at the same rip", r.Rax, r.Orig_rax, r.Rip, th.Restart)
	}
	for _, bad := range []ptrace.Regs{
		{Rax: ^uint64(ptrace.ErrRestartSys - 1), Orig_rax: unix.SYS_READ, Rdi: 6},  // another fd
		{Rax: ^uint64(ptrace.ErrRestartSys - 1), Orig_rax: unix.SYS_WRITE, Rdi: 5}, // another call
		{Rax: 8, Orig_rax: unix.SYS_READ, Rdi: 5},                                  // not blocked
	} {
		if err := SelfReturn(&pb.Thread{Tid: 9}, bad, 5); err == nil {
			t.Errorf("registers %+v accepted", bad)
		}
	}
}
