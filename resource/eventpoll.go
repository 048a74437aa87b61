package resource

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// This file holds the descriptor kinds that language runtimes build their
// event loops from: eventfd, epoll, timerfd and signalfd. Their state is
// read from /proc/PID/fdinfo. eventfd, timerfd and signalfd are created
// again in ckpt's own process and handed over like any file; an epoll
// instance is created inside the restored process, because its registered
// items name descriptor numbers of their owner.

// fdinfoFields splits fdinfo text into its "key: value" lines; keys may
// repeat (epoll's tfd lines), so the lines are kept in order.
func fdinfoLines(info []byte) [][2]string {
	var out [][2]string
	for _, l := range strings.Split(string(info), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			out = append(out, [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
		}
	}
	return out
}

func fdinfoValue(info []byte, key string) string {
	for _, kv := range fdinfoLines(info) {
		if kv[0] == key {
			return kv[1]
		}
	}
	return ""
}

// describeAnon fills f from the fdinfo of an anonymous-inode descriptor.
func describeAnon(f *pb.File, target string, info []byte) error {
	var err error
	switch target {
	case "anon_inode:[eventfd]":
		f.Kind = pb.File_EVENTFD
		if f.EventfdCount, err = strconv.ParseUint(fdinfoValue(info, "eventfd-count"), 16, 64); err != nil {
			return fmt.Errorf("eventfd count: %w", err)
		}
		f.EventfdSemaphore = fdinfoValue(info, "eventfd-semaphore") == "1"
	case "anon_inode:[eventpoll]":
		f.Kind = pb.File_EPOLL
		for _, kv := range fdinfoLines(info) {
			if kv[0] != "tfd" {
				continue
			}
			// "tfd:        4 events:       19 data:           5b6248  pos:0 ino:1a sdev:10"
			fs := strings.Fields("tfd: " + kv[1])
			if len(fs) < 6 || fs[2] != "events:" || fs[4] != "data:" {
				return fmt.Errorf("bad epoll item %q", kv[1])
			}
			fd, err1 := strconv.Atoi(fs[1])
			ev, err2 := strconv.ParseUint(fs[3], 16, 32)
			data, err3 := strconv.ParseUint(fs[5], 16, 64)
			if err1 != nil || err2 != nil || err3 != nil {
				return fmt.Errorf("bad epoll item %q", kv[1])
			}
			f.EpollItems = append(f.EpollItems, &pb.EpollItem{Fd: int32(fd), Events: uint32(ev), Data: data})
		}
	case "anon_inode:[timerfd]":
		f.Kind = pb.File_TIMERFD
		clock, err := strconv.Atoi(fdinfoValue(info, "clockid"))
		if err != nil {
			return fmt.Errorf("timerfd clock: %w", err)
		}
		f.TimerfdClock = int32(clock)
		if f.TimerfdTicks, err = strconv.ParseUint(fdinfoValue(info, "ticks"), 10, 64); err != nil {
			return fmt.Errorf("timerfd ticks: %w", err)
		}
		if f.TimerfdValueNs, err = parseTimespecPair(fdinfoValue(info, "it_value")); err != nil {
			return err
		}
		if f.TimerfdIntervalNs, err = parseTimespecPair(fdinfoValue(info, "it_interval")); err != nil {
			return err
		}
	case "anon_inode:inotify":
		return describeInotify(f, info)
	case "anon_inode:[signalfd]":
		f.Kind = pb.File_SIGNALFD
		if f.SignalfdMask, err = strconv.ParseUint(fdinfoValue(info, "sigmask"), 16, 64); err != nil {
			return fmt.Errorf("signalfd mask: %w", err)
		}
	default:
		return ErrUnsupported
	}
	return nil
}

// parseTimespecPair parses "(sec, nsec)".
func parseTimespecPair(s string) (int64, error) {
	var sec, nsec int64
	if _, err := fmt.Sscanf(s, "(%d, %d)", &sec, &nsec); err != nil {
		return 0, fmt.Errorf("bad timerfd time %q: %w", s, err)
	}
	return sec*int64(time.Second) + nsec, nil
}

// openAnon creates an eventfd, timerfd or signalfd in ckpt's process with
// the state of rec.
func openAnon(rec *pb.File) (*os.File, error) {
	nonblock := rec.Flags&unix.O_NONBLOCK != 0
	var fd int
	var err error
	switch rec.Kind {
	case pb.File_EVENTFD:
		flags := unix.EFD_CLOEXEC
		if nonblock {
			flags |= unix.EFD_NONBLOCK
		}
		if rec.EventfdSemaphore {
			flags |= unix.EFD_SEMAPHORE
		}
		if rec.EventfdCount > 0xfffffffe {
			return nil, fmt.Errorf("image damaged: eventfd count %#x", rec.EventfdCount)
		}
		// eventfd2 takes a 32-bit initial value; add the rest with a write.
		fd, err = unix.Eventfd(0, flags)
		if err == nil && rec.EventfdCount > 0 {
			var b [8]byte
			binary.LittleEndian.PutUint64(b[:], rec.EventfdCount)
			_, err = unix.Write(fd, b[:])
		}
	case pb.File_TIMERFD:
		flags := unix.TFD_CLOEXEC
		if nonblock {
			flags |= unix.TFD_NONBLOCK
		}
		fd, err = unix.TimerfdCreate(int(rec.TimerfdClock), flags)
		if err != nil {
			break
		}
		value, interval := rec.TimerfdValueNs, rec.TimerfdIntervalNs
		if value == 0 && interval != 0 {
			value = interval // expired while frozen: next expiry one interval on
		}
		if value != 0 {
			spec := unix.ItimerSpec{Interval: unix.NsecToTimespec(interval), Value: unix.NsecToTimespec(value)}
			err = unix.TimerfdSettime(fd, 0, &spec, nil)
		}
		if err == nil && rec.TimerfdTicks > 0 {
			// TFD_IOC_SET_TICKS restores expirations not yet read; it must
			// follow settime, which clears them.
			t := rec.TimerfdTicks
			const tfdIocSetTicks = 0x40085400
			if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), tfdIocSetTicks, uintptr(unsafePointer(&t))); e != 0 {
				err = fmt.Errorf("restore %d timerfd expirations: %w", t, e)
			}
		}
	case pb.File_INOTIFY:
		return openInotify(rec)
	case pb.File_SIGNALFD:
		flags := unix.SFD_CLOEXEC
		if nonblock {
			flags |= unix.SFD_NONBLOCK
		}
		mask := unix.Sigset_t{Val: [16]uint64{rec.SignalfdMask}}
		fd, err = unix.Signalfd(-1, &mask, flags)
	default:
		return nil, fmt.Errorf("image damaged: file %d of kind %v", rec.Id, rec.Kind)
	}
	if err != nil {
		if fd > 0 {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("create %v: %w", rec.Kind, err)
	}
	return os.NewFile(uintptr(fd), strings.ToLower(rec.Kind.String())), nil
}

