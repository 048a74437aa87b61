package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"unsafe"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/proc"
	"github.com/ckpt/ckpt/ptrace"
	"github.com/ckpt/ckpt/resource"
)

// feature is one kernel interface ckpt relies on.
type feature struct {
	name     string
	required bool
	without  string
	probe    func() error
}

func features() []feature {
	return []feature{
		{"x86-64", true, "ckpt only knows the x86-64 register layout", func() error {
			var u unix.Utsname
			unix.Uname(&u)
			if m := unix.ByteSliceToString(u.Machine[:]); m != "x86_64" {
				return fmt.Errorf("machine is %s", m)
			}
			return nil
		}},
		{"ptrace seize/interrupt, registers, xstate", true, "nothing can be frozen or read", probePtrace},
		{"process_vm_readv", true, "memory cannot be read or written", func() error {
			b := []byte{0}
			_, err := unix.ProcessVMReadv(os.Getpid(), []unix.Iovec{{Base: &b[0], Len: 1}}, []unix.RemoteIovec{{Base: 0, Len: 0}}, 0)
			return ignore(err, unix.EFAULT, unix.EINVAL)
		}},
		{"clone3 with set_tid (CAP_CHECKPOINT_RESTORE)", true, "processes cannot get their original PID back", func() error {
			_, _, e := unix.Syscall(unix.SYS_CLONE3, 0, 0, 0)
			if e == unix.ENOSYS {
				return e
			}
			return statFile("/proc/sys/kernel/ns_last_pid", false)
		}},
		{"pidfd_open and pidfd_getfd", true, "open files cannot be handed to restored processes", func() error {
			fd, err := unix.PidfdOpen(os.Getpid(), 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			nfd, err := unix.PidfdGetfd(fd, 0, 0)
			if err == nil {
				unix.Close(nfd)
			}
			return err
		}},
		{"prctl(PR_SET_MM_MAP)", true, "brk, arguments, auxv and exe link cannot be restored", func() error {
			var size uint32
			_, _, e := unix.Syscall6(unix.SYS_PRCTL, unix.PR_SET_MM, 15 /* PR_SET_MM_MAP_SIZE */, uintptr(unsafe.Pointer(&size)), 0, 0, 0)
			if e != 0 || size == 0 {
				return fmt.Errorf("kernel built without CONFIG_CHECKPOINT_RESTORE")
			}
			return nil
		}},
		{"kcmp", true, "shared open files cannot be recognised", func() error {
			_, _, e := unix.Syscall6(unix.SYS_KCMP, uintptr(os.Getpid()), uintptr(os.Getpid()), 0, 0, 0, 0)
			return ignore(errno(e), unix.EBADF)
		}},
		{"rseq configuration (PTRACE_GET_RSEQ_CONFIGURATION)", true, "glibc programs crash after restart", probeRseq},
		{"/proc/PID/pagemap", true, "ckpt cannot tell touched pages from untouched ones", func() error {
			return statFile("/proc/self/pagemap", false)
		}},
		{"PAGEMAP_SCAN (Linux 6.7)", false, "the pages to dump are found by reading /proc/PID/pagemap, 8 bytes per page of address space (slower for large sparse processes, e.g. Go and Java runtimes)", proc.ProbePageScan},
		{"cgroup v1 freezer or v2 cgroup.freeze", false, "--freezer cannot be used (ptrace freezing still works)", func() error {
			for _, p := range []string{"/sys/fs/cgroup/freezer", "/sys/fs/cgroup/cgroup.controllers", "/sys/fs/cgroup/unified/cgroup.controllers"} {
				if _, err := os.Stat(p); err == nil {
					return nil
				}
			}
			return fmt.Errorf("no freezer found")
		}},
		{"POSIX timer IDs (PR_TIMER_CREATE_RESTORE_IDS)", false, "processes with POSIX timers cannot be restarted here", func() error {
			_, err := unix.PrctlRetInt(unix.PR_TIMER_CREATE_RESTORE_IDS, unix.PR_TIMER_CREATE_RESTORE_IDS_GET, 0, 0, 0)
			return err
		}},
		{"TCP repair mode (TCP_REPAIR, CAP_NET_ADMIN)", false, "established TCP connections are refused", func() error {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_ON)
		}},
		{"sock_diag for unix sockets (CONFIG_UNIX_DIAG)", false, "unix sockets cannot be checkpointed", resource.ProbeUnixDiag},
		{"vDSO functions (restart on another kernel)", false, "images do not record the vDSO, and restart them only under a kernel whose vDSO has the same size", func() error {
			syms, _, _, err := resource.VdsoSymbols()
			if err == nil && len(syms) == 0 {
				err = fmt.Errorf("no functions")
			}
			return err
		}},
		{"AMX permission (ARCH_REQ_XCOMP_PERM)", false, "processes that use AMX cannot be restarted here", func() error {
			for _, c := range ptrace.XstateLayout() {
				if c.Feature == ptrace.FeatureTileData {
					return nil
				}
			}
			return fmt.Errorf("this CPU has no AMX")
		}},
	}
}

