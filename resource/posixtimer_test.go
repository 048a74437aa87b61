package resource

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/ckpt/ckpt/image/pb"
)

func TestParsePosixTimers(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []*pb.PosixTimer
		err  string
	}{
		{name: "none", in: ""},
		{
			name: "kinds",
			in: "ID: 6\nsignal: 38/000000000000004d\nnotify: signal/pid.28919\nClockID: 1\n" +
				"ID: 4\nsignal: 0/0000000000000000\nnotify: none/pid.28919\nClockID: -6\n" +
				"ID: 2\nsignal: 37/ffff800000000000\nnotify: signal/tid.28921\nClockID: 0\n" +
				"ID: 0\nsignal: 14/0000000000000000\nnotify: thread/pid.28919\nClockID: 7\n",
			want: []*pb.PosixTimer{
				{Id: 0, Signo: 14, Notify: sigevThread, Clock: 7},
				{Id: 2, Signo: 37, Sigval: 0xffff800000000000, Notify: sigevSignal | sigevThreadID, Tid: 28921, Clock: 0},
				{Id: 4, Notify: sigevNone, Clock: -6},
				{Id: 6, Signo: 38, Sigval: 0x4d, Notify: sigevSignal, Clock: 1},
			},
		},
		{name: "line before ID", in: "signal: 14/0\n", err: "before any ID"},
		{name: "negative ID", in: "ID: -1\n", err: "ID \"-1\""},
		{name: "unknown notification", in: "ID: 1\nnotify: carrier-pigeon/pid.1\n", err: "unknown notification"},
		{name: "bad value", in: "ID: 1\nsignal: 14/xyz\n", err: "timer 1: signal"},
		{name: "no colon", in: "ID: 1\ngarbage\n", err: "line \"garbage\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePosixTimers([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one with %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d timers, want %d: %v", len(got), len(tt.want), got)
			}
			for i := range got {
				if !proto.Equal(got[i], tt.want[i]) {
					t.Errorf("timer %d = %v, want %v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestValidatePosixTimers(t *testing.T) {
	threads := []*pb.Thread{{Tid: 10}, {Tid: 11}}
	tests := []struct {
		name  string
		timer *pb.PosixTimer
		err   string
	}{
		{"signal", &pb.PosixTimer{Id: 1, Signo: 14}, ""},
		{"to a thread", &pb.PosixTimer{Id: 1, Signo: 34, Notify: sigevThreadID, Tid: 11}, ""},
		{"no signal", &pb.PosixTimer{Id: 1, Notify: sigevNone}, ""},
		{"negative ID", &pb.PosixTimer{Id: -1, Signo: 14}, "ID negative"},
		{"signal 0", &pb.PosixTimer{Id: 1}, "signal 0"},
		{"signal 65", &pb.PosixTimer{Id: 1, Signo: 65}, "signal 65"},
		{"unknown notification", &pb.PosixTimer{Id: 1, Signo: 14, Notify: 3}, "notification 3"},
		{"thread of another process", &pb.PosixTimer{Id: 1, Signo: 14, Notify: sigevThreadID, Tid: 12}, "thread 12"},
		{"thread and no signal", &pb.PosixTimer{Id: 1, Notify: sigevNone | sigevThreadID, Tid: 10}, "thread to notify of nothing"},
		{"negative time", &pb.PosixTimer{Id: 1, Signo: 14, ValueNs: -5}, "negative time"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidatePosixTimers(&pb.Process{Pid: 10, Threads: threads, PosixTimers: []*pb.PosixTimer{tt.timer}})
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "image damaged") || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err = %v, want image damaged: %s", err, tt.err)
			}
		})
	}
	twice := &pb.Process{Pid: 10, Threads: threads, PosixTimers: []*pb.PosixTimer{{Id: 3, Signo: 14}, {Id: 3, Signo: 14}}}
	if err := ValidatePosixTimers(twice); err == nil {
		t.Error("an ID twice passed")
	}
}

