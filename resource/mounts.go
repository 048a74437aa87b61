package resource

// Mount namespaces: a container's mount table of bind, tmpfs and proc
// mounts.
//
// A container started with its own mount namespace holds a copy of the
// host's mount table plus mounts of its own. ckpt saves the table from the
// root process's /proc/PID/mountinfo, sorted parents before children, and
// gives every mount a kind that says how restart makes it again:
//
//   - BIND: a filesystem ckpt's own namespace sees as well (a host disk, the
//     host's /proc or /dev; matched by device number and root path): bind
//     mounted from the same path of ckpt's namespace at restart;
//   - TMPFS: a tmpfs of the container's own, re-created with its superblock
//     options; its whole contents travel in the image (mountfile records);
//   - PROC, SYSFS, DEVPTS, MQUEUE: new instances, mounted by a process
//     inside the restored namespaces (a proc mount shows the PID namespace
//     of its mounter, sysfs the network namespace, mqueue the IPC one);
//   - SAME: another mount of the superblock of an earlier mount of the
//     image (a bind of a tmpfs subdirectory, docker's read-only /proc/sys).
//
// Anything else (overlayfs or a disk mounted inside the container, ramfs,
// fuse, shared or slave propagation, a pivot_root'ed container) is refused
// by PreflightMountNamespace before anything is frozen.
//
// A tmpfs is read through a detached copy of its mount (open_tree with
// OPEN_TREE_CLONE and without AT_RECURSIVE, made inside the container's
// namespace), which holds the bare tmpfs: directories covered by other
// mounts are walked in the tmpfs itself, not through the mounts on top.
//
// Restart has two phases, so that the image order does not depend on when
// the restored processes exist:
//
//  1. PrepareMounts, at the mountns record, needs no process: it validates
//     the table and creates each tmpfs as a detached mount (fsopen,
//     fsmount) in ckpt's own process; AddFile writes each mountfile record
//     into it as it arrives, confined beneath the mount with openat2.
//  2. RestoreMountNamespace, once the root process's stub lives in its
//     fresh mount namespace (a copy of ckpt's own), makes that copy private,
//     keeps the longest prefix of it that equals the image's table, detaches
//     the rest and creates the image's remaining mounts in order: detached
//     mounts (each tmpfs, and binds cloned with open_tree in ckpt's
//     namespace) are handed to the stub and attached with move_mount; proc
//     and the like are mounted by the stub itself.

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

// Bounds on what an image may ask for.
const (
	maxMounts     = 4096
	maxMountPath  = 4095
	maxMountChunk = 1 << 20
)

// newInstance maps the filesystems ckpt mounts afresh to their kind.
var newInstance = map[string]pb.Mount_Kind{
	"tmpfs":  pb.Mount_TMPFS,
	"proc":   pb.Mount_PROC,
	"sysfs":  pb.Mount_SYSFS,
	"devpts": pb.Mount_DEVPTS,
	"mqueue": pb.Mount_MQUEUE,
}

// PreflightMountNamespace checks, without touching the process, that
// every mount of pid's mount namespace can be re-created.
func PreflightMountNamespace(pid int) error {
	_, err := planMounts(pid)
	return err
}

// DumpMountNamespace writes the mount table of pid's mount namespace (a
// mountns record) and the contents of its tmpfs mounts (mountfile
// records), and returns the table.
//
// Preconditions: every process of the container is stopped, so that the
// tmpfs contents do not change while they are read.
func DumpMountNamespace(pid int, w *image.Writer) (*pb.MountNamespace, error) {
	ns, err := planMounts(pid)
	if err != nil {
		return nil, err
	}
	if err := w.Message(image.TypeMountNs, ns); err != nil {
		return nil, err
	}
	for _, m := range ns.Mounts {
		if m.Kind != pb.Mount_TMPFS {
			continue
		}
		if err := dumpTmpfs(pid, m, w); err != nil {
			return nil, fmt.Errorf("tmpfs at %s: %w", m.MountPoint, err)
		}
	}
	return ns, nil
}

