package resource

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
	"github.com/ckpt/ckpt/ptrace"
)

// kernelSigaction is the x86-64 struct the rt_sigaction syscall takes.
type kernelSigaction struct {
	Handler  uint64
	Flags    uint64
	Restorer uint64
	Mask     uint64
}

type stackT struct {
	Sp    uint64
	Flags int32
	_     int32
	Size  uint64
}

type itimerval struct {
	IntervalSec, IntervalUsec int64
	ValueSec, ValueUsec       int64
}

const ssOnstack = 1

// SignalSets are the signal sets of a process that its /proc/PID/status
// shows: those it ignores, those it catches, and those pending for the
// whole process.
type SignalSets struct{ Ignored, Caught, SharedPending uint64 }

// ReadSignalSets reads the signal sets of pid.
func ReadSignalSets(pid int) (SignalSets, error) {
	st, err := proc.ReadStatus(pid)
	if err != nil {
		return SignalSets{}, err
	}
	var sets SignalSets
	for _, k := range []struct {
		name string
		set  *uint64
	}{{"SigIgn", &sets.Ignored}, {"SigCgt", &sets.Caught}, {"ShdPnd", &sets.SharedPending}} {
		if *k.set, err = strconv.ParseUint(st[k.name], 16, 64); err != nil {
			return SignalSets{}, fmt.Errorf("%s of %d: %w", k.name, pid, err)
		}
	}
	return sets, nil
}

// SigBit is the bit of signal sig in a signal set.
func SigBit(sig unix.Signal) uint64 { return 1 << (sig - 1) }

// Asked are the signals whose handlers a checkpoint asks for, one injected
// call each: those ignored or caught, but SIGKILL and SIGSTOP.
func (s SignalSets) Asked() uint64 {
	return (s.Ignored | s.Caught) &^ (SigBit(unix.SIGKILL) | SigBit(unix.SIGSTOP))
}

// DumpSignals reads the process's signal dispositions, interval timers and
// process-wide pending signals into p; sets are its signal sets.
//
// Only signals that are ignored or caught are asked for: the others have
// the default action, and asking costs an injected call each. (Flags or a
// mask set together with SIG_DFL are not kept; they have no effect.) The
// calls go in batches (a Go program catches 60 signals), each answer, a
// kernel sigaction or an itimerval, in a slot of its own of the scratch
// area (batchAnswers).
func DumpSignals(t *Target, p *pb.Process, sets SignalSets) error {
	type query struct{ sig, which int } // sig 0: getitimer(which)
	var qs []query
	asked := sets.Asked()
	for sig := 1; sig <= 64; sig++ {
		if asked&SigBit(unix.Signal(sig)) != 0 {
			qs = append(qs, query{sig: sig})
		}
	}
	for which := 0; which < 3; which++ {
		qs = append(qs, query{which: which})
	}
	err := t.batchAnswers(len(qs), func(i int, out uint64) Call {
		q := qs[i]
		if q.sig != 0 {
			return Call{Nr: unix.SYS_RT_SIGACTION, Args: []uint64{uint64(q.sig), 0, out, 8},
				Err: func(err error) error { return fmt.Errorf("read handler of signal %d: %w", q.sig, err) }}
		}
		return Call{Nr: unix.SYS_GETITIMER, Args: []uint64{uint64(q.which), out},
			Err: func(err error) error { return fmt.Errorf("read interval timer %d: %w", q.which, err) }}
	}, func(i int, answer []byte) {
		q := qs[i]
		if q.sig != 0 {
			var act kernelSigaction
			copy(bytesOf(&act), answer)
			if act != (kernelSigaction{}) {
				p.Sigactions = append(p.Sigactions, &pb.Sigaction{Signo: uint32(q.sig), Handler: act.Handler, Flags: act.Flags, Restorer: act.Restorer, Mask: act.Mask})
			}
			return
		}
		var it itimerval
		copy(bytesOf(&it), answer)
		if it != (itimerval{}) {
			p.Itimers = append(p.Itimers, &pb.Itimer{
				Which:      uint32(q.which),
				IntervalNs: it.IntervalSec*1e9 + it.IntervalUsec*1e3,
				ValueNs:    it.ValueSec*1e9 + it.ValueUsec*1e3,
			})
		}
	})
	if err != nil {
		return err
	}
	shared, err := ptrace.PeekSiginfo(t.Pid, true)
	if err != nil {
		return err
	}
	p.SharedPending = shared
	return nil
}

// RestoreSignals installs the dispositions. Timers and pending signals come
// later (RestorePendingAndTimers), once nothing else is left to inject.
func RestoreSignals(t *Target, p *pb.Process) error {
	d := &batchData{t: t}
	var calls []Call
	for _, a := range p.Sigactions {
		if a.Signo < 1 || a.Signo > 64 || a.Signo == uint32(unix.SIGKILL) || a.Signo == uint32(unix.SIGSTOP) {
			return fmt.Errorf("image damaged: handler for signal %d", a.Signo)
		}
		act := kernelSigaction{Handler: a.Handler, Flags: a.Flags, Restorer: a.Restorer, Mask: a.Mask}
		addr, err := d.put(bytesOf(&act))
		if err != nil {
			return err
		}
		calls = append(calls, Call{Nr: unix.SYS_RT_SIGACTION, Args: []uint64{uint64(a.Signo), addr, 0, 8},
			Err: func(err error) error { return fmt.Errorf("restore handler of signal %d: %w", a.Signo, err) }})
	}
	_, err := t.Batch(calls)
	return err
}

