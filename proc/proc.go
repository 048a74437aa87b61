// Package proc parses the /proc files ckpt reads a process's state from.
// Every parser takes the file's content, so that it can be tested on text.
package proc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Path returns /proc/PID/name.
func Path(pid int, name string) string {
	return "/proc/" + strconv.Itoa(pid) + "/" + name
}

// Gone reports whether err from reading a process's /proc files means the
// process no longer exists. A process reaped between open and read makes
// the read fail with ESRCH rather than the open with ENOENT.
func Gone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH)
}

// ReadFile reads a whole /proc file. Unlike os.ReadFile it skips the os
// package's per-file set-up (a poller registration attempt and its fcntl
// calls), about 10 µs a file on the test VM; a checkpoint reads dozens.
// Errors are *os.PathError, as os.ReadFile's.
func ReadFile(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	b := make([]byte, 0, 1024)
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := unix.Read(fd, b[len(b):cap(b)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return b, nil
		}
		b = b[:len(b)+n]
	}
}

// Vma is one line of /proc/PID/smaps with its flags.
type Vma struct {
	Start, End uint64
	Perms      string // "rwxp"
	Offset     uint64
	Major      uint32
	Minor      uint32
	Inode      uint64
	Name       string
	VmFlags    []string
	// Anon is smaps' "Anonymous" size in bytes: the area's pages that are
	// anonymous, i.e. roughly what a checkpoint stores of it (0 from maps).
	Anon uint64
}

func (v *Vma) Read() bool    { return v.Perms[0] == 'r' }
func (v *Vma) Write() bool   { return v.Perms[1] == 'w' }
func (v *Vma) Exec() bool    { return v.Perms[2] == 'x' }
func (v *Vma) Shared() bool  { return v.Perms[3] == 's' }
func (v *Vma) Pages() uint64 { return (v.End - v.Start) / 4096 }

// HasFlag reports whether VmFlags includes f (e.g. "gd" for grows-down).
func (v *Vma) HasFlag(f string) bool {
	for _, x := range v.VmFlags {
		if x == f {
			return true
		}
	}
	return false
}

// ReadSmaps reads and parses /proc/PID/smaps.
func ReadSmaps(pid int) ([]Vma, error) {
	b, err := ReadFile(Path(pid, "smaps"))
	if err != nil {
		return nil, err
	}
	return ParseSmaps(b)
}

// ReadMaps reads and parses /proc/PID/maps: the areas without smaps'
// flags and sizes, and without its walk of every page table.
func ReadMaps(pid int) ([]Vma, error) {
	b, err := ReadFile(Path(pid, "maps"))
	if err != nil {
		return nil, err
	}
	return ParseSmaps(b)
}