func TestTranslatePosixTimers(t *testing.T) {
	cpuClock := func(pid int32, kind int32) int32 { return ^pid<<3 | kind }
	p := &pb.Process{Pid: 2, PosixTimers: []*pb.PosixTimer{
		{Id: 0, Notify: sigevSignal | sigevThreadID, Tid: 501, Signo: 14},
		{Id: 1, Clock: cpuClock(500, 2)},      // CPU time of process 500
		{Id: 2, Clock: cpuClock(501, 4|2)},    // of thread 501
		{Id: 3, Clock: cpuClock(0, 2)},        // of its own process
		{Id: 4, Clock: 1, Tid: 777, Signo: 9}, // no thread named: left alone
	}}
	if err := TranslatePosixTimers(p, map[uint32]uint32{500: 1, 501: 2}); err != nil {
		t.Fatal(err)
	}
	want := []struct{ tid, clock int32 }{{2, 0}, {0, cpuClock(1, 2)}, {0, cpuClock(2, 6)}, {0, cpuClock(0, 2)}, {777, 1}}
	for i, w := range want {
		pt := p.PosixTimers[i]
		if int32(pt.Tid) != w.tid || pt.Clock != w.clock {
			t.Errorf("timer %d: tid %d clock %d, want %d %d", pt.Id, pt.Tid, pt.Clock, w.tid, w.clock)
		}
	}
	if got := cpuClockPid(cpuClock(1, 2)); got != 1 {
		t.Errorf("cpuClockPid = %d, want 1", got)
	}
	outside := &pb.Process{Pid: 2, PosixTimers: []*pb.PosixTimer{{Id: 0, Clock: cpuClock(900, 2)}}}
	if err := TranslatePosixTimers(outside, map[uint32]uint32{500: 1}); err == nil || !strings.Contains(err.Error(), "outside the container") {
		t.Errorf("clock of a process outside: err = %v", err)
	}
}

// TestPosixTimersRoundTrip makes timers in a sleeping process from an
// image's description, with their IDs, reads them back as a checkpoint
// would, and checks that a timer the kernel refuses is named in the error.
func TestPosixTimersRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace of a child is enough, but the harness runs as root)")
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	time.Sleep(50 * time.Millisecond) // asleep in nanosleep
	p := &pb.Process{Pid: uint32(pid), Threads: []*pb.Thread{{Tid: uint32(pid)}}, PosixTimers: []*pb.PosixTimer{
		{Id: 3, Clock: unix.CLOCK_MONOTONIC, Signo: 34, Sigval: 0xabc, IntervalNs: 5e9, ValueNs: 2e9},
		{Id: 7, Clock: unix.CLOCK_BOOTTIME, Notify: sigevNone, ValueNs: 300e9},
		{Id: 1000, Clock: unix.CLOCK_REALTIME, Signo: 10, Notify: sigevSignal | sigevThreadID, Tid: uint32(pid)},
	}}
	if err := ValidatePosixTimers(p); err != nil {
		t.Fatal(err)
	}
	var got pb.Process
	err := injectInto(pid, func(tg *Target) error {
		if err := RestorePosixTimers(tg, p); err != nil {
			return err
		}
		if err := DumpPosixTimers(tg, &got); err != nil {
			return err
		}
		// The creation mode is off again: new timers get the kernel's IDs.
		if on, err := tg.Syscall(unix.SYS_PRCTL, unix.PR_TIMER_CREATE_RESTORE_IDS, unix.PR_TIMER_CREATE_RESTORE_IDS_GET, 0, 0, 0); err != nil || on != 0 {
			return fmt.Errorf("PR_TIMER_CREATE_RESTORE_IDS left %d (%v)", on, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.PosixTimers) != 3 {
		t.Fatalf("read back %d timers: %v", len(got.PosixTimers), got.PosixTimers)
	}
	for i, pt := range got.PosixTimers {
		w := p.PosixTimers[i]
		if pt.Id != w.Id || pt.Clock != w.Clock || pt.Signo != w.Signo || pt.Sigval != w.Sigval || pt.Notify != w.Notify || pt.Tid != w.Tid || pt.IntervalNs != w.IntervalNs {
			t.Errorf("timer %d read back as %v, made from %v", w.Id, pt, w)
		}
		if pt.ValueNs > w.ValueNs || w.ValueNs-pt.ValueNs > 2e9 {
			t.Errorf("timer %d: %d ns left, armed for %d", w.Id, pt.ValueNs, w.ValueNs)
		}
	}

	// An ID that is taken, and a clock the kernel does not know: named.
	for _, bad := range []*pb.PosixTimer{
		{Id: 3, Clock: unix.CLOCK_MONOTONIC, Signo: 14},
		{Id: 8, Clock: 99, Signo: 14},
	} {
		var on uint64
		err := injectInto(pid, func(tg *Target) error {
			err := RestorePosixTimers(tg, &pb.Process{Pid: uint32(pid), PosixTimers: []*pb.PosixTimer{bad}})
			on, _ = tg.Syscall(unix.SYS_PRCTL, unix.PR_TIMER_CREATE_RESTORE_IDS, unix.PR_TIMER_CREATE_RESTORE_IDS_GET, 0, 0, 0)
			return err
		})
		if on != 0 {
			t.Errorf("timer %d: PR_TIMER_CREATE_RESTORE_IDS left on after a failure", bad.Id)
		}
		if err == nil || !strings.Contains(err.Error(), "POSIX timer") || !strings.Contains(err.Error(), "of "+strconv.Itoa(pid)) {
			t.Errorf("timer %d clock %d: err = %v, want the timer named", bad.Id, bad.Clock, err)
		}
	}
}
