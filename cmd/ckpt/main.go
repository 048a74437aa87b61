// Command ckpt checkpoints running Linux processes into an image stream and
// restarts them from it.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/checkpoint"
	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/restart"
)

// exitError carries an exit code chosen by a subcommand.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func main() {
	// A checkpoint or restart of a small process allocates a few MB, the
	// default first collection's goal: it would pay for a collection cycle
	// (about a millisecond here) that frees nothing worth having. Collect
	// at five times the live heap instead, and early whenever ckpt's memory
	// nears the limit that keeps its peak well under 32 MiB.
	debug.SetGCPercent(400)
	debug.SetMemoryLimit(24 << 20)
	quietStops()
	root := &cobra.Command{
		Use:           "ckpt",
		Short:         "Checkpoint and restart Linux processes",
		Version:       checkpoint.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(checkpointCmd(), restartCmd(), inspectCmd(), checkCmd(), convertCmd(), runCmd(), initCmd(), repairGuardCmd())
	// CKPT_CPUPROFILE=FILE writes a Go CPU profile, for performance work.
	if p := os.Getenv("CKPT_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	if err := root.Execute(); err != nil {
		pprof.StopCPUProfile()
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintf(os.Stderr, "ckpt: %v\n", err)
		os.Exit(1)
	}
}

// quietStops adds SA_NOCLDSTOP to the Go runtime's SIGCHLD handler. Every
// ptrace stop of a tracee otherwise sends ckpt a SIGCHLD (some 25 in a
// tiny checkpoint, 90 in a 3-process restart), each waking one of its
// threads to run a handler that ignores it; wait4 is woken all the same,
// and exits are still signalled. ckpt's own process only: the library
// leaves the SIGCHLD of the program that embeds it alone.
func quietStops() {
	var act struct{ handler, flags, restorer, mask uint64 }
	const size = 8 // sizeof(sigset_t) for rt_sigaction
	if _, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(unix.SIGCHLD), 0, uintptr(unsafe.Pointer(&act)), size, 0, 0); e != 0 {
		return
	}
	if act.handler == 0 || act.handler == 1 { // SIG_DFL, SIG_IGN: not the runtime's
		return
	}
	const saNoCldStop = 1 // SA_NOCLDSTOP
	act.flags |= saNoCldStop
	unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(unix.SIGCHLD), uintptr(unsafe.Pointer(&act)), 0, size, 0, 0)
}

func warn(s string) { fmt.Fprintf(os.Stderr, "ckpt: warning: %s\n", s) }

// catchInterrupts turns the first SIGINT, SIGTERM or SIGHUP into the
// closing of interrupt, for a checkpoint to stop where it can put the
// processes back (checkpoint.Options.Interrupt); a second one ends ckpt
// at once. A signal ckpt was started with ignored (nohup, a background
// job of a script) stays ignored. stopped tells which signal it was;
// armed is closed once the signals are caught (see notifyAsync).
func catchInterrupts() (interrupt, armed <-chan struct{}, stopped func() syscall.Signal) {
	var catch []os.Signal
	for _, s := range []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		if !signal.Ignored(s) {
			catch = append(catch, s)
		}
	}
	c := make(chan struct{})
	var got atomic.Int32
	if len(catch) == 0 { // Notify with no signal would relay them all
		done := make(chan struct{})
		close(done)
		return c, done, func() syscall.Signal { return 0 }
	}
	sigs := make(chan os.Signal, 1)
	armed = notifyAsync(sigs, catch...)
	go func() {
		s := <-sigs
		got.Store(int32(s.(syscall.Signal)))
		signal.Reset(catch...)
		close(c)
	}()
	return c, armed, func() syscall.Signal { return syscall.Signal(got.Load()) }
}