// planMounts reads pid's mount table and classifies every mount.
func planMounts(pid int) (*pb.MountNamespace, error) {
	theirs, err := proc.ReadMountInfo(pid)
	if err != nil {
		return nil, fmt.Errorf("read mount table of %d: %w", pid, err)
	}
	ours, err := proc.ReadMountInfo(os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("read ckpt's own mount table: %w", err)
	}
	theirs, err = sortMounts(theirs)
	if err != nil {
		return nil, fmt.Errorf("mount table of %d: %w", pid, err)
	}
	ours, err = sortMounts(ours)
	if err != nil {
		return nil, fmt.Errorf("ckpt's own mount table: %w", err)
	}
	if r, o := theirs[0], ours[0]; r.Major != o.Major || r.Minor != o.Minor || r.Root != o.Root {
		return nil, fmt.Errorf("the root of process %d is %s (%s, %s) but ckpt's is %s (%s, %s): containers that pivot_root or chroot into another root are %w yet; run ckpt inside the container's root", pid, r.Root, r.FsType, r.Source, o.Root, o.FsType, o.Source, ErrUnsupported)
	}
	ns := &pb.MountNamespace{}
	firstOfDev := map[[2]uint32]*pb.Mount{}
	for i := range theirs {
		m := &theirs[i]
		pm := &pb.Mount{Id: uint32(m.ID), ParentId: uint32(m.Parent), MountPoint: m.MountPoint, Root: m.Root,
			FsType: m.FsType, Source: m.Source, Options: m.Options, SuperOptions: m.SuperOptions,
			DevMajor: m.Major, DevMinor: m.Minor}
		what := fmt.Sprintf("mount %s (%s from %s) of process %d", m.MountPoint, m.FsType, m.Source, pid)
		for _, o := range m.Optional {
			switch {
			case o == "unbindable":
				pm.Unbindable = true
			case strings.HasPrefix(o, "shared:") || strings.HasPrefix(o, "master:"):
				return nil, fmt.Errorf("%s has %s propagation: %w (ckpt restores private mounts only); make the container's mounts private with `mount --make-rprivate /` inside it", what, o, ErrUnsupported)
			}
		}
		if strings.HasSuffix(m.Root, "//deleted") {
			return nil, fmt.Errorf("%s is a bind mount of %s, which was deleted: %w", what, m.Root, ErrUnsupported)
		}
		dev := [2]uint32{m.Major, m.Minor}
		if src, ok := bindSource(m, ours); ok {
			pm.Kind, pm.BindSource = pb.Mount_BIND, src
		} else if first := firstOfDev[dev]; first != nil {
			if first.Kind == pb.Mount_BIND {
				return nil, fmt.Errorf("%s shows %s of the filesystem of %s, which ckpt sees only in part: %w", what, m.Root, first.MountPoint, ErrUnsupported)
			}
			if !pathWithin(m.Root, first.Root) {
				return nil, fmt.Errorf("%s shows %s of a filesystem whose earlier mount %s shows only %s: %w", what, m.Root, first.MountPoint, first.Root, ErrUnsupported)
			}
			pm.Kind, pm.BindOf = pb.Mount_SAME, first.Id
		} else if kind, ok := newInstance[m.FsType]; ok {
			if m.Root != "/" {
				return nil, fmt.Errorf("%s shows only %s of a %s whose root is mounted nowhere in the container: %w; mount its root too", what, m.Root, m.FsType, ErrUnsupported)
			}
			pm.Kind = kind
		} else {
			return nil, fmt.Errorf("%s cannot be re-created: %w; ckpt re-creates tmpfs, proc, sysfs, devpts and mqueue mounts, and bind mounts of filesystems that ckpt itself sees; unmount it, or bind-mount it into the container from a path outside", what, ErrUnsupported)
		}
		if firstOfDev[dev] == nil {
			firstOfDev[dev] = pm
		}
		ns.Mounts = append(ns.Mounts, pm)
	}
	return ns, nil
}

// bindSource finds the path, in ckpt's own namespace, of the root of m: a
// mount of ours of the same device whose root holds m's root. A path that
// stat shows on that device is preferred; another (covered by a mount on
// top in ckpt's namespace) still marks the filesystem as one ckpt sees,
// which restart needs to reach only if it must mount it again.
func bindSource(m *proc.Mount, ours []proc.Mount) (string, bool) {
	found := ""
	for i := range ours {
		o := &ours[i]
		if o.Major != m.Major || o.Minor != m.Minor || !pathWithin(m.Root, o.Root) {
			continue
		}
		p := filepath.Join(o.MountPoint, relTo(m.Root, o.Root))
		var st unix.Stat_t
		if unix.Lstat(p, &st) == nil && st.Dev == unix.Mkdev(m.Major, m.Minor) {
			return p, true
		}
		if found == "" {
			found = p
		}
	}
	return found, found != ""
}

// pathWithin reports whether p is dir or below it.
func pathWithin(p, dir string) bool {
	return dir == "/" || p == dir || strings.HasPrefix(p, dir+"/")
}

// relTo returns p relative to dir (p within dir), "." for dir itself.
func relTo(p, dir string) string {
	r, err := filepath.Rel(dir, p)
	if err != nil {
		return "."
	}
	return r
}

// sortMounts orders a mount table parents before children (mountinfo does
// not: it lists mounts by creation), keeping the kernel's order among
// siblings. The first mount is the root: the one whose parent is not in
// the table.
func sortMounts(ms []proc.Mount) ([]proc.Mount, error) {
	ids := map[int]bool{}
	for _, m := range ms {
		ids[m.ID] = true
	}
	children := map[int][]int{}
	root := -1
	for i, m := range ms {
		if !ids[m.Parent] || m.Parent == m.ID {
			if root >= 0 {
				return nil, fmt.Errorf("two root mounts (%s and %s)", ms[root].MountPoint, m.MountPoint)
			}
			root = i
			continue
		}
		children[m.Parent] = append(children[m.Parent], i)
	}
	if root < 0 {
		return nil, fmt.Errorf("no root mount")
	}
	out := make([]proc.Mount, 0, len(ms))
	stack := []int{root}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		out = append(out, ms[i])
		kids := children[ms[i].ID]
		for k := len(kids) - 1; k >= 0; k-- {
			stack = append(stack, kids[k])
		}
	}
	if len(out) != len(ms) {
		return nil, fmt.Errorf("%d mounts are not below the root", len(ms)-len(out))
	}
	return out, nil
}

