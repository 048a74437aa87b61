package resource

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount namespaces)")
	}
}

// startInNamespaces runs the shell script in new mount and PID namespaces
// (so its mounts die with it) and waits until it prints READY. The
// process is killed and reaped when the test ends.
func startInNamespaces(t *testing.T, script string, extra ...*os.File) *exec.Cmd {
	t.Helper()
	// cat blocks in read, which restarts cleanly after injected calls.
	cmd := exec.Command("sh", "-c", "set -e\n"+script+"\necho READY\nexec cat")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	// No Pdeathsig: it fires when the forking OS thread ends, and the
	// threads ptrace.Run and openTreeIn lock are thrown away.
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID}
	cmd.ExtraFiles = extra
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "READY\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("setup script failed (%v): %s", err, stderr.String())
	}
	// Wait until cat reads, so that it is stopped behind a syscall
	// instruction when seized.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		b, _ := os.ReadFile(proc.Path(cmd.Process.Pid, "syscall"))
		comm, _ := os.ReadFile(proc.Path(cmd.Process.Pid, "comm"))
		if strings.HasPrefix(string(b), "0 ") && string(comm) == "cat\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d does not read: %q", cmd.Process.Pid, b)
		}
	}
	return cmd
}

// fileInfo is what the test compares of a file.
type fileInfo struct {
	Mode       fs.FileMode
	Uid, Gid   uint32
	Mtime      int64
	Size       int64
	Nlink      uint64
	Rdev       uint64
	Link, Hash string
}