// probeTracee starts a sleeping child, freezes it the way a checkpoint
// does, runs f on it, and releases and reaps it.
func probeTracee(f func(pid int) error) error {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		return fmt.Errorf("no sleep program to probe with")
	}
	cmd := exec.Command(sleep, "10")
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	pid := cmd.Process.Pid
	return ptrace.Run(func() error {
		if err := ptrace.Seize(pid); err != nil {
			return err
		}
		defer ptrace.Detach(pid, 0)
		if err := ptrace.Interrupt(pid); err != nil {
			return err
		}
		if _, err := ptrace.WaitInterrupted(pid); err != nil {
			return err
		}
		return f(pid)
	})
}

func probePtrace() error {
	return probeTracee(func(pid int) error {
		if _, err := ptrace.GetRegs(pid); err != nil {
			return err
		}
		if _, err := ptrace.GetXstate(pid); err != nil {
			return err
		}
		_, err := ptrace.PeekSiginfo(pid, false)
		return err
	})
}

func probeRseq() error {
	return probeTracee(func(pid int) error {
		_, err := ptrace.GetRseq(pid)
		return err
	})
}

func errno(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func ignore(err error, ok ...unix.Errno) error {
	for _, e := range ok {
		if err == e {
			return nil
		}
	}
	return err
}

func statFile(p string, optional bool) error {
	if _, err := os.Stat(p); err != nil && !optional {
		return err
	}
	return nil
}

func checkCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Report the kernel features ckpt relies on",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			missing := 0
			for _, f := range features() {
				err := f.probe()
				state := "ok"
				if err != nil {
					state = "MISSING"
					if f.required {
						missing++
					}
				}
				kind := "required"
				if !f.required {
					kind = "optional"
				}
				fmt.Printf("%-8s %-52s (%s)", state, f.name, kind)
				if err != nil {
					fmt.Printf(": %v; without it %s", err, f.without)
				}
				fmt.Println()
			}
			if os.Geteuid() != 0 {
				fmt.Printf("as uid %d: checkpoint of your own processes (not shared memory mappings); ", os.Geteuid())
				if err := probeUserRestore(); err != nil {
					fmt.Printf("restart NOT possible: a user+PID namespace with CAP_CHECKPOINT_RESTORE cannot be created (%v)\n", err)
				} else {
					fmt.Println("restart of images of your own processes in a user+PID namespace of their own (see docs/security.md)")
				}
			}
			if missing > 0 {
				return fmt.Errorf("check: %d required feature%s missing", missing, strings.Repeat("s", min(missing-1, 1)))
			}
			return nil
		},
	}
}

// probeUserRestore tells whether an unprivileged restart can create its
// namespaces: a child in a new user and PID namespace with ambient
// CAP_CHECKPOINT_RESTORE (ckpt --version runs there).
func probeUserRestore() error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, "--version")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWUSER | unix.CLONE_NEWPID,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: os.Geteuid(), HostID: os.Geteuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: os.Getegid(), HostID: os.Getegid(), Size: 1}},
		AmbientCaps: []uintptr{unix.CAP_CHECKPOINT_RESTORE},
	}
	return cmd.Run()
}