// openTreeIn returns a detached copy of the mount at mp in pid's mount
// namespace, without the mounts below or on top of it. open_tree only
// clones mounts of the caller's namespace, so it runs on a thread of its
// own (onOwnThread) that joins pid's namespace.
func openTreeIn(pid int, mp string) (*os.File, error) {
	fd := -1
	// A thread of its own: it gets a filesystem context of its own.
	err := onOwnThread(func() error {
		self, err := unix.Open("/proc/thread-self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open ckpt's mount namespace: %w", err)
		}
		defer unix.Close(self)
		nsfd, err := unix.Open(proc.Path(pid, "ns/mnt"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open mount namespace of %d: %w", pid, err)
		}
		defer unix.Close(nsfd)
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			return fmt.Errorf("unshare filesystem context: %w", err)
		}
		if err := unix.Setns(nsfd, unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("join mount namespace of %d: %w", pid, err)
		}
		var oerr error
		fd, oerr = unix.OpenTree(unix.AT_FDCWD, mp, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
		// Back to ckpt's namespace (the thread is thrown away anyway).
		unix.Setns(self, unix.CLONE_NEWNS)
		if oerr != nil {
			return fmt.Errorf("open_tree %s: %w", mp, oerr)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), mp), nil
}

// dumpTmpfs writes the files of a tmpfs, parents before children, each
// regular file's data in chunk records (holes left out).
func dumpTmpfs(pid int, m *pb.Mount, w *image.Writer) error {
	root, err := openTreeIn(pid, m.MountPoint)
	if err != nil {
		return err
	}
	defer root.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(root.Fd()), &st); err != nil {
		return err
	}
	if st.Dev != unix.Mkdev(m.DevMajor, m.DevMinor) {
		return fmt.Errorf("it is covered by another mount at the same place: %w", ErrUnsupported)
	}
	d := &tmpfsDumper{w: w, id: m.Id, links: map[uint64]string{}, buf: make([]byte, maxMountChunk)}
	if err := d.write(fileRecord(m.Id, ".", &st)); err != nil {
		return err
	}
	return d.dir(int(root.Fd()), "")
}

type tmpfsDumper struct {
	w     *image.Writer
	id    uint32
	links map[uint64]string // inode -> first path, for hard links
	buf   []byte
}

func (d *tmpfsDumper) write(f *pb.MountFile) error { return d.w.Message(image.TypeMountFile, f) }

func fileRecord(id uint32, path string, st *unix.Stat_t) *pb.MountFile {
	return &pb.MountFile{MountId: id, Path: path, Mode: st.Mode, Uid: st.Uid, Gid: st.Gid,
		AtimeNs: st.Atim.Nano(), MtimeNs: st.Mtim.Nano()}
}

// dir writes the entries of the directory open at dirfd, whose path is rel.
func (d *tmpfsDumper) dir(dirfd int, rel string) error {
	names, err := readDirNames(dirfd)
	if err != nil {
		return fmt.Errorf("list %s: %w", rel, err)
	}
	for _, name := range names {
		p := name
		if rel != "" {
			p = rel + "/" + name
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		rec := fileRecord(d.id, p, &st)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if err := d.write(rec); err != nil {
				return err
			}
			fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("open %s: %w", p, err)
			}
			err = d.dir(fd, p)
			unix.Close(fd)
			if err != nil {
				return err
			}
		case unix.S_IFREG:
			if st.Nlink > 1 {
				if first, ok := d.links[st.Ino]; ok {
					rec.Hardlink = first
					if err := d.write(rec); err != nil {
						return err
					}
					continue
				}
				d.links[st.Ino] = p
			}
			rec.Size = uint64(st.Size)
			if err := d.write(rec); err != nil {
				return err
			}
			if err := d.data(dirfd, name, p, uint64(st.Size)); err != nil {
				return fmt.Errorf("read %s: %w", p, err)
			}
		case unix.S_IFLNK:
			target := make([]byte, unix.PathMax)
			n, err := unix.Readlinkat(dirfd, name, target)
			if err != nil {
				return fmt.Errorf("read link %s: %w", p, err)
			}
			rec.Symlink = string(target[:n])
			if err := d.write(rec); err != nil {
				return err
			}
		default: // devices, fifos, sockets: the node itself
			rec.Rdev = st.Rdev
			if err := d.write(rec); err != nil {
				return err
			}
		}
	}
	return nil
}

// readDirNames lists a directory, sorted, without "." and "..".
func readDirNames(dirfd int) ([]string, error) {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), ".")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	return names, nil
}

// data writes the data regions of a regular file in chunk records.
func (d *tmpfsDumper) data(dirfd int, name, p string, size uint64) error {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOATIME, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return dataChunks(fd, int64(size), d.buf, func(off int64, b []byte) error {
		return d.write(&pb.MountFile{MountId: d.id, Path: p, Chunk: true, Offset: uint64(off), Data: b})
	})
}

// MountRestore is a mount table being restored: see the package comment
// on mounts for its two phases.
type MountRestore struct {
	ns   *pb.MountNamespace
	byID map[uint32]*pb.Mount
	// tmpfs holds the detached tmpfs mounts, by image mount id.
	tmpfs map[uint32]*tmpfsFill
	// cur is the regular file being filled by chunk records.
	cur      *os.File
	curMount uint32
	curPath  string
	curSize  uint64
	curEnd   uint64
	curTimes [2]unix.Timespec
	finished bool
	// clones are detached copies of tmpfs directories for SAME mounts,
	// taken before the tmpfs is attached (then paths in it may be covered).
	clones map[uint32]*os.File
}

// tmpfsFill is one re-created tmpfs, detached until it is attached in the
// restored namespace.
type tmpfsFill struct {
	m    *pb.Mount
	fs   *os.File // fsopen context, for the read-only reconfiguration
	mnt  *os.File // fsmount: the detached mount
	dirs []*pb.MountFile
	// paths are those created so far, and their types.
	paths map[string]uint32
}