// ParseSmaps parses smaps (or maps) text. Only the header line of each
// area and its Anonymous and VmFlags lines are looked at: smaps has some
// twenty more lines per area, skipped without allocating (their names
// start with an upper-case letter, a header with a hex digit).
func ParseSmaps(b []byte) ([]Vma, error) {
	var out []Vma
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(line) == 0 {
			continue
		}
		if c := line[0]; c >= 'A' && c <= 'Z' {
			if len(out) == 0 {
				continue
			}
			if bytes.HasPrefix(line, vmFlagsPrefix) {
				out[len(out)-1].VmFlags = strings.Fields(string(line[len(vmFlagsPrefix):]))
			} else if bytes.HasPrefix(line, anonPrefix) {
				out[len(out)-1].Anon = kilobytes(line[len(anonPrefix):]) << 10
			}
			continue
		}
		s := string(line)
		f := strings.Fields(s)
		if len(f) < 5 || !strings.Contains(f[0], "-") || strings.HasSuffix(f[0], ":") {
			continue
		}
		v, err := parseMapsLine(s, f)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

var (
	vmFlagsPrefix = []byte("VmFlags:")
	anonPrefix    = []byte("Anonymous:")
)

// kilobytes parses the number of a "   1234 kB" smaps value; 0 if there
// is none.
func kilobytes(b []byte) uint64 {
	var n uint64
	b = bytes.TrimLeft(b, " ")
	for _, c := range b {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + uint64(c-'0')
	}
	return n
}

func parseMapsLine(line string, f []string) (Vma, error) {
	var v Vma
	se := strings.SplitN(f[0], "-", 2)
	s, err1 := strconv.ParseUint(se[0], 16, 64)
	e, err2 := strconv.ParseUint(se[1], 16, 64)
	off, err3 := strconv.ParseUint(f[2], 16, 64)
	mm := strings.SplitN(f[3], ":", 2)
	if len(mm) != 2 || len(f[1]) != 4 {
		return v, fmt.Errorf("bad maps line %q", line)
	}
	maj, err4 := strconv.ParseUint(mm[0], 16, 32)
	min, err5 := strconv.ParseUint(mm[1], 16, 32)
	ino, err6 := strconv.ParseUint(f[4], 10, 64)
	for _, err := range []error{err1, err2, err3, err4, err5, err6} {
		if err != nil {
			return v, fmt.Errorf("bad maps line %q: %w", line, err)
		}
	}
	v = Vma{Start: s, End: e, Perms: f[1], Offset: off, Major: uint32(maj), Minor: uint32(min), Inode: ino}
	if len(f) > 5 {
		// The name is the rest of the line after the fifth column; it may
		// contain spaces.
		rest := line
		for i := 0; i < 5; i++ {
			rest = strings.TrimLeft(rest, " ")
			rest = rest[strings.IndexByte(rest, ' ')+1:]
		}
		v.Name = strings.TrimLeft(rest, " ")
	}
	return v, nil
}

// Stat holds the fields of /proc/PID/stat that ckpt uses.
type Stat struct {
	Pid        int
	Comm       string
	State      byte
	Ppid       int
	Pgrp       int
	Session    int
	TtyNr      int
	Tpgid      int
	Flags      uint64
	NumThreads int
	StartTime  uint64
	StartCode  uint64
	EndCode    uint64
	StartStack uint64
	StartData  uint64
	EndData    uint64
	StartBrk   uint64
	ArgStart   uint64
	ArgEnd     uint64
	EnvStart   uint64
	EnvEnd     uint64
	ExitSignal int
	ExitCode   int
}

// Task flags (include/linux/sched.h) that ckpt looks at.
const (
	pfExiting = 0x4        // PF_EXITING: being torn down
	pfKthread = 0x00200000 // PF_KTHREAD
)

// Exiting reports that the task is being torn down (PF_EXITING).
func (s *Stat) Exiting() bool { return s.Flags&pfExiting != 0 }

// KernelThread reports a kernel thread (PF_KTHREAD).
func (s *Stat) KernelThread() bool { return s.Flags&pfKthread != 0 }

// ReadStat reads /proc/PID/stat.
func ReadStat(pid int) (*Stat, error) {
	b, err := ReadFile(Path(pid, "stat"))
	if err != nil {
		return nil, err
	}
	return ParseStat(b)
}

// ParseStat parses /proc/PID/stat text. The comm field may hold spaces and
// parentheses; it ends at the last ')'.
func ParseStat(b []byte) (*Stat, error) {
	s := string(b)
	open := strings.IndexByte(s, '(')
	end := strings.LastIndexByte(s, ')')
	if open < 0 || end < open || end+2 > len(s) {
		return nil, fmt.Errorf("bad stat %q", s)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(s[:open]))
	if err != nil {
		return nil, fmt.Errorf("bad stat pid: %w", err)
	}
	f := strings.Fields(s[end+2:])
	// f[0] is field 3 (state).
	if len(f) < 50 {
		return nil, fmt.Errorf("stat has %d fields, want 52", len(f)+2)
	}
	n := func(field int) uint64 {
		v, _ := strconv.ParseUint(f[field-3], 10, 64)
		return v
	}
	i := func(field int) int {
		v, _ := strconv.Atoi(f[field-3])
		return v
	}
	return &Stat{
		Pid: pid, Comm: s[open+1 : end], State: f[0][0],
		Ppid: i(4), Pgrp: i(5), Session: i(6), TtyNr: i(7), Tpgid: i(8), Flags: n(9), NumThreads: i(20), StartTime: n(22),
		StartCode: n(26), EndCode: n(27), StartStack: n(28), ExitSignal: i(38),
		StartData: n(45), EndData: n(46), StartBrk: n(47),
		ArgStart: n(48), ArgEnd: n(49), EnvStart: n(50), EnvEnd: n(51), ExitCode: i(52),
	}, nil
}

// Status is /proc/PID/status as key/value pairs.
type Status map[string]string

// ReadStatus reads /proc/PID/status.
func ReadStatus(pid int) (Status, error) {
	b, err := ReadFile(Path(pid, "status"))
	if err != nil {
		return nil, err
	}
	return ParseStatus(b), nil
}

// ParseStatus parses status text.
func ParseStatus(b []byte) Status {
	st := Status{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			st[k] = strings.TrimSpace(v)
		}
	}
	return st
}

