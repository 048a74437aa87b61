package proc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The leak scan of a checkpoint lists every process of the machine and
// reads every descriptor link of each: hundreds of entries, where os.ReadDir
// (a sorted slice of allocated entries) and a string per name and per link
// cost as much as the system calls. These walk the raw getdents records
// and hand out bytes that are valid only during the call.

// eachName calls fn with the name of each entry of the open directory dir
// but . and .., NUL-terminated as getdents returns it (so that it can be
// passed to a system call as it is), until fn returns false.
func eachName(dir int, fn func(name []byte) bool) error {
	var buf [8192]byte
	for {
		n, err := unix.Getdents(dir, buf[:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		// struct linux_dirent64: ino 8, off 8, reclen 2, type 1, name.
		for off := 0; off < n; {
			if off+19 >= n {
				return fmt.Errorf("truncated directory entry")
			}
			reclen := int(binary.LittleEndian.Uint16(buf[off+16:]))
			if reclen <= 19 || off+reclen > n {
				return fmt.Errorf("bad directory entry length %d", reclen)
			}
			name := buf[off+19 : off+reclen]
			off += reclen
			end := bytes.IndexByte(name, 0)
			if end <= 0 || name[0] == '.' && (end == 1 || end == 2 && name[1] == '.') {
				continue
			}
			if !fn(name[:end+1]) {
				return nil
			}
		}
	}
}

// atoi parses a NUL-terminated decimal name; ok is false for anything else.
func atoi(name []byte) (n int, ok bool) {
	if len(name) < 2 || len(name) > 12 {
		return 0, false
	}
	for _, c := range name[:len(name)-1] {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// LinkID splits the text of a /proc link to an object without a path,
// "kind:[N]" (a pipe, a socket, a namespace), into its kind and number.
func LinkID(link []byte) (kind []byte, id uint64, ok bool) {
	i := bytes.IndexByte(link, ':')
	if i < 0 || len(link) < i+4 || link[i+1] != '[' || link[len(link)-1] != ']' {
		return nil, 0, false
	}
	for _, c := range link[i+2 : len(link)-1] {
		d := uint64(c - '0')
		if c < '0' || c > '9' || id > (1<<64-1-d)/10 {
			return nil, 0, false
		}
		id = id*10 + d
	}
	return link[:i], id, true
}

// EachPid calls fn with the ID of each process in /proc, in directory
// order.
func EachPid(fn func(pid int)) error {
	dir, err := unix.Open("/proc", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("list processes: %w", err)
	}
	defer unix.Close(dir)
	if err := eachName(dir, func(name []byte) bool {
		if pid, ok := atoi(name); ok {
			fn(pid)
		}
		return true
	}); err != nil {
		return fmt.Errorf("list processes: %w", err)
	}
	return nil
}

// Fds lists the descriptor numbers in dir, an open /proc/PID/fd, in
// order.
func Fds(dir int) ([]int, error) {
	fds := []int{}
	err := eachName(dir, func(name []byte) bool {
		if fd, ok := atoi(name); ok {
			fds = append(fds, fd)
		}
		return true
	})
	slices.Sort(fds)
	return fds, err
}

// FdAccess returns EACCES or EPERM when ckpt may not resolve the
// descriptors of pid. It reads the link of its cwd, which the kernel
// guards as it guards the links in /proc/PID/fd (ptrace read access): one
// call, where listing the descriptors first makes the kernel build an
// entry for each (the development VM's PID 1, which refuses even root,
// lists 250: 0.4 ms of every checkpoint's leak scan). Any other outcome,
// a process gone or without a cwd, is left for the listing to report.
func FdAccess(pid int) error {
	var buf [1]byte
	_, err := unix.Readlink(Path(pid, "cwd"), buf[:])
	if err == unix.EACCES || err == unix.EPERM {
		return err
	}
	return nil
}

// EachFdLink calls fn with each descriptor of pid, in directory order, and
// the text of its /proc/PID/fd link, valid only during the call (a
// descriptor closed meanwhile is left out). A process whose links ckpt
// may not read fails at its first (the development VM's PID 1 lists its
// descriptors to root but refuses to resolve any).
func EachFdLink(pid int, fn func(fd int, link []byte)) error {
	if err := FdAccess(pid); err != nil {
		return fmt.Errorf("read descriptors of %d: %w", pid, err)
	}
	dir, err := unix.Open(Path(pid, "fd"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("list descriptors of %d: %w", pid, err)
	}
	defer unix.Close(dir)
	var link [unix.PathMax]byte
	var denied error
	err = eachName(dir, func(name []byte) bool {
		fd, ok := atoi(name)
		if !ok {
			return true
		}
		n, _, e := unix.Syscall6(unix.SYS_READLINKAT, uintptr(dir), uintptr(unsafe.Pointer(&name[0])), uintptr(unsafe.Pointer(&link[0])), uintptr(len(link)), 0, 0)
		switch e {
		case 0:
			fn(fd, link[:n])
		case unix.EACCES, unix.EPERM:
			denied = e
			return false
		}
		return true
	})
	if err == nil {
		err = denied
	}
	if err != nil {
		return fmt.Errorf("read descriptors of %d: %w", pid, err)
	}
	return nil
}
