package resource

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// POSIX timers (timer_create(2)) belong to a process, not a thread. The
// kernel shows how each was made in /proc/PID/timers (ID, clock, signal,
// value, whom it notifies); only the timer itself knows when it fires
// next, so a checkpoint asks it from inside the process (timer_gettime).
// A restart makes each again from inside, with its old ID: the ID is how
// the program names it, and since Linux 6.15 timer_create takes the ID
// wanted while the process has PR_TIMER_CREATE_RESTORE_IDS on.

// The sigev_notify values timer_create accepts.
const (
	sigevSignal   = 0
	sigevNone     = 1
	sigevThread   = 2 // glibc's helper thread; to the kernel like sigevSignal
	sigevThreadID = 4
)

// kernelSigevent is the kernel's struct sigevent: 64 bytes, the thread
// to notify first in its union.
type kernelSigevent struct {
	Value  uint64
	Signo  int32
	Notify int32
	Tid    int32
	_      [44]byte
}

// itimerspec is struct itimerspec (two timespecs).
type itimerspec struct {
	IntervalSec, IntervalNsec int64
	ValueSec, ValueNsec       int64
}

// ParsePosixTimers parses /proc/PID/timers: per timer an "ID:", a
// "signal: SIGNO/VALUE" (VALUE in hex), a "notify: HOW/pid.N" or
// "notify: HOW/tid.N" and a "ClockID:" line. The timers come back sorted
// by ID, without their values.
func ParsePosixTimers(b []byte) ([]*pb.PosixTimer, error) {
	var out []*pb.PosixTimer
	var cur *pb.PosixTimer
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		key, val, ok := strings.Cut(line, ":")
		val = strings.TrimSpace(val)
		if !ok {
			if strings.TrimSpace(line) == "" {
				continue
			}
			return nil, fmt.Errorf("timers: line %q", line)
		}
		if key == "ID" {
			id, err := strconv.ParseInt(val, 10, 32)
			if err != nil || id < 0 {
				return nil, fmt.Errorf("timers: ID %q", val)
			}
			cur = &pb.PosixTimer{Id: int32(id)}
			out = append(out, cur)
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("timers: %q before any ID", line)
		}
		var err error
		switch key {
		case "signal":
			sig, v, _ := strings.Cut(val, "/")
			var n uint64
			if n, err = strconv.ParseUint(sig, 10, 8); err == nil {
				cur.Signo = uint32(n)
				cur.Sigval, err = strconv.ParseUint(v, 16, 64)
			}
		case "notify":
			how, who, _ := strings.Cut(val, "/")
			switch how {
			case "signal":
				cur.Notify = sigevSignal
			case "none":
				cur.Notify = sigevNone
			case "thread":
				cur.Notify = sigevThread
			default:
				err = errors.New("unknown notification")
			}
			if tid, ok := strings.CutPrefix(who, "tid."); ok && err == nil {
				cur.Notify |= sigevThreadID
				var n uint64
				n, err = strconv.ParseUint(tid, 10, 32)
				cur.Tid = uint32(n)
			}
		case "ClockID":
			var n int64
			n, err = strconv.ParseInt(val, 10, 32)
			cur.Clock = int32(n)
		}
		if err != nil {
			return nil, fmt.Errorf("timer %d: %s %q: %v", cur.Id, key, val, err)
		}
	}
	slices.SortFunc(out, func(a, b *pb.PosixTimer) int { return int(a.Id - b.Id) })
	return out, nil
}