// Uints returns the whitespace-separated numbers of field k.
func (s Status) Uints(k string, base int) ([]uint64, error) {
	var out []uint64
	for _, f := range strings.Fields(s[k]) {
		v, err := strconv.ParseUint(f, base, 64)
		if err != nil {
			return nil, fmt.Errorf("status field %s: %w", k, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// NsIDs reads one of the NSpid, NSpgid or NSsid lines of the status of
// pid: the id in every PID namespace from that of /proc's mount down to the
// task's own.
func NsIDs(pid int, key string) ([]uint32, error) {
	st, err := ReadStatus(pid)
	if err != nil {
		return nil, err
	}
	var out []uint32
	for _, f := range strings.Fields(st[key]) {
		v, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("process %d: bad %s %q", pid, key, st[key])
		}
		out = append(out, uint32(v))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("process %d: no %s in its status", pid, key)
	}
	return out, nil
}

// InnerID reads the id of key (NSpid, NSpgid, NSsid) in the task's own PID
// namespace.
func InnerID(pid int, key string) (uint32, error) {
	ids, err := NsIDs(pid, key)
	if err != nil {
		return 0, err
	}
	return ids[len(ids)-1], nil
}

// FdInfo is /proc/PID/fdinfo/FD.
type FdInfo struct {
	Pos   int64
	Flags uint32
	MntID int
	// Locks are the file locks held through the descriptor's open file
	// description: its flock and OFD locks, and the POSIX locks of the
	// process taken through it.
	Locks []FdLock
}

// FdLock is one "lock:" line of fdinfo (the format of /proc/locks).
type FdLock struct {
	// Kind is the kernel's word: POSIX, OFDLCK, FLOCK, LEASE, DELEG,
	// ACCESS.
	Kind  string
	Write bool
	// Start and End are the first and last byte; End is -1 for "to the
	// end of the file" (EOF).
	Start, End int64
}

// ParseFdInfo parses fdinfo text.
func ParseFdInfo(b []byte) (FdInfo, error) {
	var fi FdInfo
	st := ParseStatus(b)
	pos, err := strconv.ParseInt(st["pos"], 10, 64)
	if err != nil {
		return fi, fmt.Errorf("fdinfo pos: %w", err)
	}
	fl, err := strconv.ParseUint(st["flags"], 8, 32)
	if err != nil {
		return fi, fmt.Errorf("fdinfo flags: %w", err)
	}
	mnt, _ := strconv.Atoi(st["mnt_id"])
	fi = FdInfo{Pos: pos, Flags: uint32(fl), MntID: mnt}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "lock:")
		if !ok {
			continue
		}
		l, err := parseLock(rest)
		if err != nil {
			return fi, fmt.Errorf("fdinfo lock %q: %w", strings.TrimSpace(rest), err)
		}
		fi.Locks = append(fi.Locks, l)
	}
	return fi, nil
}

// parseLock parses "1: POSIX  ADVISORY  WRITE 1234 fe:00:5678 10 29":
// id, kind, mode, type, owner PID, device and inode, first and last byte.
func parseLock(s string) (FdLock, error) {
	f := strings.Fields(s)
	if len(f) != 8 {
		return FdLock{}, fmt.Errorf("%d fields, want 8", len(f))
	}
	l := FdLock{Kind: f[1], End: -1}
	l.Write = f[3] == "WRITE" // else READ, or UNLCK for a lease being broken
	var err error
	if l.Start, err = strconv.ParseInt(f[6], 10, 64); err != nil || l.Start < 0 {
		return l, fmt.Errorf("first byte %s", f[6])
	}
	if f[7] != "EOF" {
		if l.End, err = strconv.ParseInt(f[7], 10, 64); err != nil || l.End < l.Start {
			return l, fmt.Errorf("last byte %s", f[7])
		}
	}
	return l, nil
}

// Tasks lists the thread IDs of pid.
func Tasks(pid int) ([]int, error) {
	ents, err := os.ReadDir(Path(pid, "task"))
	if err != nil {
		return nil, err
	}
	// The main thread first, then by number (ReadDir sorts names as text).
	out := []int{}
	for _, e := range ents {
		if t, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if (out[i] == pid) != (out[j] == pid) {
			return out[i] == pid
		}
		return out[i] < out[j]
	})
	return out, nil
}

// Children lists the child PIDs of every thread of pid.
func Children(pid int) ([]int, error) {
	tids, err := Tasks(pid)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, t := range tids {
		b, err := ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, t))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// Pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const (
	PMPresent    = 1 << 63
	PMSwapped    = 1 << 62
	PMFileShared = 1 << 61
	PMExclusive  = 1 << 56
)

// ReadPagemap returns the pagemap entries of [start, end).
func ReadPagemap(f *os.File, start, end uint64) ([]uint64, error) {
	n := (end - start) / 4096
	buf := make([]byte, n*8)
	if _, err := f.ReadAt(buf, int64(start/4096*8)); err != nil {
		return nil, fmt.Errorf("read pagemap %#x-%#x: %w", start, end, err)
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint64(buf[i*8:])
	}
	return out, nil
}

// WaitJobStopped waits, up to timeout, until each thread tids of process
// pid is stopped by job control (state T) or gone. A thread detached while
// its group stop is in effect stops only once it runs again; whoever looks
// at it after ckpt has returned (ps, the program's parent) must find it
// stopped. Past the timeout (a SIGCONT from elsewhere came first) it
// returns anyway: there is nothing to undo.
func WaitJobStopped(pid int, tids []int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for _, tid := range tids {
		for {
			b, err := ReadFile(Path(pid, "task/"+strconv.Itoa(tid)+"/stat"))
			var st *Stat
			if err == nil {
				st, err = ParseStat(b)
			}
			if err != nil || st.State == 'T' || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
}
