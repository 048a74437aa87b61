package resource

import (
	"encoding/hex"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
)

// inotify instances. fdinfo lists each watch with its descriptor, mask and
// the file handle of the watched inode; ckpt turns the handle into a path
// (open_by_handle_at on the inode's filesystem) and, at restart, adds the
// watches again in a new instance, in descriptor order, re-adding until the
// kernel hands out the same watch descriptor. Events queued but not read at
// checkpoint are not kept.

// describeInotify parses the watches of an inotify fdinfo.
func describeInotify(f *pb.File, info []byte) error {
	f.Kind = pb.File_INOTIFY
	for _, kv := range fdinfoLines(info) {
		if kv[0] != "inotify wd" {
			continue
		}
		// "inotify wd:2 ino:984175 sdev:fe00000 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:75419800d2c068c3"
		fields := map[string]string{}
		for _, kvs := range strings.Fields("wd:" + kv[1]) {
			if k, v, ok := strings.Cut(kvs, ":"); ok {
				fields[k] = v
			}
		}
		wd, err1 := strconv.ParseInt(fields["wd"], 16, 32)
		mask, err2 := strconv.ParseUint(fields["mask"], 16, 32)
		sdev, err3 := strconv.ParseUint(fields["sdev"], 16, 32)
		htype, err4 := strconv.ParseInt(fields["fhandle-type"], 16, 32)
		handle, err5 := hex.DecodeString(fields["f_handle"])
		for _, err := range []error{err1, err2, err3, err4, err5} {
			if err != nil {
				return fmt.Errorf("bad inotify watch %q: %w", kv[1], err)
			}
		}
		path, err := pathOfHandle(uint32(sdev), int32(htype), handle)
		if err != nil {
			return fmt.Errorf("inotify watch %d: %w", wd, err)
		}
		f.InotifyWatches = append(f.InotifyWatches, &pb.InotifyWatch{Wd: int32(wd), Mask: uint32(mask), Path: path})
	}
	sort.Slice(f.InotifyWatches, func(i, j int) bool { return f.InotifyWatches[i].Wd < f.InotifyWatches[j].Wd })
	return nil
}

// pathOfHandle finds the path of the inode with a file handle on the
// filesystem of kernel device number sdev (major<<20 | minor).
func pathOfHandle(sdev uint32, htype int32, handle []byte) (string, error) {
	mnt, err := mountOfDev(sdev>>20, sdev&0xfffff)
	if err != nil {
		return "", err
	}
	mfd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(mfd)
	fh := unix.NewFileHandle(htype, handle)
	fd, err := unix.OpenByHandleAt(mfd, fh, unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return "", fmt.Errorf("open watched inode by handle: %w", err)
	}
	defer unix.Close(fd)
	path, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", err
	}
	if strings.HasSuffix(path, " (deleted)") {
		return "", fmt.Errorf("watched file %s was deleted: %w yet", path, ErrUnsupported)
	}
	return path, nil
}

// mountOfDev returns a mount point of the filesystem major:minor.
func mountOfDev(major, minor uint32) (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	want := fmt.Sprintf("%d:%d", major, minor)
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && f[2] == want {
			return f[4], nil
		}
	}
	return "", fmt.Errorf("no mount of device %s", want)
}

// openInotify creates an inotify instance with the watches of rec, each
// with its original watch descriptor.
func openInotify(rec *pb.File) (*os.File, error) {
	flags := unix.IN_CLOEXEC | unix.IN_NONBLOCK
	fd, err := unix.InotifyInit1(flags)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	f := os.NewFile(uintptr(fd), "inotify")
	fail := func(err error) (*os.File, error) {
		f.Close()
		return nil, err
	}
	for _, w := range rec.InotifyWatches {
		for tries := 0; ; tries++ {
			wd, err := unix.InotifyAddWatch(fd, w.Path, w.Mask)
			if err != nil {
				return fail(fmt.Errorf("watch %s again: %w (it must exist at restart)", w.Path, err))
			}
			if int32(wd) == w.Wd {
				break
			}
			if int32(wd) > w.Wd || tries > 1<<16 {
				return fail(fmt.Errorf("watch %s: got descriptor %d, want %d", w.Path, wd, w.Wd))
			}
			// Descriptors are handed out in turn: drop this one, try the next.
			if _, err := unix.InotifyRmWatch(fd, uint32(wd)); err != nil {
				return fail(err)
			}
		}
	}
	// Removing watches queued IN_IGNORED events; the process must not see
	// them.
	buf := make([]byte, 64<<10)
	for {
		if _, err := unix.Read(fd, buf); err != nil {
			break
		}
	}
	if rec.Flags&unix.O_NONBLOCK == 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, 0); err != nil {
			return fail(err)
		}
	}
	return f, nil
}
