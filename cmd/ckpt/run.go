package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
	"github.com/ckpt/ckpt/resource"
)

// runNs are the namespaces `ckpt run` can create.
type runNs struct {
	pid, uts, ipc, mount, net, time bool
	hostname                        string
	timeOffset                      time.Duration
}

func (n *runNs) cloneflags() uintptr {
	var f uintptr
	for _, x := range []struct {
		on   bool
		flag uintptr
	}{{n.pid, unix.CLONE_NEWPID}, {n.uts, unix.CLONE_NEWUTS}, {n.ipc, unix.CLONE_NEWIPC}, {n.mount, unix.CLONE_NEWNS}, {n.net, unix.CLONE_NEWNET}} {
		if x.on {
			f |= x.flag
		}
	}
	return f
}

// initArgs passes the setup to do inside the namespaces to `ckpt __init`.
func (n *runNs) initArgs() []string {
	a := []string{"__init"}
	if n.mount {
		a = append(a, "--mount")
	}
	if n.pid && n.mount {
		a = append(a, "--proc")
	}
	if n.net {
		a = append(a, "--lo")
	}
	if n.uts && n.hostname != "" {
		a = append(a, "--hostname", n.hostname)
	}
	if n.time {
		a = append(a, "--time-offset", n.timeOffset.String())
	}
	return a
}

