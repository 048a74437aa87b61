package restart

import (
	"fmt"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/ptrace"
	"github.com/ckpt/ckpt/resource"
)

// An unprivileged restart (ckpt not running as root) rebuilds the image in
// a user namespace of its own, in which the invoker's uid and gid map to
// themselves. In a nutshell:
//
//   - Before anything is created, every process of the image must have
//     exactly the invoker's uids, gids and supplementary groups
//     (checkCreds): nobody gains a privilege from an image.
//   - The first stub starts in a new user namespace with ambient
//     CAP_CHECKPOINT_RESTORE (clone3 set_tid, the exe link of
//     PR_SET_MM_MAP), CAP_SYS_ADMIN and CAP_NET_ADMIN (a container's
//     namespaces), which every stub inherits. They are capabilities in that
//     namespace only, which the invoker owns anyway.
//   - For an image of host processes the stub is also PID 1 of a new PID
//     namespace, where the image's PIDs are free. Init of a PID namespace
//     cannot be left (the namespace dies with it) nor clone with
//     CLONE_PARENT, so it stays: once the tree runs it executes initCode
//     (stub.go), reaping orphans and, when the restored root ends, writing
//     the root's wait status to a pipe ckpt restart reads and exiting,
//     which ends the namespace. ckpt restart signals the root directly.
//     A container image gets a new PID namespace for its own init as
//     before; the stub then only brings the user namespace.
//   - Stubs may not pidfd_getfd from ckpt (that is ptrace access to a
//     process of the parent user namespace), so ckpt sends descriptors over
//     a unix socket instead (resource.FdPuller).
//   - setgroups is denied in the namespace, so threads keep the groups they
//     inherited from ckpt (equal to the image's: checked), and their
//     capabilities are dropped to none after the ids are set, as a process
//     of a non-root user had them.

// userNS is the state of an unprivileged restart.
type userNS struct {
	// newPID: the first stub is the init of a new PID namespace (images of
	// host processes).
	newPID bool
	// sock is ckpt's end of the socket stubs receive descriptors through;
	// stubSock the stubs' end (the first stub's descriptor 3).
	sock, stubSock *os.File
	// statusR and statusW are the pipe the init stub writes the root's
	// wait status to (its descriptor 4).
	statusR, statusW *os.File
	init             *stub
}

// initStatusFd is the init stub's descriptor of the status pipe.
const initStatusFd = 4

// userCaps are the ambient capabilities of the stubs, in their own user
// namespace (see above).
var userCaps = []uintptr{unix.CAP_CHECKPOINT_RESTORE, unix.CAP_SYS_ADMIN, unix.CAP_NET_ADMIN}

func (u *userNS) prepare(container bool) error {
	u.newPID = !container
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("descriptor socket: %w", err)
	}
	u.sock, u.stubSock = os.NewFile(uintptr(fds[0]), "ckpt-send"), os.NewFile(uintptr(fds[1]), "ckpt-receive")
	if u.statusR, u.statusW, err = os.Pipe(); err != nil {
		return fmt.Errorf("status pipe: %w", err)
	}
	return nil
}

// setup makes the first stub start in the new namespaces with the socket
// as its descriptor 3 (where a root restart has its pidfd of ckpt) and the
// status pipe as 4.
func (u *userNS) setup(attr *syscall.ProcAttr) {
	attr.Files = append(attr.Files[:3], u.stubSock.Fd(), u.statusW.Fd())
	flags := uintptr(unix.CLONE_NEWUSER)
	if u.newPID {
		flags |= unix.CLONE_NEWPID
	}
	attr.Sys.Cloneflags = flags
	attr.Sys.UidMappings = []syscall.SysProcIDMap{{ContainerID: os.Geteuid(), HostID: os.Geteuid(), Size: 1}}
	attr.Sys.GidMappings = []syscall.SysProcIDMap{{ContainerID: os.Getegid(), HostID: os.Getegid(), Size: 1}}
	attr.Sys.GidMappingsEnableSetgroups = false
	attr.Sys.AmbientCaps = userCaps
}

func (u *userNS) close() {
	for _, f := range []*os.File{u.sock, u.stubSock, u.statusR, u.statusW} {
		if f != nil {
			f.Close()
		}
	}
}