// DumpPosixTimers reads the POSIX timers of the process t is a thread of
// into p: how each was made from /proc, when it fires next and its
// interval from timer_gettime, injected in batches (batchAnswers). A kernel without /proc/PID/timers
// (no CONFIG_CHECKPOINT_RESTORE) shows no timers.
func DumpPosixTimers(t *Target, p *pb.Process) error {
	b, err := proc.ReadFile(proc.Path(t.Pid, "timers"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	timers, err := ParsePosixTimers(b)
	if err != nil {
		return fmt.Errorf("POSIX timers of %d: %w", t.Pid, err)
	}
	err = t.batchAnswers(len(timers), func(i int, out uint64) Call {
		pt := timers[i]
		return Call{Nr: unix.SYS_TIMER_GETTIME, Args: []uint64{uint64(pt.Id), out},
			Err: func(err error) error { return fmt.Errorf("read POSIX timer %d of %d: %w", pt.Id, t.Pid, err) }}
	}, func(i int, answer []byte) {
		var its itimerspec
		copy(bytesOf(&its), answer)
		timers[i].IntervalNs = its.IntervalSec*1e9 + its.IntervalNsec
		timers[i].ValueNs = its.ValueSec*1e9 + its.ValueNsec
	})
	if err != nil {
		return err
	}
	p.PosixTimers = timers
	return nil
}

// cpuClockPid is the PID a CPU clock names (0: the caller's own process or
// thread); the kernel keeps it bit-inverted above the clock's 3 low bits.
func cpuClockPid(clock int32) int32 { return ^(clock >> 3) }

// TranslatePosixTimers rewrites the PIDs p's timers hold, the thread they
// notify and the process or thread whose CPU time a clock counts, as seen
// inside a container's PID namespace; inner maps ckpt's PIDs to those.
func TranslatePosixTimers(p *pb.Process, inner map[uint32]uint32) error {
	for _, pt := range p.PosixTimers {
		if pt.Notify&sigevThreadID != 0 {
			pt.Tid = inner[pt.Tid]
		}
		if pt.Clock < 0 {
			if pid := cpuClockPid(pt.Clock); pid != 0 {
				in, ok := inner[uint32(pid)]
				if !ok {
					return fmt.Errorf("process %d has POSIX timer %d on the CPU clock of %d, which is outside the container", p.Pid, pt.Id, pid)
				}
				pt.Clock = ^int32(in)<<3 | pt.Clock&7
			}
		}
	}
	return nil
}

// ValidatePosixTimers checks the timers of an image process before
// anything is built: IDs unique, a notification the kernel knows, a
// signal where one is sent, the thread notified one of the process's.
func ValidatePosixTimers(p *pb.Process) error {
	seen := map[int32]bool{}
	for _, pt := range p.PosixTimers {
		bad := func(what string) error {
			return fmt.Errorf("image damaged: process %d: POSIX timer %d: %s", p.Pid, pt.Id, what)
		}
		if pt.Id < 0 || seen[pt.Id] {
			return bad("ID negative or twice")
		}
		seen[pt.Id] = true
		switch pt.Notify &^ sigevThreadID {
		case sigevSignal, sigevThread:
			if pt.Signo < 1 || pt.Signo > 64 {
				return bad(fmt.Sprintf("signal %d", pt.Signo))
			}
		case sigevNone:
			if pt.Notify&sigevThreadID != 0 {
				return bad("a thread to notify of nothing")
			}
		default:
			return bad(fmt.Sprintf("notification %d", pt.Notify))
		}
		if pt.Notify&sigevThreadID != 0 && !slices.ContainsFunc(p.Threads, func(th *pb.Thread) bool { return th.Tid == pt.Tid }) {
			return bad(fmt.Sprintf("thread %d is not one of the process's", pt.Tid))
		}
		if pt.IntervalNs < 0 || pt.ValueNs < 0 {
			return bad("negative time")
		}
	}
	return nil
}

// RestorePosixTimers makes the process's timers again with their IDs and
// arms them: PR_TIMER_CREATE_RESTORE_IDS on, timer_create and
// timer_settime for each, PR_TIMER_CREATE_RESTORE_IDS off, in batches.
// Timer signals pending at checkpoint are queued as saved (they are among
// the pending signals), not made again.
func RestorePosixTimers(t *Target, p *pb.Process) error {
	if len(p.PosixTimers) == 0 {
		return nil
	}
	if _, err := t.Syscall(unix.SYS_PRCTL, unix.PR_TIMER_CREATE_RESTORE_IDS, unix.PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0); err != nil {
		if errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("process %d has POSIX timers, which need Linux 6.15 or later to be made again with their IDs (PR_TIMER_CREATE_RESTORE_IDS): restart on a newer kernel", p.Pid)
		}
		return fmt.Errorf("restore POSIX timers of %d: %w", p.Pid, err)
	}
	err := makePosixTimers(t, p)
	// Off even after a failure: the process must not keep the mode.
	if _, offErr := t.Syscall(unix.SYS_PRCTL, unix.PR_TIMER_CREATE_RESTORE_IDS, unix.PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0); err == nil && offErr != nil {
		err = fmt.Errorf("restore POSIX timers of %d: %w", p.Pid, offErr)
	}
	return err
}

// makePosixTimers creates and arms p's timers, as many a batch as the
// scratch area holds the arguments of.
func makePosixTimers(t *Target, p *pb.Process) error {
	todo := p.PosixTimers
	for len(todo) > 0 {
		d := &batchData{t: t}
		var calls []Call
		for len(todo) > 0 {
			pt := todo[0]
			ev := kernelSigevent{Value: pt.Sigval, Signo: int32(pt.Signo), Notify: pt.Notify, Tid: int32(pt.Tid)}
			iv, v := pt.IntervalNs, pt.ValueNs
			if v == 0 && iv != 0 {
				// It fired while the process was frozen and its signal is
				// pending: the kernel re-arms a periodic timer only when
				// that signal is taken. A zero value would disarm it for
				// good, so it fires again in one interval.
				v = iv
			}
			its := itimerspec{IntervalSec: iv / 1e9, IntervalNsec: iv % 1e9, ValueSec: v / 1e9, ValueNsec: v % 1e9}
			id := pt.Id
			if d.off+uint64(len(bytesOf(&ev))+8+len(bytesOf(&its))) > t.DataLen() {
				if len(calls) == 0 {
					return fmt.Errorf("scratch area of %d too small for a POSIX timer", t.Pid)
				}
				break
			}
			evAddr, err := d.put(bytesOf(&ev))
			if err != nil {
				return err
			}
			idAddr, err := d.put(bytesOf(&id))
			if err != nil {
				return err
			}
			itsAddr, err := d.put(bytesOf(&its))
			if err != nil {
				return err
			}
			what := fmt.Sprintf("POSIX timer %d of %d (clock %d)", pt.Id, p.Pid, pt.Clock)
			calls = append(calls,
				Call{Nr: unix.SYS_TIMER_CREATE, Args: []uint64{uint64(uint32(pt.Clock)), evAddr, idAddr},
					Err: func(err error) error { return fmt.Errorf("make %s again: %w", what, err) }},
				Call{Nr: unix.SYS_TIMER_SETTIME, Args: []uint64{uint64(pt.Id), 0, itsAddr, 0},
					Err: func(err error) error { return fmt.Errorf("arm %s: %w", what, err) }})
			todo = todo[1:]
		}
		if _, err := t.Batch(calls); err != nil {
			return err
		}
	}
	return nil
}