// RestoreThreadSignals sets the thread's alternate stack.
func RestoreThreadSignals(t *Target, th *pb.Thread) error {
	c, err := altstackCalls(&batchData{t: t}, th)
	if err != nil {
		return err
	}
	_, err = t.Batch(c)
	return err
}

// altstackCalls are the calls (none or one) that set the thread's
// alternate signal stack.
func altstackCalls(d *batchData, th *pb.Thread) ([]Call, error) {
	if th.AltstackSp == 0 && th.AltstackSize == 0 {
		return nil, nil
	}
	ss := stackT{Sp: th.AltstackSp, Size: th.AltstackSize, Flags: th.AltstackFlags &^ ssOnstack}
	addr, err := d.put(bytesOf(&ss))
	if err != nil {
		return nil, err
	}
	return []Call{{Nr: unix.SYS_SIGALTSTACK, Args: []uint64{addr, 0},
		Err: func(err error) error {
			return fmt.Errorf("restore alternate signal stack %#x+%d: %w", ss.Sp, ss.Size, err)
		}}}, nil
}

// queueSignal queues one saved siginfo again, from inside the process: to
// the process (tid 0) or to one thread. A thread can only queue kernel- or
// tgkill-style siginfo to itself, so per-thread signals must be queued by an
// injection into that very thread.
func queueSignal(t *Target, pid int, info []byte, tid int) error {
	if len(info) != ptrace.SiginfoSize {
		return fmt.Errorf("image damaged: siginfo of %d bytes", len(info))
	}
	sig := binary.LittleEndian.Uint32(info)
	if sig < 1 || sig > 64 {
		return fmt.Errorf("image damaged: pending signal %d", sig)
	}
	addr, err := t.Put(0, info)
	if err != nil {
		return err
	}
	if tid == 0 {
		_, err = t.Syscall(unix.SYS_RT_SIGQUEUEINFO, uint64(pid), uint64(sig), addr)
	} else {
		_, err = t.Syscall(unix.SYS_RT_TGSIGQUEUEINFO, uint64(pid), uint64(tid), uint64(sig), addr)
	}
	if err != nil {
		return fmt.Errorf("queue pending signal %d: %w", sig, err)
	}
	return nil
}

// RestoreThreadPending queues a thread's own pending signals; t must be
// that thread. The caller keeps every signal blocked until the final mask
// is set, so none is delivered before the process is whole.
func RestoreThreadPending(t *Target, pid int, th *pb.Thread) error {
	for _, info := range th.Pending {
		if err := queueSignal(t, pid, info, int(th.Tid)); err != nil {
			return err
		}
	}
	return nil
}

// RestorePendingAndTimers queues the process-wide pending signals again and
// arms the interval timers.
func RestorePendingAndTimers(t *Target, p *pb.Process) error {
	for _, info := range p.SharedPending {
		if err := queueSignal(t, int(p.Pid), info, 0); err != nil {
			return err
		}
	}
	for _, it := range p.Itimers {
		if it.Which > 2 {
			return fmt.Errorf("image damaged: interval timer %d", it.Which)
		}
		iv, v := time.Duration(it.IntervalNs), time.Duration(it.ValueNs)
		if v == 0 && iv != 0 {
			// The timer expired while the process was frozen: its signal is
			// pending and the kernel re-arms the timer only when that
			// signal is taken. setitimer with a zero value would disarm it
			// for good, so arm it for one interval instead.
			v = iv
		}
		val := itimerval{
			IntervalSec: int64(iv / time.Second), IntervalUsec: int64(iv%time.Second) / 1e3,
			ValueSec: int64(v / time.Second), ValueUsec: int64(v%time.Second) / 1e3,
		}
		addr, err := t.Put(0, bytesOf(&val))
		if err != nil {
			return err
		}
		if _, err := t.Syscall(unix.SYS_SETITIMER, uint64(it.Which), addr, 0); err != nil {
			return fmt.Errorf("restore interval timer %d: %w", it.Which, err)
		}
	}
	return nil
}

// RestoreSigtrap installs the process's SIGTRAP action again through a
// syscall-exit stop. Restore stubs run their calls up to an int3, which
// raises SIGTRAP, and the kernel resets an ignored SIGTRAP to SIG_DFL when
// that happens; this call comes after the last int3.
func RestoreSigtrap(t *Target, p *pb.Process) error {
	for _, a := range p.Sigactions {
		if a.Signo != uint32(unix.SIGTRAP) {
			continue
		}
		act := kernelSigaction{Handler: a.Handler, Flags: a.Flags, Restorer: a.Restorer, Mask: a.Mask}
		addr, err := t.Put(0, bytesOf(&act))
		if err != nil {
			return err
		}
		if r, err := t.Inj.ToExit(unix.SYS_RT_SIGACTION, uint64(a.Signo), addr, 0, 8); err != nil || ptrace.Errno(r) != nil {
			return fmt.Errorf("restore handler of SIGTRAP: %v %v", err, ptrace.Errno(r))
		}
	}
	return nil
}