// notifyAsync relays sigs to c, as signal.Notify does, but returns at
// once: a process's first Notify waits until the runtime has started a
// thread of its own for signals and handed it each signal in turn (0.3 ms
// of a 9 ms checkpoint here). Done on another goroutine, that overlaps
// ckpt's first reads of /proc or of the image. The returned channel is
// closed once the signals are caught; checkpoint and restart wait for it
// before they touch a process (their Options.SignalsArmed).
func notifyAsync(c chan<- os.Signal, sigs ...os.Signal) <-chan struct{} {
	armed := make(chan struct{})
	go func() {
		signal.Notify(c, sigs...)
		close(armed)
	}()
	return armed
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func checkpointCmd() *cobra.Command {
	var out, freezerDir string
	var kill, verbose, compress, container bool
	var self selfFlags
	c := &cobra.Command{
		Use:     "checkpoint [--kill] [--compress] [--container] [--freezer DIR] [-o FILE] PID",
		Aliases: []string{"dump"},
		Short:   "Write an image of a running process to FILE or stdout",
		Long: `Checkpoint PID into FILE, or to standard output when -o is absent.

The process is frozen only while it is dumped and keeps running afterwards,
unless --kill is given: then it is killed once the image is complete, and ckpt
waits until its PID is free, so that a restart can follow at once.

With --container, PID is the init (PID 1) of a container's PID namespace
(see ckpt run): the whole container is checkpointed with its namespaces, and
ckpt restart rebuilds it in new ones.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pid, err := strconv.Atoi(args[0])
			if err != nil || pid <= 0 {
				return fmt.Errorf("checkpoint: %q is not a process id", args[0])
			}
			if cmd.Flags().Changed("self-tid") || cmd.Flags().Changed("self-fd") {
				return self.run(checkpoint.Options{Pid: pid, Kill: kill, Freezer: freezerDir, Compress: compress, Warn: warn, Fault: os.Getenv("CKPT_FAULT")}, out)
			}
			// A reader that goes away (`| head`) must fail the checkpoint
			// with an error, not kill ckpt with SIGPIPE.
			signal.Ignore(syscall.SIGPIPE)
			var w io.Writer = os.Stdout
			var f *imageFile
			if out != "" && out != "-" {
				f = &imageFile{path: out}
				w = f
			} else if isTerminal(os.Stdout) {
				return fmt.Errorf("checkpoint: refusing to write an image to a terminal; use -o FILE or redirect stdout")
			}
			// A large image's file space is allocated ahead of its writes.
			var pre *image.Preallocator
			reserve := func(n uint64) {
				dst := os.Stdout
				if f != nil {
					var err error
					if dst, err = f.open(); err != nil {
						return // the first write reports it
					}
				}
				pre = image.Preallocate(dst, n)
			}
			interrupt, armed, stopped := catchInterrupts()
			prog := startProgress("checkpoint", 0)
			st, err := checkpoint.Run(checkpoint.Options{Pid: pid, Kill: kill, Out: w, Warn: warn, Fault: os.Getenv("CKPT_FAULT"), Freezer: freezerDir, Progress: &prog.count, Compress: compress, Container: container, Interrupt: interrupt, SignalsArmed: armed, Reserve: reserve})
			prog.finish()
			if perr := pre.Finish(); err == nil && perr != nil {
				warn(perr.Error())
			}
			if f != nil {
				if cerr := f.close(err != nil); err == nil && cerr != nil {
					err = fmt.Errorf("checkpoint: write %s: %w", out, cerr)
				}
			}
			if errors.Is(err, checkpoint.ErrInterrupted) {
				sig := stopped()
				fmt.Fprintf(os.Stderr, "ckpt: checkpoint of %d interrupted by %v; the process runs on as before, and no complete image was written\n", pid, sig)
				return &exitError{code: 128 + int(sig)}
			}
			if err != nil {
				return err
			}
			if verbose {
				fmt.Fprintf(os.Stderr, "ckpt: checkpointed %d: %d bytes, frozen %v, total %v, peak memory %s\n", pid, st.Bytes, st.Frozen, st.Total, peakMemory())
				fmt.Fprintf(os.Stderr, "ckpt: phases: %v\n", st.Phases)
			}
			return nil
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "", "write the image to `FILE` (default: standard output)")
	c.Flags().BoolVar(&container, "container", false, "checkpoint the whole container whose init is PID")
	c.Flags().BoolVar(&kill, "kill", false, "kill the process once the image is complete")
	c.Flags().BoolVar(&compress, "compress", false, "write a zstd-compressed image (for slow links; restart reads it as is)")
	c.Flags().StringVar(&freezerDir, "freezer", "", "stop the tree with the freezer cgroup `DIR` (v1 freezer.state or v2 cgroup.freeze) that holds it; tasks the user froze stay frozen")
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "report size and timing on stderr")
	self.add(c)
	return c
}

func restartCmd() *cobra.Command {
	var detach, verbose, vdsoProxy, ignoreCPU bool
	c := &cobra.Command{
		Use:     "restart [--detach] [FILE]",
		Aliases: []string{"restore"},
		Short:   "Restart a process from an image (FILE, or stdin when absent or -)",
		Long: `Restart the process saved in FILE (or read from standard input) with its
original PID.

Without --detach ckpt stays its parent: it forwards signals to it and exits
with its exit status, as if it had run it. With --detach ckpt returns as soon
as the process runs.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var in io.Reader = os.Stdin
			if len(args) == 1 && args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return fmt.Errorf("restart: %w", err)
				}
				defer f.Close()
				in = f
			} else if isTerminal(os.Stdin) {
				return fmt.Errorf("restart: no image: give a FILE or pipe an image to standard input")
			}
			// Catch forwarded signals from before the first process exists
			// (Run waits for armed), so none is lost between the release of
			// the process and the wait.
			sigs := make(chan os.Signal, 16)
			var armed <-chan struct{}
			if detach {
				armed = notifyAsync(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
			} else {
				armed = notifyAsync(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGCONT, syscall.SIGWINCH)
			}
			// Descriptors that were on a terminal come back on ours.
			var term *os.File
			for _, f := range []*os.File{os.Stdin, os.Stdout, os.Stderr} {
				if isTerminal(f) {
					term = f
					break
				}
			}
			if term != nil && !detach {
				// Taking the terminal back when the job ends is done from
				// the background; SIGTTOU must not stop ckpt then.
				signal.Ignore(syscall.SIGTTOU)
				defer unix.IoctlSetPointerInt(int(term.Fd()), unix.TIOCSPGRP, unix.Getpgrp())
			}
			// A signal that arrives while the restore is in progress ends
			// ckpt, and the half-built processes die with it
			// (PTRACE_O_EXITKILL): nothing is left behind.
			runDone, watcher := make(chan struct{}), make(chan struct{})
			var held []os.Signal // others, forwarded once the process runs
			go func() {
				defer close(watcher)
				for {
					select {
					case s := <-sigs:
						switch s {
						case syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT:
							fmt.Fprintf(os.Stderr, "ckpt: restart interrupted by %v; nothing was restored\n", s)
							os.Exit(128 + int(s.(syscall.Signal)))
						}
						held = append(held, s)
					case <-runDone:
						return
					}
				}
			}()
			var total uint64 // the share done is shown for uncompressed files
			if f, ok := in.(*os.File); ok {
				var magic [4]byte
				if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
					if n, _ := f.ReadAt(magic[:], 0); n == 4 && magic != [4]byte{0x28, 0xb5, 0x2f, 0xfd} {
						total = uint64(fi.Size())
					}
				}
			}
			prog := startProgress("restart", total)
			// The image on standard input is no standard input to give;
			// a detached restart gives none: whoever runs it would wait
			// for the end of a pipe the process then keeps open.
			var stdio [3]*os.File
			if !detach {
				stdio = [3]*os.File{os.Stdin, os.Stdout, os.Stderr}
				if in == io.Reader(os.Stdin) {
					stdio[0] = nil
				}
			}
			res, err := restart.Run(restart.Options{In: in, Warn: warn, Fault: os.Getenv("CKPT_FAULT"), Terminal: term, Stdio: stdio, Foreground: !detach, Progress: &prog.count, SignalsArmed: armed, VdsoProxy: vdsoProxy, IgnoreCPU: ignoreCPU})
			prog.finish()
			close(runDone)
			<-watcher
			if err != nil {
				return convertHint(err, args)
			}
			if verbose {
				fmt.Fprintf(os.Stderr, "ckpt: %s, peak memory %s\n", res.Describe(), peakMemory())
				fmt.Fprintf(os.Stderr, "ckpt: phases: %v\n", res.Phases)
			}
			if detach {
				return nil
			}
			for _, s := range held {
				unix.Kill(res.Pid, s.(syscall.Signal))
			}
			return &exitError{code: waitRestored(res, sigs)}
		},
	}
	c.Flags().BoolVarP(&detach, "detach", "d", false, "return as soon as the process runs")
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "report timing on stderr")
	c.Flags().BoolVar(&ignoreCPU, "ignore-cpu", false, "restart an image from a CPU with vector registers (e.g. AVX-512) this one lacks, dropping their contents")
	// For tests and for trying out an image's move to another kernel:
	// restart through a vDSO proxy as if this kernel's vDSO differed.
	c.Flags().BoolVar(&vdsoProxy, "vdso-proxy", false, "restore the vDSO through a proxy even if it is this kernel's")
	c.Flags().MarkHidden("vdso-proxy")
	return c
}