// checkCreds refuses an image holding a process whose credentials are not
// exactly the invoker's.
func checkCreds(tasks []*task) error {
	uid, euid, suid := unix.Getresuid()
	gid, egid, sgid := unix.Getresgid()
	groups, err := unix.Getgroups()
	if err != nil {
		return fmt.Errorf("read own groups: %w", err)
	}
	own := map[uint32]bool{}
	for _, g := range groups {
		own[uint32(g)] = true
	}
	for _, t := range tasks {
		c := t.p.Creds
		if c == nil {
			continue
		}
		ok := c.Uid == uint32(uid) && c.Euid == uint32(euid) && c.Suid == uint32(suid) && c.Fsuid == uint32(euid) &&
			c.Gid == uint32(gid) && c.Egid == uint32(egid) && c.Sgid == uint32(sgid) && c.Fsgid == uint32(egid) &&
			len(c.Groups) == len(own)
		for _, g := range c.Groups {
			ok = ok && own[g]
		}
		if !ok {
			return fmt.Errorf("process %d (%s) has uids %d/%d/%d/%d, gids %d/%d/%d/%d and groups %v, not those of uid %d gid %d groups %v running ckpt: only root can restore another user's processes",
				t.p.Pid, t.p.Comm, c.Uid, c.Euid, c.Suid, c.Fsuid, c.Gid, c.Egid, c.Sgid, c.Fsgid, c.Groups, euid, egid, groupList(groups))
		}
	}
	return nil
}

func groupList(gs []int) string {
	s := make([]string, len(gs))
	for i, g := range gs {
		s[i] = fmt.Sprint(g)
	}
	return "[" + strings.Join(s, " ") + "]"
}

// capNone is struct __user_cap_header_struct (version 3) followed by
// two zeroed __user_cap_data_struct: no capabilities.
var capNone = func() []byte {
	b := make([]byte, 8+2*12)
	b[0], b[1], b[2], b[3] = 0x22, 0x05, 0x08, 0x20 // _LINUX_CAPABILITY_VERSION_3
	return b
}()

// restoreUserCreds sets the thread's ids (not its groups, see above) and
// drops the capabilities it had as a stub: a process of a non-root user
// has none (checkpoint refuses one that has others).
func restoreUserCreds(t *resource.Target, c *pb.Creds, securebits uint32) error {
	if err := resource.CheckUnprivCaps(uint32(t.Pid), c); err != nil {
		return err
	}
	if securebits != 0 {
		return fmt.Errorf("process %d had the securebits %#x, which only a restart as root can set", t.Pid, securebits)
	}
	if err := resource.RestoreIDs(t, c); err != nil {
		return err
	}
	if _, err := t.Syscall(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	addr, err := t.Put(0, capNone)
	if err != nil {
		return err
	}
	if _, err := t.Syscall(unix.SYS_CAPSET, addr, addr+8); err != nil {
		return fmt.Errorf("drop capabilities: %w", err)
	}
	return nil
}

// startInit turns the first stub into the namespace's init (initCode) once
// the tree runs; root is the restored root's PID inside the namespace.
// cpus, if not nil, is the CPU set it gets back (see Options.cpus).
func (u *userNS) startInit(root uint32, cpus *ptrace.CPUSet) error {
	s := u.init
	if cpus != nil {
		if err := ptrace.SetAffinity(s.pid, cpus); err != nil {
			return fmt.Errorf("init stub: %w", err)
		}
	}
	// The stub must outlive ckpt's tracer thread (--detach, or ckpt
	// restart ending first): no parent-death signal; and it keeps no
	// descriptor of ckpt's.
	if _, err := s.t.Syscall(unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, 0); err != nil {
		return fmt.Errorf("init stub: %w", err)
	}
	if _, err := s.t.Syscall(unix.SYS_CLOSE, stubPidfd); err != nil {
		return fmt.Errorf("init stub: %w", err)
	}
	if err := ptrace.SetSigmask(s.pid, ^uint64(0)); err != nil {
		return err
	}
	regs := s.t.Inj.Base
	regs.Rip, regs.Orig_rax = stubBase+initCodeOff, ^uint64(0)
	regs.R12, regs.R13 = uint64(root), initStatusFd
	if err := ptrace.SetRegs(s.pid, &regs); err != nil {
		return err
	}
	return ptrace.Detach(s.pid, 0)
}

// Wait waits until the restored root ends and returns its wait status.
// The caller must be ckpt's process that ran Run (the root, or the init
// stub, is its child).
func (r *Result) Wait() (unix.WaitStatus, error) {
	pid := r.Pid
	if r.init != 0 {
		pid = r.init
	}
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		break
	}
	if r.status != nil {
		defer r.status.Close()
		var b [4]byte
		if n, _ := r.status.Read(b[:]); n == 4 {
			return unix.WaitStatus(uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24), nil
		}
		return 0, fmt.Errorf("the init of the restored PID namespace ended (%v) before process %d", describeStatus(ws), r.Pid)
	}
	return ws, nil
}

func describeStatus(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return fmt.Sprintf("exit %d", ws.ExitStatus())
}