func runCmd() *cobra.Command {
	var ns runNs
	var pidFile string
	c := &cobra.Command{
		Use:   "run [--pid] [--uts] [--ipc] [--mount] [--net] [--time] [--pid-file FILE] -- CMD [ARGS...]",
		Short: "Start a program in new namespaces (a minimal container)",
		Long: `Run CMD in fresh namespaces, as the init of a container that
ckpt checkpoint --container can checkpoint whole.

--mount gives it a private copy of the mount table (and, with --pid, a /proc
of its own PID namespace); --net a network namespace whose loopback is up;
--uts its own host name (--hostname); --time a time namespace whose clocks
are shifted by --time-offset. CMD runs in a session of its own. ckpt stays
its parent: it forwards signals to it and exits with its status.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("run: %w", err)
			}
			attr := &syscall.SysProcAttr{Cloneflags: ns.cloneflags(), Setsid: true, Pdeathsig: syscall.SIGKILL}
			c := exec.Command(self, append(append(ns.initArgs(), "--"), args...)...)
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
			c.SysProcAttr = attr
			sigs := make(chan os.Signal, 16)
			signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGCONT, syscall.SIGWINCH)
			if err := c.Start(); err != nil {
				return fmt.Errorf("run %s: %w (creating namespaces needs root)", args[0], err)
			}
			if pidFile != "" {
				if err := os.WriteFile(pidFile, []byte(strconv.Itoa(c.Process.Pid)+"\n"), 0o644); err != nil {
					c.Process.Kill()
					c.Wait()
					return fmt.Errorf("run: write pid file: %w", err)
				}
			}
			// Let go of the program's standard files: a container must
			// share nothing with processes outside it (see leak detection
			// in ckpt checkpoint --container).
			if null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
				for fd := 0; fd <= 2; fd++ {
					unix.Dup3(int(null.Fd()), fd, 0)
				}
				null.Close()
			}
			if !ns.pid {
				return &exitError{code: waitChild(c.Process.Pid, sigs)}
			}
			// A PID namespace's init ignores the signals it has no handler
			// for, even from outside: stop it with SIGKILL when asked to
			// stop and it cannot hear it.
			fwd := make(chan os.Signal, 16)
			go func() {
				for s := range sigs {
					if stop := s == syscall.SIGINT || s == syscall.SIGTERM || s == syscall.SIGHUP || s == syscall.SIGQUIT; stop && !catches(c.Process.Pid, s.(syscall.Signal)) {
						s = syscall.SIGKILL
					}
					fwd <- s
				}
			}()
			return &exitError{code: waitChild(c.Process.Pid, fwd)}
		},
	}
	f := c.Flags()
	f.BoolVar(&ns.pid, "pid", false, "new PID namespace: CMD is its PID 1")
	f.BoolVar(&ns.uts, "uts", false, "new UTS namespace (host and domain name)")
	f.BoolVar(&ns.ipc, "ipc", false, "new IPC namespace (SysV IPC, POSIX message queues)")
	f.BoolVar(&ns.mount, "mount", false, "new mount namespace, a private copy of the current one")
	f.BoolVar(&ns.net, "net", false, "new network namespace with loopback up")
	f.BoolVar(&ns.time, "time", false, "new time namespace")
	f.StringVar(&ns.hostname, "hostname", "", "host name in the new UTS namespace")
	f.DurationVar(&ns.timeOffset, "time-offset", 0, "shift CLOCK_MONOTONIC and CLOCK_BOOTTIME by this much in the new time namespace")
	f.StringVar(&pidFile, "pid-file", "", "write CMD's PID (as seen from outside) to `FILE`")
	f.SetInterspersed(false)
	return c
}

// initCmd runs inside the new namespaces, sets them up and execs the
// program, which so becomes the container's init.
func initCmd() *cobra.Command {
	var mount, procfs, lo bool
	var hostname, offset string
	c := &cobra.Command{
		Use:    "__init [flags] -- CMD [ARGS...]",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if mount {
				// Mounts made inside must not propagate to the host.
				if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
					return fmt.Errorf("run: make mounts private: %w", err)
				}
			}
			if procfs {
				if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
					return fmt.Errorf("run: mount /proc: %w", err)
				}
			}
			if lo {
				if err := loopbackUp(); err != nil {
					return fmt.Errorf("run: bring loopback up: %w", err)
				}
			}
			if hostname != "" {
				if err := unix.Sethostname([]byte(hostname)); err != nil {
					return fmt.Errorf("run: set host name: %w", err)
				}
			}
			// Namespace changes below are per thread: exec from this one.
			runtime.LockOSThread()
			// Go made this thread with CLONE_SYSVSEM, which gives every
			// thread a (shared, empty) semaphore undo list; the program
			// must start without one, as after a plain fork.
			if err := unix.Unshare(unix.CLONE_SYSVSEM); err != nil {
				return fmt.Errorf("run: drop semaphore undo list: %w", err)
			}
			if offset != "" {
				// A time namespace is entered by the next exec, and its
				// offsets can only be set before that.
				if err := unix.Unshare(unix.CLONE_NEWTIME); err != nil {
					return fmt.Errorf("run: create time namespace: %w", err)
				}
				d, err := time.ParseDuration(offset)
				if err != nil {
					return fmt.Errorf("run: time offset: %w", err)
				}
				// The namespace is this thread's (it unshared): its
				// offsets are under /proc/TID (there is none under
				// /proc/thread-self), with the TID /proc knows, which
				// differs from ours when /proc is the host's.
				self, err := os.Readlink("/proc/thread-self")
				if err != nil {
					return fmt.Errorf("run: %w", err)
				}
				ns := &pb.Namespace{Kind: pb.Namespace_TIME, MonotonicOffsetNs: int64(d), BoottimeOffsetNs: int64(d)}
				if err := resource.WriteTimeOffsets("/proc/"+path.Base(self)+"/timens_offsets", ns); err != nil {
					return fmt.Errorf("run: %w", err)
				}
			}
			prog, err := exec.LookPath(args[0])
			if err != nil {
				return fmt.Errorf("run: %w", err)
			}
			signal.Reset()
			if err := syscall.Exec(prog, args, os.Environ()); err != nil {
				return fmt.Errorf("run %s: %w", prog, err)
			}
			return nil
		},
	}
	f := c.Flags()
	f.BoolVar(&mount, "mount", false, "")
	f.BoolVar(&procfs, "proc", false, "")
	f.BoolVar(&lo, "lo", false, "")
	f.StringVar(&hostname, "hostname", "", "")
	f.StringVar(&offset, "time-offset", "", "")
	f.SetInterspersed(false)
	return c
}

// loopbackUp sets IFF_UP on lo, as a new network namespace has it down.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// catches tells whether process pid has a handler for sig.
func catches(pid int, sig syscall.Signal) bool {
	st, err := proc.ReadStatus(pid)
	if err != nil {
		return false
	}
	mask, err := st.Uints("SigCgt", 16)
	return err == nil && len(mask) == 1 && mask[0]&(1<<(uint(sig)-1)) != 0
}