// waitChild forwards signals to pid until it ends and returns the exit code
// a shell would report. A process killed by a signal makes ckpt die of the
// same signal.
func waitChild(pid int, sigs chan os.Signal) int {
	return waitRestored(&restart.Result{Pid: pid}, sigs)
}

// waitRestored is waitChild for a restored process, which in an
// unprivileged restart is not ckpt's child but the init stub's (see
// restart.Result.Wait).
func waitRestored(res *restart.Result, sigs chan os.Signal) int {
	pid := res.Pid
	done := make(chan unix.WaitStatus, 1)
	go func() {
		ws, err := res.Wait()
		if err != nil {
			warn(err.Error())
			ws = unix.WaitStatus(255 << 8)
		}
		done <- ws
	}()
	for {
		select {
		case s := <-sigs:
			unix.Kill(pid, s.(syscall.Signal))
		case ws := <-done:
			signal.Reset()
			if ws.Signaled() {
				sig := ws.Signal()
				if sig != unix.SIGKILL && sig != unix.SIGSTOP {
					// Die of the same signal, as a shell would see it. The
					// runtime's handler does that once nothing is notified;
					// give it the moment it needs.
					signal.Reset(sig)
					unix.Kill(os.Getpid(), sig)
					time.Sleep(time.Second)
				}
				return 128 + int(sig)
			}
			return ws.ExitStatus()
		}
	}
}

// peakMemory is ckpt's own peak resident set (VmHWM), for -v reports.
func peakMemory() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