// PrepareMounts validates a mount table read from an image and creates
// its tmpfs mounts, detached, in ckpt's own process. The caller feeds it
// the mountfile records that follow (AddFile), then calls
// RestoreMountNamespace, and Close in any case.
func PrepareMounts(ns *pb.MountNamespace) (mr *MountRestore, err error) {
	if err := validateMounts(ns); err != nil {
		return nil, err
	}
	mr = &MountRestore{ns: ns, byID: map[uint32]*pb.Mount{}, tmpfs: map[uint32]*tmpfsFill{}, clones: map[uint32]*os.File{}}
	defer func() {
		if err != nil {
			mr.Close()
		}
	}()
	for _, m := range ns.Mounts {
		mr.byID[m.Id] = m
		if m.Kind != pb.Mount_TMPFS {
			continue
		}
		tf, err := newTmpfs(m)
		if err != nil {
			return nil, fmt.Errorf("restore tmpfs at %s (%s): %w", m.MountPoint, m.SuperOptions, err)
		}
		mr.tmpfs[m.Id] = tf
	}
	return mr, nil
}

func validateMounts(ns *pb.MountNamespace) error {
	if len(ns.Mounts) == 0 || len(ns.Mounts) > maxMounts {
		return fmt.Errorf("image damaged: mount table of %d mounts", len(ns.Mounts))
	}
	seen := map[uint32]*pb.Mount{}
	for i, m := range ns.Mounts {
		bad := func(what string) error {
			return fmt.Errorf("image damaged: mount %d (%q): %s", m.Id, m.MountPoint, what)
		}
		if m.Id == 0 || seen[m.Id] != nil {
			return bad("id zero or repeated")
		}
		if !cleanAbs(m.MountPoint) || !cleanAbs(m.Root) {
			return bad("mount point or root is not a clean absolute path")
		}
		if i == 0 && m.MountPoint != "/" {
			return bad("the first mount is not the root")
		}
		if i > 0 && seen[m.ParentId] == nil {
			return bad("parent not listed before it")
		}
		for _, s := range []string{m.FsType, m.Source, m.Options, m.SuperOptions} {
			if strings.IndexByte(s, 0) >= 0 || len(s) > maxMountPath {
				return bad("bad fs type, source or options")
			}
		}
		switch m.Kind {
		case pb.Mount_BIND:
			if !cleanAbs(m.BindSource) {
				return bad("bind source is not a clean absolute path")
			}
		case pb.Mount_SAME:
			first := seen[m.BindOf]
			if first == nil || first.Kind == pb.Mount_BIND || first.Kind == pb.Mount_SAME || !pathWithin(m.Root, first.Root) {
				return bad("bind of an unknown mount")
			}
		case pb.Mount_TMPFS, pb.Mount_PROC, pb.Mount_SYSFS, pb.Mount_DEVPTS, pb.Mount_MQUEUE:
			if newInstance[m.FsType] != m.Kind || m.Root != "/" {
				return bad("kind does not match the filesystem")
			}
		default:
			return bad(fmt.Sprintf("unknown kind %d", m.Kind))
		}
		if i == 0 && m.Kind != pb.Mount_BIND {
			return bad("root is not the restorer's root")
		}
		seen[m.Id] = m
	}
	return nil
}

func cleanAbs(p string) bool {
	return len(p) > 0 && len(p) <= maxMountPath && p[0] == '/' && filepath.Clean(p) == p && strings.IndexByte(p, 0) < 0
}

// newTmpfs creates a detached tmpfs with the superblock options of m
// (read-only comes last, once it is filled).
func newTmpfs(m *pb.Mount) (*tmpfsFill, error) {
	fsfd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fsopen: %w", err)
	}
	fs := os.NewFile(uintptr(fsfd), "tmpfs")
	if err := unix.FsconfigSetString(fsfd, "source", m.Source); err != nil {
		fs.Close()
		return nil, fmt.Errorf("source %q: %w", m.Source, err)
	}
	for _, o := range strings.Split(m.SuperOptions, ",") {
		if o == "" || o == "rw" || o == "ro" {
			continue
		}
		k, v, hasValue := strings.Cut(o, "=")
		if hasValue {
			err = unix.FsconfigSetString(fsfd, k, v)
		} else {
			err = unix.FsconfigSetFlag(fsfd, k)
		}
		if err != nil {
			fs.Close()
			return nil, fmt.Errorf("option %q: %w", o, err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		fs.Close()
		return nil, fmt.Errorf("create: %w", err)
	}
	mntfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		fs.Close()
		return nil, fmt.Errorf("fsmount: %w", err)
	}
	return &tmpfsFill{m: m, fs: fs, mnt: os.NewFile(uintptr(mntfd), m.MountPoint), paths: map[string]uint32{".": unix.S_IFDIR}}, nil
}

// Close releases the detached mounts and descriptors ckpt holds. Mounts
// already attached in the restored namespace stay there.
func (mr *MountRestore) Close() {
	if mr.cur != nil {
		mr.cur.Close()
		mr.cur = nil
	}
	for _, tf := range mr.tmpfs {
		tf.fs.Close()
		tf.mnt.Close()
	}
	mr.tmpfs = nil
	for _, f := range mr.clones {
		f.Close()
	}
	mr.clones = nil
}

// beneath is how every path of a mountfile record is resolved: inside the
// tmpfs, without following any symbolic link or crossing a mount.
const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// AddFile writes one mountfile record into its tmpfs. Records come as
// DumpMountNamespace wrote them: a file before its data chunks, a
// directory before its entries.
func (mr *MountRestore) AddFile(f *pb.MountFile) error {
	if mr.finished {
		return fmt.Errorf("image damaged: mountfile record after the mounts were restored")
	}
	tf := mr.tmpfs[f.MountId]
	if tf == nil {
		return fmt.Errorf("image damaged: mountfile record for mount %d, which is not a tmpfs of the image", f.MountId)
	}
	if err := tf.add(mr, f); err != nil {
		return fmt.Errorf("restore %s in tmpfs %s: %w", f.Path, tf.m.MountPoint, err)
	}
	return nil
}