func walkFiles(t *testing.T, dir string) map[string]fileInfo {
	t.Helper()
	out := map[string]fileInfo{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fi := fileInfo{Mode: fs.FileMode(st.Mode), Uid: st.Uid, Gid: st.Gid, Mtime: st.Mtim.Nano(), Nlink: st.Nlink, Rdev: st.Rdev}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fi.Size, fi.Hash = int64(len(b)), fmt.Sprintf("%x", sha256.Sum256(b))
		case unix.S_IFLNK:
			fi.Link, _ = os.Readlink(p)
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = fi
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// normalMounts lists a mount table without ids and device numbers, parents
// named by mount point.
func normalMounts(t *testing.T, pid int) []string {
	t.Helper()
	ms, err := proc.ReadMountInfo(pid)
	if err != nil {
		t.Fatal(err)
	}
	if ms, err = sortMounts(ms); err != nil {
		t.Fatal(err)
	}
	mp := map[int]string{}
	for _, m := range ms {
		mp[m.ID] = m.MountPoint
	}
	var out []string
	for _, m := range ms {
		out = append(out, strings.Join([]string{m.MountPoint, "parent=" + mp[m.Parent], m.Root, m.FsType, m.Source, m.Options, m.SuperOptions, strings.Join(m.Optional, " ")}, " | "))
	}
	return out
}

func procPids(t *testing.T, procDir string) []string {
	t.Helper()
	ents, err := os.ReadDir(procDir)
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, e := range ents {
		if e.Name()[0] >= '0' && e.Name()[0] <= '9' {
			pids = append(pids, e.Name())
		}
	}
	sort.Strings(pids)
	return pids
}

// TestMountNamespaceRoundTrip dumps the mount table of a process in its
// own mount and PID namespaces (a tmpfs with files of every kind, one of
// its directories covered by another tmpfs, a read-only bind mount, a
// bind of a tmpfs directory, a fresh /proc), restores it into a second
// process in fresh namespaces through injected system calls, and compares
// the two mount tables, the files and what /proc shows.
func TestMountNamespaceRoundTrip(t *testing.T) {
	needRoot(t)
	d := t.TempDir()
	script := fmt.Sprintf(`D=%s
mount --make-rprivate /
mkdir -p $D/t $D/src $D/ro $D/same "$D/with space"
echo data > $D/src/inside
mount -t tmpfs -o size=8m,mode=751,uid=1234,gid=5678 mytmp $D/t
mkdir $D/t/dir $D/t/sub
echo hello > $D/t/dir/f
chown 7:8 $D/t/dir/f
chmod 4640 $D/t/dir/f
touch -d '2001-02-03 04:05:06' $D/t/dir/f
ln -s dir/f $D/t/link
chown -h 9:10 $D/t/link
ln $D/t/dir/f $D/t/hard
mkfifo -m 604 $D/t/fifo
mknod -m 666 $D/t/null c 1 3
head -c 3000000 /dev/urandom > $D/t/big
truncate -s 50M $D/t/sparse
printf x | dd of=$D/t/sparse bs=1 seek=20000000 conv=notrunc status=none
: > $D/t/empty
echo under > $D/t/sub/hidden
chmod 0710 $D/t/dir
touch -d '2002-01-01' $D/t/dir
mount -t tmpfs -o size=1m,nodev,noexec over $D/t/sub
echo over > $D/t/sub/visible
mount --bind $D/src $D/ro
mount -o remount,bind,ro,nosuid $D/ro
mount --bind $D/t/dir $D/same
mount -t tmpfs spaced "$D/with space"
echo x > "$D/with space/file"
mount -o remount,ro "$D/with space"
mount -t proc -o hidepid=1 proc /proc
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
`, d)
	c := startInNamespaces(t, script)
	pid := c.Process.Pid

	if err := PreflightMountNamespace(pid); err != nil {
		t.Fatalf("preflight: %v", err)
	}
	var img bytes.Buffer
	w, err := image.NewWriter(&img)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Message(image.TypeHeader, &pb.Header{FormatVersion: image.FormatVersion, PageSize: image.PageSize}); err != nil {
		t.Fatal(err)
	}
	ns, err := DumpMountNamespace(pid, w)
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]pb.Mount_Kind{}
	for _, m := range ns.Mounts {
		kinds[m.MountPoint] = m.Kind
	}
	for mp, k := range map[string]pb.Mount_Kind{"/": pb.Mount_BIND, d + "/t": pb.Mount_TMPFS, d + "/t/sub": pb.Mount_TMPFS,
		d + "/ro": pb.Mount_BIND, d + "/same": pb.Mount_SAME, "/proc": pb.Mount_PROC, "/proc/sys": pb.Mount_SAME, d + "/with space": pb.Mount_TMPFS} {
		if kinds[mp] != k {
			t.Errorf("mount %s: kind %v, want %v", mp, kinds[mp], k)
		}
	}
	if img.Len() < 3000000 || img.Len() > 4000000 {
		t.Errorf("image of %d bytes: want the 3 MB file and the sparse file's single byte", img.Len())
	}

	// Read the image back as restart does.
	r, err := image.NewReader(bytes.NewReader(img.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	var mr *MountRestore
	defer func() {
		if mr != nil {
			mr.Close()
		}
	}()
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch rec.Type {
		case image.TypeMountNs:
			ns := &pb.MountNamespace{}
			if err := image.Unmarshal(rec, ns); err != nil {
				t.Fatal(err)
			}
			if mr, err = PrepareMounts(ns); err != nil {
				t.Fatal(err)
			}
		case image.TypeMountFile:
			f := &pb.MountFile{}
			if err := image.Unmarshal(rec, f); err != nil {
				t.Fatal(err)
			}
			if err := mr.AddFile(f); err != nil {
				t.Fatal(err)
			}
		}
	}

	// The restore target: a fresh process in new mount and PID namespaces
	// (its mount table a copy of ours), holding a pidfd for us as fd 3.
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Skipf("pidfd_open: %v", err)
	}
	pf := os.NewFile(uintptr(pidfd), "pidfd")
	defer pf.Close()
	s := startInNamespaces(t, "", pf)
	spid := s.Process.Pid
	err = injectInto(spid, func(tg *Target) error {
		return RestoreMountNamespace(tg, NewFdPullerFrom(tg, 3, nil), mr)
	})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}

	// Sibling order follows mount ids, which differ; the tree must not.
	want, got := normalMounts(t, pid), normalMounts(t, spid)
	sort.Strings(want)
	sort.Strings(got)
	if strings.Join(want, "\n") != strings.Join(got, "\n") {
		t.Errorf("mount tables differ:\ncheckpointed:\n%s\nrestored:\n%s", strings.Join(want, "\n"), strings.Join(got, "\n"))
	}
	root := func(p int, path string) string { return fmt.Sprintf("/proc/%d/root%s", p, path) }
	wf, gf := walkFiles(t, root(pid, d+"/t")), walkFiles(t, root(spid, d+"/t"))
	if len(wf) < 10 {
		t.Errorf("only %d files in the tmpfs: %v", len(wf), wf)
	}
	for p, w := range wf {
		if g, ok := gf[p]; !ok || g != w {
			t.Errorf("file %s: restored %+v, want %+v", p, g, w)
		}
	}
	for p := range gf {
		if _, ok := wf[p]; !ok {
			t.Errorf("file %s restored but not in the checkpoint", p)
		}
	}
	if f := wf["dir/f"]; f.Mode&0o7777 != 0o4640 || f.Uid != 7 || f.Nlink != 2 || f.Mtime != time.Date(2001, 2, 3, 4, 5, 6, 0, time.Local).UnixNano() {
		t.Errorf("dir/f is %+v: the setup did not do what the test expects", f)
	}
	// The directory under the covering tmpfs was restored in the tmpfs
	// itself: look at the bare tmpfs, as the dump does.
	bare, err := openTreeIn(spid, d+"/t")
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Openat2(int(bare.Fd()), "sub/hidden", &unix.OpenHow{Flags: unix.O_RDONLY, Resolve: beneath})
	bare.Close()
	if err != nil {
		t.Fatalf("covered file: %v", err)
	}
	b := make([]byte, 16)
	n, _ := unix.Read(fd, b)
	unix.Close(fd)
	if string(b[:n]) != "under\n" {
		t.Errorf("covered file holds %q", b[:n])
	}
	if b, err := os.ReadFile(root(spid, d+"/same/f")); err != nil || string(b) != "hello\n" {
		t.Errorf("bind of a tmpfs directory: %q, %v", b, err)
	}
	if b, err := os.ReadFile(root(spid, d+"/ro/inside")); err != nil || string(b) != "data\n" {
		t.Errorf("bind mount: %q, %v", b, err)
	}
	for _, p := range []string{d + "/ro/new", d + "/with space/new"} {
		if err := os.WriteFile(root(spid, p), nil, 0o644); !errors.Is(err, unix.EROFS) {
			t.Errorf("write %s into a read-only mount: %v, want EROFS", p, err)
		}
	}
	if b, err := os.ReadFile(root(spid, d+"/with space/file")); err != nil || string(b) != "x\n" {
		t.Errorf("file in the read-only tmpfs: %q, %v", b, err)
	}
	// /proc shows the restored process's own PID namespace: itself as 1.
	if p := procPids(t, root(spid, "/proc")); strings.Join(p, " ") != "1" {
		t.Errorf("restored /proc lists %v, want only 1", p)
	}
	if p := procPids(t, root(pid, "/proc")); strings.Join(p, " ") != "1" {
		t.Errorf("checkpointed /proc lists %v, want only 1", p)
	}
	// Nothing leaked into our own namespace.
	mine, err := proc.ReadMountInfo(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mine {
		if pathWithin(m.MountPoint, d) {
			t.Errorf("mount %s leaked into the test's namespace", m.MountPoint)
		}
	}
}

// TestMountPreflightRefuses checks that mounts ckpt cannot re-create are
// refused before anything is frozen, naming the mount.
func TestMountPreflightRefuses(t *testing.T) {
	needRoot(t)
	cases := []struct {
		name, script string
		want         []string
	}{
		{"ramfs", `mount -t ramfs myram $D/m`, []string{"/m (ramfs from myram)", "cannot be re-created", "unmount it"}},
		{"overlay", `mkdir $D/l $D/u $D/w; mount -t overlay ov -o lowerdir=$D/l,upperdir=$D/u,workdir=$D/w $D/m`, []string{"/m (overlay from ov)", "cannot be re-created"}},
		{"shared", `mount -t tmpfs tm $D/m; mount --make-shared $D/m`, []string{"/m (tmpfs from tm)", "shared:", "make-rprivate"}},
		{"subdir", `mkdir $D/x; mount -t tmpfs tm $D/x; mkdir $D/x/s; mount --bind $D/x/s $D/m; umount $D/x`, []string{"/m (tmpfs from tm)", "shows only /s"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			c := startInNamespaces(t, "D="+d+"\nmount --make-rprivate /\nmkdir $D/m\n"+tc.script)
			err := PreflightMountNamespace(c.Process.Pid)
			if err == nil {
				t.Fatal("preflight accepted it")
			}
			if !errors.Is(err, ErrUnsupported) {
				t.Errorf("error does not wrap ErrUnsupported: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestMountImageDamaged feeds PrepareMounts and AddFile hostile records.
func TestMountImageDamaged(t *testing.T) {
	root := &pb.Mount{Id: 1, MountPoint: "/", Root: "/", FsType: "ext4", Kind: pb.Mount_BIND, BindSource: "/"}
	bad := []*pb.MountNamespace{
		{},
		{Mounts: []*pb.Mount{{Id: 1, MountPoint: "/x", Root: "/", Kind: pb.Mount_BIND, BindSource: "/"}}},
		{Mounts: []*pb.Mount{root, {Id: 2, ParentId: 9, MountPoint: "/a", Root: "/", FsType: "proc", Kind: pb.Mount_PROC}}},
		{Mounts: []*pb.Mount{root, {Id: 2, ParentId: 1, MountPoint: "/a/../b", Root: "/", FsType: "proc", Kind: pb.Mount_PROC}}},
		{Mounts: []*pb.Mount{root, {Id: 2, ParentId: 1, MountPoint: "/a", Root: "/", FsType: "ext4", Kind: pb.Mount_PROC}}},
		{Mounts: []*pb.Mount{root, {Id: 2, ParentId: 1, MountPoint: "/a", Root: "/", FsType: "proc", Kind: pb.Mount_SAME, BindOf: 1}}},
		{Mounts: []*pb.Mount{root, {Id: 2, ParentId: 1, MountPoint: "/a", Root: "/", FsType: "x", Kind: 99}}},
	}
	for i, ns := range bad {
		if mr, err := PrepareMounts(ns); err == nil {
			mr.Close()
			t.Errorf("table %d accepted", i)
		} else if !strings.Contains(err.Error(), "image damaged") {
			t.Errorf("table %d: %v", i, err)
		}
	}
	if os.Geteuid() != 0 {
		return
	}
	mr, err := PrepareMounts(&pb.MountNamespace{Mounts: []*pb.Mount{root,
		{Id: 2, ParentId: 1, MountPoint: "/a", Root: "/", FsType: "tmpfs", Source: "t", SuperOptions: "rw,size=64k", Kind: pb.Mount_TMPFS}}})
	if err != nil {
		t.Fatal(err)
	}
	defer mr.Close()
	dir := &pb.MountFile{MountId: 2, Path: "d", Mode: unix.S_IFDIR | 0o755}
	if err := mr.AddFile(dir); err != nil {
		t.Fatal(err)
	}
	for i, f := range []*pb.MountFile{
		{MountId: 3, Path: "x", Mode: unix.S_IFREG},
		{MountId: 2, Path: "../x", Mode: unix.S_IFREG},
		{MountId: 2, Path: "/etc/x", Mode: unix.S_IFREG},
		{MountId: 2, Path: "nodir/x", Mode: unix.S_IFREG},
		{MountId: 2, Path: "d", Mode: unix.S_IFREG},
		{MountId: 2, Path: "d/x", Chunk: true, Data: []byte("x")},
		{MountId: 2, Path: "h", Mode: unix.S_IFREG, Hardlink: "d"},
		{MountId: 2, Path: "s", Mode: unix.S_IFLNK},
	} {
		if err := mr.AddFile(f); err == nil {
			t.Errorf("file %d (%s) accepted", i, f.Path)
		}
	}
	if err := mr.AddFile(&pb.MountFile{MountId: 2, Path: "d/f", Mode: unix.S_IFREG | 0o644, Size: 2}); err != nil {
		t.Fatal(err)
	}
	if err := mr.AddFile(&pb.MountFile{MountId: 2, Path: "d/f", Chunk: true, Offset: 1, Data: []byte("ab")}); err == nil {
		t.Error("chunk past the file's size accepted")
	}
	// Too large for the tmpfs: a clean error, not a crash.
	if err := mr.AddFile(&pb.MountFile{MountId: 2, Path: "big", Mode: unix.S_IFREG | 0o644, Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := mr.AddFile(&pb.MountFile{MountId: 2, Path: "big", Chunk: true, Data: make([]byte, 1<<20)}); err == nil {
		t.Error("1 MiB written into a 64 KiB tmpfs")
	}
}