// createEpoll makes an epoll instance inside the stub and returns its
// descriptor there.
func createEpoll(t *Target) (uint64, error) {
	fd, err := t.Syscall(unix.SYS_EPOLL_CREATE1, unix.EPOLL_CLOEXEC)
	if err != nil {
		return 0, fmt.Errorf("epoll_create1: %w", err)
	}
	return fd, nil
}

// restoreEpollItems registers the items of an epoll instance, once every
// descriptor of the process exists again.
func restoreEpollItems(t *Target, epfd int32, rec *pb.File) error {
	for _, it := range rec.EpollItems {
		var ev [12]byte // struct epoll_event is packed on x86-64
		binary.LittleEndian.PutUint32(ev[0:], it.Events)
		binary.LittleEndian.PutUint64(ev[4:], it.Data)
		addr, err := t.Put(0, ev[:])
		if err != nil {
			return err
		}
		if _, err := t.Syscall(unix.SYS_EPOLL_CTL, uint64(epfd), unix.EPOLL_CTL_ADD, uint64(it.Fd), addr); err != nil {
			return fmt.Errorf("epoll fd %d: add fd %d (events %#x): %w", epfd, it.Fd, it.Events, err)
		}
	}
	return nil
}

// SyncTimerfds makes the kernel bring the process's timerfds up to date
// before their fdinfo is read. An interval timer that expired is re-armed,
// and its missed expirations counted, only when the owner reads it or asks
// for its time; timerfd_gettime, injected, does the latter, which the
// process cannot tell from its own call.
func SyncTimerfds(t *Target) error {
	fds, err := ListFds(t.Pid)
	if err != nil {
		return err
	}
	for _, fd := range fds {
		target, err := os.Readlink(proc.Path(t.Pid, "fd/"+strconv.Itoa(fd)))
		if err != nil || target != "anon_inode:[timerfd]" {
			continue
		}
		if _, err := t.Syscall(unix.SYS_TIMERFD_GETTIME, uint64(fd), t.Scratch); err != nil {
			return fmt.Errorf("timerfd %d: %w", fd, err)
		}
	}
	return nil
}