func validRel(p string) bool {
	if p == "" || len(p) > maxMountPath || p[0] == '/' || strings.IndexByte(p, 0) >= 0 || filepath.Clean(p) != p {
		return false
	}
	return p == "." || !(p == ".." || strings.HasPrefix(p, "../"))
}

func (tf *tmpfsFill) add(mr *MountRestore, f *pb.MountFile) error {
	if !validRel(f.Path) {
		return fmt.Errorf("image damaged: bad path")
	}
	mnt := int(tf.mnt.Fd())
	if f.Chunk {
		if mr.cur == nil || mr.curMount != f.MountId || mr.curPath != f.Path || f.Offset < mr.curEnd ||
			f.Offset > mr.curSize || uint64(len(f.Data)) > mr.curSize-f.Offset || len(f.Data) > maxMountChunk {
			return fmt.Errorf("image damaged: data chunk at %d out of place", f.Offset)
		}
		if _, err := mr.cur.WriteAt(f.Data, int64(f.Offset)); err != nil {
			return err
		}
		mr.curEnd = f.Offset + uint64(len(f.Data))
		return nil
	}
	if err := mr.closeCur(); err != nil {
		return err
	}
	typ := f.Mode & unix.S_IFMT
	times := []unix.Timespec{unix.NsecToTimespec(f.AtimeNs), unix.NsecToTimespec(f.MtimeNs)}
	if f.Path == "." {
		if typ != unix.S_IFDIR {
			return fmt.Errorf("image damaged: root is not a directory")
		}
		tf.dirs = append(tf.dirs, f)
		return nil
	}
	if _, ok := tf.paths[f.Path]; ok {
		return fmt.Errorf("image damaged: path twice")
	}
	dir, base := filepath.Split(f.Path)
	if tf.paths[filepath.Clean(dir)] != unix.S_IFDIR && dir != "" {
		return fmt.Errorf("image damaged: parent directory not listed before")
	}
	parent, err := openBeneath(mnt, dir, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("open parent: %w", err)
	}
	defer unix.Close(parent)
	perm := f.Mode & 0o7777
	switch {
	case typ == unix.S_IFDIR:
		if err := unix.Mkdirat(parent, base, 0o700); err != nil {
			return err
		}
		tf.dirs = append(tf.dirs, f) // owner, mode and times once it is filled
	case typ == unix.S_IFREG && f.Hardlink != "":
		if !validRel(f.Hardlink) || f.Hardlink == "." || tf.paths[f.Hardlink] != unix.S_IFREG {
			return fmt.Errorf("image damaged: hard link to %q", f.Hardlink)
		}
		odir, obase := filepath.Split(f.Hardlink)
		ofd, err := openBeneath(mnt, odir, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		err = unix.Linkat(ofd, obase, parent, base, 0)
		unix.Close(ofd)
		if err != nil {
			return fmt.Errorf("link to %s: %w", f.Hardlink, err)
		}
	case typ == unix.S_IFREG:
		if f.Size > 1<<50 {
			return fmt.Errorf("image damaged: size %d", f.Size)
		}
		fd, err := unix.Openat(parent, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		file := os.NewFile(uintptr(fd), f.Path)
		err = file.Truncate(int64(f.Size))
		if err == nil {
			err = file.Chown(int(f.Uid), int(f.Gid))
		}
		if err == nil {
			err = unix.Fchmod(fd, perm)
		}
		if err != nil {
			file.Close()
			return err
		}
		mr.cur, mr.curMount, mr.curPath, mr.curSize, mr.curEnd = file, f.MountId, f.Path, f.Size, 0
		mr.curTimes = [2]unix.Timespec{times[0], times[1]}
	case typ == unix.S_IFLNK:
		if f.Symlink == "" || len(f.Symlink) > maxMountPath || strings.IndexByte(f.Symlink, 0) >= 0 {
			return fmt.Errorf("image damaged: symbolic link target")
		}
		if err := unix.Symlinkat(f.Symlink, parent, base); err != nil {
			return err
		}
		if err := setMeta(parent, base, f, times, false); err != nil {
			return err
		}
	case typ == unix.S_IFCHR || typ == unix.S_IFBLK || typ == unix.S_IFIFO || typ == unix.S_IFSOCK:
		if err := unix.Mknodat(parent, base, typ|0o600, int(f.Rdev)); err != nil {
			return err
		}
		if err := setMeta(parent, base, f, times, true); err != nil {
			return err
		}
	default:
		return fmt.Errorf("image damaged: file type %#o", typ)
	}
	tf.paths[f.Path] = typ
	return nil
}

// setMeta sets owner, then permissions (chown clears set-id bits), then
// times of dirfd/name.
func setMeta(dirfd int, name string, f *pb.MountFile, times []unix.Timespec, chmod bool) error {
	if err := unix.Fchownat(dirfd, name, int(f.Uid), int(f.Gid), unix.AT_SYMLINK_NOFOLLOW|unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if chmod {
		if err := unix.Fchmodat(dirfd, name, f.Mode&0o7777, 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if err := unix.UtimesNanoAt(dirfd, name, times, unix.AT_SYMLINK_NOFOLLOW|unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

func openBeneath(dirfd int, p string, flags uint64) (int, error) {
	p = strings.TrimSuffix(p, "/")
	if p == "" {
		p = "."
	}
	return unix.Openat2(dirfd, p, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Resolve: beneath})
}

// closeCur finishes the regular file being filled: its times last.
func (mr *MountRestore) closeCur() error {
	if mr.cur == nil {
		return nil
	}
	f := mr.cur
	mr.cur = nil
	defer f.Close()
	if err := unix.UtimesNanoAt(int(f.Fd()), "", mr.curTimes[:], unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("set times of %s: %w", mr.curPath, err)
	}
	return nil
}

// finish completes every tmpfs: directory owners, modes and times (after
// their entries, whose creation changed them), then read-only flags.
func (mr *MountRestore) finish() error {
	if mr.finished {
		return nil
	}
	mr.finished = true
	if err := mr.closeCur(); err != nil {
		return err
	}
	for _, tf := range mr.tmpfs {
		mnt := int(tf.mnt.Fd())
		for i := len(tf.dirs) - 1; i >= 0; i-- {
			d := tf.dirs[i]
			fd, err := openBeneath(mnt, d.Path, unix.O_RDONLY|unix.O_DIRECTORY)
			if err != nil {
				return fmt.Errorf("tmpfs %s: open %s: %w", tf.m.MountPoint, d.Path, err)
			}
			times := []unix.Timespec{unix.NsecToTimespec(d.AtimeNs), unix.NsecToTimespec(d.MtimeNs)}
			err = unix.Fchown(fd, int(d.Uid), int(d.Gid))
			if err == nil {
				err = unix.Fchmod(fd, d.Mode&0o7777)
			}
			if err == nil {
				err = unix.UtimesNanoAt(fd, "", times, unix.AT_EMPTY_PATH)
			}
			unix.Close(fd)
			if err != nil {
				return fmt.Errorf("tmpfs %s: directory %s: %w", tf.m.MountPoint, d.Path, err)
			}
		}
		if strings.HasPrefix(tf.m.SuperOptions, "ro") && (len(tf.m.SuperOptions) == 2 || tf.m.SuperOptions[2] == ',') {
			fsfd := int(tf.fs.Fd())
			if err := unix.FsconfigSetFlag(fsfd, "ro"); err != nil {
				return fmt.Errorf("tmpfs %s: read-only: %w", tf.m.MountPoint, err)
			}
			if err := unix.FsconfigReconfigure(fsfd); err != nil {
				return fmt.Errorf("tmpfs %s: read-only: %w", tf.m.MountPoint, err)
			}
		}
		if err := setMountAttrs(mnt, tf.m.Options); err != nil {
			return fmt.Errorf("tmpfs %s: %w", tf.m.MountPoint, err)
		}
	}
	for _, m := range mr.ns.Mounts {
		tf := mr.tmpfs[m.BindOf]
		if m.Kind != pb.Mount_SAME || tf == nil {
			continue
		}
		// Resolved beneath the tmpfs without following links: the path is
		// from the image.
		dir, err := openBeneath(int(tf.mnt.Fd()), relTo(m.Root, "/"), unix.O_PATH)
		if err != nil {
			return fmt.Errorf("tmpfs %s: open %s for the mount at %s: %w", tf.m.MountPoint, m.Root, m.MountPoint, err)
		}
		fd, err := unix.OpenTree(dir, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
		unix.Close(dir)
		if err != nil {
			return fmt.Errorf("tmpfs %s: clone %s for the mount at %s: %w", tf.m.MountPoint, m.Root, m.MountPoint, err)
		}
		mr.clones[m.Id] = os.NewFile(uintptr(fd), m.MountPoint)
		if err := setMountAttrs(fd, m.Options); err != nil {
			return fmt.Errorf("mount %s: %w", m.MountPoint, err)
		}
	}
	return nil
}

// mountFlags translates per-mount options into mount_setattr attributes and
// mount(2) flags.
func mountFlags(opts string) (attr uint64, flags uint64) {
	atime := uint64(unix.MOUNT_ATTR_STRICTATIME)
	msAtime := uint64(unix.MS_STRICTATIME)
	for _, o := range strings.Split(opts, ",") {
		switch o {
		case "ro":
			attr, flags = attr|unix.MOUNT_ATTR_RDONLY, flags|unix.MS_RDONLY
		case "nosuid":
			attr, flags = attr|unix.MOUNT_ATTR_NOSUID, flags|unix.MS_NOSUID
		case "nodev":
			attr, flags = attr|unix.MOUNT_ATTR_NODEV, flags|unix.MS_NODEV
		case "noexec":
			attr, flags = attr|unix.MOUNT_ATTR_NOEXEC, flags|unix.MS_NOEXEC
		case "nodiratime":
			attr, flags = attr|unix.MOUNT_ATTR_NODIRATIME, flags|unix.MS_NODIRATIME
		case "nosymfollow":
			attr, flags = attr|unix.MOUNT_ATTR_NOSYMFOLLOW, flags|unix.MS_NOSYMFOLLOW
		case "noatime":
			atime, msAtime = unix.MOUNT_ATTR_NOATIME, unix.MS_NOATIME
		case "relatime":
			atime, msAtime = unix.MOUNT_ATTR_RELATIME, unix.MS_RELATIME
		}
	}
	return attr | atime, flags | msAtime
}

// setMountAttrs gives a detached mount exactly the per-mount options opts.
func setMountAttrs(fd int, opts string) error {
	set, _ := mountFlags(opts)
	attr := unix.MountAttr{Attr_set: set, Attr_clr: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV |
		unix.MOUNT_ATTR_NOEXEC | unix.MOUNT_ATTR__ATIME | unix.MOUNT_ATTR_NODIRATIME | unix.MOUNT_ATTR_NOSYMFOLLOW}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		return fmt.Errorf("set mount options %s: %w", opts, err)
	}
	return nil
}

// RestoreMountNamespace makes the mount namespace of t, a fresh copy of
// ckpt's own, into the image's: it keeps the longest prefix of the copy
// (sorted parents first) that equals the image's table, detaches the rest
// and creates the image's other mounts in order. pl hands ckpt's detached
// mounts to t.
//
// Preconditions:
//   - t is the only process in a mount namespace of its own, made by
//     CLONE_NEWNS from ckpt's (so it sees ckpt's root), and already in the
//     restored PID, network and IPC namespaces, which new proc, sysfs and
//     mqueue mounts show;
//   - every mountfile record has been given to AddFile;
//   - no restored process has opened a file, a working directory or a root
//     in the namespace yet (they would keep the detached mounts).
func RestoreMountNamespace(t *Target, pl *FdPuller, mr *MountRestore) error {
	if err := mr.finish(); err != nil {
		return err
	}
	// Mounts copied from a shared mount stay peers of it: make them
	// private before anything is mounted or detached, or the changes would
	// propagate into ckpt's namespace.
	root, err := t.PutString(0, "/")
	if err != nil {
		return err
	}
	if _, err := t.Syscall(unix.SYS_MOUNT, 0, root, 0, unix.MS_REC|unix.MS_PRIVATE, 0); err != nil {
		return fmt.Errorf("make the mounts of process %d private: %w", t.Pid, err)
	}
	cur, err := sortedMounts(t.Pid)
	if err != nil {
		return err
	}
	img := mr.ns.Mounts
	kept := matchMounts(img, cur)
	if _, ok := kept[0]; !ok {
		return fmt.Errorf("the image's root mount (%s from %s) is not ckpt's root (%s from %s): restart inside the same root as the checkpoint", img[0].FsType, img[0].Source, cur[0].FsType, cur[0].Source)
	}
	matched := map[int]bool{}
	for _, c := range kept {
		matched[c] = true
	}
	// Detach every mount of the copy that is not kept. Children and mounts
	// on top come after their parents, so in reverse order each is the
	// topmost mount at its path when its turn comes.
	for i := len(cur) - 1; i >= 0; i-- {
		if matched[cur[i].ID] {
			continue
		}
		p, err := t.PutString(0, cur[i].MountPoint)
		if err != nil {
			return err
		}
		if _, err := t.Syscall(unix.SYS_UMOUNT2, p, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
			return fmt.Errorf("detach %s (%s) in process %d: %w", cur[i].MountPoint, cur[i].FsType, t.Pid, err)
		}
	}
	// A mount hidden under another one's mount point cannot be named by
	// path: check that exactly the kept ones are left.
	left, err := sortedMounts(t.Pid)
	if err != nil {
		return err
	}
	for _, m := range left {
		if !matched[m.ID] {
			return fmt.Errorf("could not detach %s (%s from %s) in process %d: it is hidden under another mount", m.MountPoint, m.FsType, m.Source, t.Pid)
		}
	}
	for i, m := range img {
		if _, ok := kept[i]; ok {
			continue
		}
		if err := mr.create(t, pl, m); err != nil {
			return fmt.Errorf("restore mount %s (%s from %s): %w", m.MountPoint, m.FsType, m.Source, err)
		}
	}
	return nil
}

func sortedMounts(pid int) ([]proc.Mount, error) {
	ms, err := proc.ReadMountInfo(pid)
	if err != nil {
		return nil, fmt.Errorf("read mount table of %d: %w", pid, err)
	}
	if ms, err = sortMounts(ms); err != nil {
		return nil, fmt.Errorf("mount table of %d: %w", pid, err)
	}
	return ms, nil
}

// matchMounts finds the mounts of the image that the copy of ckpt's
// namespace already has: a BIND mount of the image is kept if its parent
// is kept and the kept parent has a child equal to it in the copy. It
// returns, by index into img, the id of the matching mount of cur. The
// tree, not the order, is compared: mountinfo lists mounts by creation,
// which differs between a container and a copy of ckpt's namespace.
func matchMounts(img []*pb.Mount, cur []proc.Mount) map[int]int {
	kept := map[int]int{}
	if len(img) == 0 || len(cur) == 0 {
		return kept
	}
	key := func(mp, root, fsType, source, opts string) string {
		return strings.Join([]string{mp, root, fsType, source, opts}, "\x00")
	}
	if img[0].Kind != pb.Mount_BIND || key(img[0].MountPoint, img[0].Root, img[0].FsType, img[0].Source, img[0].Options) !=
		key(cur[0].MountPoint, cur[0].Root, cur[0].FsType, cur[0].Source, cur[0].Options) {
		return kept
	}
	kept[0] = cur[0].ID
	// children of each mount of cur, by key, in order.
	children := map[int]map[string][]int{}
	for _, c := range cur[1:] {
		if children[c.Parent] == nil {
			children[c.Parent] = map[string][]int{}
		}
		k := key(c.MountPoint, c.Root, c.FsType, c.Source, c.Options)
		children[c.Parent][k] = append(children[c.Parent][k], c.ID)
	}
	byID := map[uint32]int{}
	for i, m := range img {
		byID[m.Id] = i
		if i == 0 || m.Kind != pb.Mount_BIND {
			continue
		}
		parent, ok := kept[byID[m.ParentId]]
		if !ok {
			continue
		}
		k := key(m.MountPoint, m.Root, m.FsType, m.Source, m.Options)
		if c := children[parent][k]; len(c) > 0 {
			kept[i] = c[0]
			children[parent][k] = c[1:]
		}
	}
	return kept
}

// putStrings copies NUL-terminated strings into t's scratch memory and
// returns their addresses; "" gives a NULL pointer.
func putStrings(t *Target, ss ...string) ([]uint64, error) {
	out := make([]uint64, len(ss))
	off := uint64(0)
	for i, s := range ss {
		if s == "" {
			continue
		}
		a, err := t.PutString(off, s)
		if err != nil {
			return nil, err
		}
		out[i] = a
		off += uint64(len(s)) + 1
	}
	return out, nil
}

// create makes one mount of the image in t's namespace.
func (mr *MountRestore) create(t *Target, pl *FdPuller, m *pb.Mount) error {
	_, flags := mountFlags(m.Options)
	switch m.Kind {
	case pb.Mount_TMPFS:
		tf := mr.tmpfs[m.Id]
		if err := attach(t, pl, tf.mnt, m.MountPoint); err != nil {
			return err
		}
	case pb.Mount_BIND:
		fd, err := unix.OpenTree(unix.AT_FDCWD, m.BindSource, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
		if err != nil {
			return fmt.Errorf("clone bind source %s: %w", m.BindSource, err)
		}
		f := os.NewFile(uintptr(fd), m.BindSource)
		defer f.Close()
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		// Virtual filesystems get their device numbers at mount time, so
		// only a disk's can be compared.
		if m.DevMajor != 0 && st.Dev != unix.Mkdev(m.DevMajor, m.DevMinor) {
			return fmt.Errorf("bind source %s is on device %d:%d, the image's mount was on %d:%d: is another mount on top of it in ckpt's namespace?", m.BindSource, unix.Major(st.Dev), unix.Minor(st.Dev), m.DevMajor, m.DevMinor)
		}
		if err := setMountAttrs(fd, m.Options); err != nil {
			return err
		}
		if err := attach(t, pl, f, m.MountPoint); err != nil {
			return err
		}
	case pb.Mount_SAME:
		if f := mr.clones[m.Id]; f != nil {
			if err := attach(t, pl, f, m.MountPoint); err != nil {
				return err
			}
			break
		}
		// A second mount of a proc, sysfs, devpts or mqueue: they exist
		// only in t's namespace, so bind by path there.
		first := mr.byID[m.BindOf]
		src := filepath.Join(first.MountPoint, relTo(m.Root, first.Root))
		a, err := putStrings(t, src, m.MountPoint)
		if err != nil {
			return err
		}
		if _, err := t.Syscall(unix.SYS_MOUNT, a[0], a[1], 0, unix.MS_BIND, 0); err != nil {
			return fmt.Errorf("bind from %s: %w", src, err)
		}
		if _, err := t.Syscall(unix.SYS_MOUNT, 0, a[1], 0, unix.MS_REMOUNT|unix.MS_BIND|flags, 0); err != nil {
			return fmt.Errorf("set options %s: %w", m.Options, err)
		}
	default: // a new proc, sysfs, devpts or mqueue, seen from t's namespaces
		var data []string
		for _, o := range strings.Split(m.SuperOptions, ",") {
			if o != "" && o != "rw" && o != "ro" {
				data = append(data, o)
			}
		}
		if strings.HasPrefix(m.SuperOptions, "ro,") || m.SuperOptions == "ro" {
			flags |= unix.MS_RDONLY
		}
		a, err := putStrings(t, m.Source, m.MountPoint, m.FsType, strings.Join(data, ","))
		if err != nil {
			return err
		}
		if _, err := t.Syscall(unix.SYS_MOUNT, a[0], a[1], a[2], flags, a[3]); err != nil {
			return fmt.Errorf("mount %s: %w", m.SuperOptions, err)
		}
	}
	if m.Unbindable {
		a, err := putStrings(t, m.MountPoint)
		if err != nil {
			return err
		}
		if _, err := t.Syscall(unix.SYS_MOUNT, 0, a[0], 0, unix.MS_UNBINDABLE, 0); err != nil {
			return fmt.Errorf("make unbindable: %w", err)
		}
	}
	return nil
}

// attach moves ckpt's detached mount f onto mp in t's namespace.
func attach(t *Target, pl *FdPuller, f *os.File, mp string) error {
	n, err := pl.Pull(f)
	if err != nil {
		return err
	}
	// from_path is the empty string, to_path follows it.
	empty, err := t.PutString(0, "")
	if err != nil {
		return err
	}
	to, err := t.PutString(1, mp)
	if err != nil {
		return err
	}
	_, err = t.Syscall(unix.SYS_MOVE_MOUNT, n, empty, atFdcwd, to, unix.MOVE_MOUNT_F_EMPTY_PATH)
	if _, cerr := t.Syscall(unix.SYS_CLOSE, n); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("move_mount onto %s: %w", mp, err)
	}
	return nil
}

// NewFdPullerFrom makes an FdPuller from a pidfd for ckpt that the stub
// already holds as descriptor pidfd: a stub in a new PID namespace cannot
// open one itself (ckpt's PID is not visible there), but inherits one
// opened by its parent before the clone.
// (With send set, pidfd is the stub's end of ckpt's socket; see FdPuller.)
func NewFdPullerFrom(t *Target, pidfd uint64, send *os.File) *FdPuller {
	return &FdPuller{t: t, pidfd: pidfd, send: send}
}

// atFdcwd is AT_FDCWD as a system call argument.
const atFdcwd = ^uint64(99) // -100
