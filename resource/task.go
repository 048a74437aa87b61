package resource

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
	"github.com/ckpt/ckpt/ptrace"
)

// numRlimits is RLIM_NLIMITS on Linux.
const numRlimits = 16

// DumpTask reads what a process has besides memory, files, threads and
// signals: name, personality, umask, limits, credentials, cwd and root.
func DumpTask(pid int, p *pb.Process) error {
	comm, err := proc.ReadFile(proc.Path(pid, "comm"))
	if err != nil {
		return err
	}
	p.Comm = strings.TrimSuffix(string(comm), "\n")
	pers, err := readProcNumber(pid, "personality", 16) // %08x of an unsigned int
	if err != nil {
		return err
	}
	p.Personality = uint32(pers)
	st, err := proc.ReadStatus(pid)
	if err != nil {
		return err
	}
	um, err := strconv.ParseUint(st["Umask"], 8, 32)
	if err != nil {
		return fmt.Errorf("umask: %w", err)
	}
	p.Umask = uint32(um)
	uids, err := st.Uints("Uid", 10)
	if err != nil || len(uids) != 4 {
		return fmt.Errorf("uids of %d: %q", pid, st["Uid"])
	}
	gids, err := st.Uints("Gid", 10)
	if err != nil || len(gids) != 4 {
		return fmt.Errorf("gids of %d: %q", pid, st["Gid"])
	}
	groups, err := st.Uints("Groups", 10)
	if err != nil {
		return err
	}
	c := &pb.Creds{Uid: uint32(uids[0]), Euid: uint32(uids[1]), Suid: uint32(uids[2]), Fsuid: uint32(uids[3]),
		Gid: uint32(gids[0]), Egid: uint32(gids[1]), Sgid: uint32(gids[2]), Fsgid: uint32(gids[3])}
	for _, g := range groups {
		c.Groups = append(c.Groups, uint32(g))
	}
	if c.Caps, err = readCaps(st); err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	// Threads may each have sets of their own (capset acts on one); the
	// image keeps one copy, so they must agree.
	if err := checkThreadCaps(pid, st["Threads"], c.Caps); err != nil {
		return err
	}
	p.Creds = c
	p.NoNewPrivs = st["NoNewPrivs"] == "1"
	p.ThpDisabled = st["THP_enabled"] == "0"
	adj, err := readProcNumber(pid, "oom_score_adj", 10)
	if err != nil {
		return err
	}
	p.OomScoreAdj = proto.Int32(int32(adj))
	// /proc/PID/limits rather than prlimit(2): the latter needs
	// CAP_SYS_RESOURCE for another user's process.
	limits, err := proc.ReadFile(proc.Path(pid, "limits"))
	if err != nil {
		return err
	}
	if p.Rlimits, err = parseLimits(string(limits)); err != nil {
		return fmt.Errorf("limits of %d: %w", pid, err)
	}
	if p.Cwd, err = os.Readlink(proc.Path(pid, "cwd")); err != nil {
		return err
	}
	if cwd, ok := strings.CutSuffix(p.Cwd, " (deleted)"); ok {
		var st unix.Stat_t
		if err := unix.Stat(proc.Path(pid, "cwd"), &st); err == nil && st.Nlink == 0 {
			p.Cwd, p.CwdDeleted = cwd, true
		}
	}
	if p.Root, err = os.Readlink(proc.Path(pid, "root")); err != nil {
		return err
	}
	return nil
}

// RestoreTask sets name, personality, umask, limits, cwd and root in the
// stub. Credentials are set last of all, by RestoreCreds.
func RestoreTask(t *Target, p *pb.Process) error {
	// Limits are set from outside; the rest is one batch.
	for _, r := range p.Rlimits {
		if r.Resource >= numRlimits {
			return fmt.Errorf("image damaged: rlimit %d", r.Resource)
		}
		lim := unix.Rlimit{Cur: r.Cur, Max: r.Max}
		if err := unix.Prlimit(t.Pid, int(r.Resource), &lim, nil); err != nil {
			var cur unix.Rlimit
			unix.Prlimit(t.Pid, int(r.Resource), nil, &cur)
			return fmt.Errorf("set rlimit %d to %d/%d (hard limit here is %d; raise it before restarting): %w", r.Resource, r.Cur, r.Max, cur.Max, err)
		}
	}
	d := &batchData{t: t}
	calls := []Call{
		{Nr: unix.SYS_PERSONALITY, Args: []uint64{uint64(p.Personality)},
			Err: func(err error) error { return fmt.Errorf("set personality %#x: %w", p.Personality, err) }},
		{Nr: unix.SYS_UMASK, Args: []uint64{uint64(p.Umask)},
			Err: func(err error) error { return fmt.Errorf("set umask: %w", err) }},
	}
	name, err := nameCall(d, p.Comm)
	if err != nil {
		return err
	}
	calls = append(calls, name)
	cwd := p.Cwd
	if p.CwdDeleted {
		if cwd, err = makeDeletedCwd(t, d, p.Cwd); err != nil {
			return err
		}
	}
	addr, err := d.putString(cwd)
	if err != nil {
		return err
	}
	calls = append(calls, Call{Nr: unix.SYS_CHDIR, Args: []uint64{addr},
		Err: func(err error) error {
			return fmt.Errorf("change directory to %s (it must exist at restart): %w", p.Cwd, err)
		}})
	if p.CwdDeleted {
		// Removed again once entered: the process is in a deleted
		// directory, as it was.
		calls = append(calls, Call{Nr: unix.SYS_RMDIR, Args: []uint64{addr},
			Err: func(err error) error { return fmt.Errorf("remove the remade working directory %s: %w", cwd, err) }})
	}
	if p.Root != "/" && p.Root != "" {
		if addr, err = d.putString(p.Root); err != nil {
			return err
		}
		calls = append(calls, Call{Nr: unix.SYS_CHROOT, Args: []uint64{addr},
			Err: func(err error) error { return fmt.Errorf("change root to %s: %w", p.Root, err) }})
	}
	if p.ChildSubreaper {
		calls = append(calls, Call{Nr: unix.SYS_PRCTL, Args: []uint64{unix.PR_SET_CHILD_SUBREAPER, 1},
			Err: func(err error) error { return fmt.Errorf("make it a child subreaper: %w", err) }})
	}
	if p.ThpDisabled {
		calls = append(calls, Call{Nr: unix.SYS_PRCTL, Args: []uint64{unix.PR_SET_THP_DISABLE, 1, 0, 0, 0},
			Err: func(err error) error { return fmt.Errorf("disable transparent huge pages: %w", err) }})
	}
	_, err = t.Batch(calls)
	return err
}

// makeDeletedCwd makes, in the stub's view of the filesystem, a directory
// to stand for the deleted working directory path: at path if that is
// free (so that /proc shows the same name, " (deleted)"), else beside it.
// d holds the path strings; what it returns is the directory made.
func makeDeletedCwd(t *Target, d *batchData, path string) (string, error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path || path == "/" {
		return "", fmt.Errorf("image damaged: deleted working directory %q", path)
	}
	// Fewer tries than ckpt's own makeBeside callers: each name takes
	// room in the stub's scratch area.
	made, err := makeBeside(path, 10, func(p string) error {
		addr, err := d.putString(p)
		if err != nil {
			return err
		}
		_, err = t.Syscall(unix.SYS_MKDIR, addr, 0o700)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("make the deleted working directory %s again: %w (its parent must exist at restart)", path, err)
	}
	return made, nil
}

// readProcNumber reads a /proc/PID file that holds one number in base.
func readProcNumber(pid int, name string, base int) (int64, error) {
	b, err := proc.ReadFile(proc.Path(pid, name))
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), base, 64)
	if err != nil {
		return 0, fmt.Errorf("%s of %d: %w", name, pid, err)
	}
	return v, nil
}

// writeProc writes value to /proc/PID/name.
func writeProc(pid int, name, value string) error {
	return os.WriteFile(proc.Path(pid, name), []byte(value), 0)
}

// RestoreOomScoreAdj gives the process its OOM score adjustment, from
// outside (the stub inherited ckpt's). Lowering it below what ckpt has
// needs CAP_SYS_RESOURCE: without it, warn says so and the process keeps
// ckpt's.
func RestoreOomScoreAdj(pid int, p *pb.Process, warn func(string)) error {
	if p.OomScoreAdj == nil {
		return nil
	}
	v := *p.OomScoreAdj
	if v < -1000 || v > 1000 {
		return fmt.Errorf("image damaged: oom_score_adj %d", v)
	}
	err := writeProc(pid, "oom_score_adj", strconv.Itoa(int(v)))
	if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
		if warn != nil {
			warn(fmt.Sprintf("process %d had oom_score_adj %d, lower than this user may set (%v); it keeps ckpt's", p.Pid, v, err))
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("set oom_score_adj %d: %w", v, err)
	}
	return nil
}

// arch_prctl codes for the XSAVE features a process must ask for
// (arch/x86/include/uapi/asm/prctl.h), and those features: AMX tile data.
const (
	archGetXcompPerm = 0x1022
	archReqXcompPerm = 0x1023
	xfeaturesDynamic = 1 << ptrace.FeatureTileData
)

// DumpPrctls reads, in one batch of injected calls, the program break and
// the process's prctl state that /proc does not show: whether it is
// dumpable, whether it is a child subreaper, its securebits, which XSAVE features it
// asked for (AMX: without its permission back, the restored program's
// next AMX instruction would kill it; a kernel before 5.16 has none).
func DumpPrctls(t *Target, p *pb.Process) (brk uint64, err error) {
	calls := []Call{
		{Nr: unix.SYS_BRK, Args: []uint64{0},
			Err: func(err error) error { return fmt.Errorf("read brk: %w", err) }},
		{Nr: unix.SYS_PRCTL, Args: []uint64{unix.PR_GET_DUMPABLE},
			Err: func(err error) error { return fmt.Errorf("read dumpable: %w", err) }},
		{Nr: unix.SYS_PRCTL, Args: []uint64{unix.PR_GET_CHILD_SUBREAPER, t.Scratch},
			Err: func(err error) error { return fmt.Errorf("read child subreaper: %w", err) }},
		{Nr: unix.SYS_PRCTL, Args: []uint64{unix.PR_GET_SECUREBITS},
			Err: func(err error) error { return fmt.Errorf("read securebits: %w", err) }},
		{Nr: unix.SYS_ARCH_PRCTL, Args: []uint64{archGetXcompPerm, t.Scratch + 8}},
	}
	res, err := t.Batch(calls)
	if err != nil && !(len(res) == len(calls)-1 && errors.Is(err, unix.EINVAL)) {
		return 0, err
	}
	var b [16]byte
	if err := t.ReadMem(t.Scratch, b[:]); err != nil {
		return 0, err
	}
	p.Dumpable = uint32(res[1]) + 1
	p.ChildSubreaper = [4]byte(b[:4]) != [4]byte{}
	p.Securebits = uint32(res[3])
	if len(res) == len(calls) {
		p.XcompPerm = binary.LittleEndian.Uint64(b[8:]) & xfeaturesDynamic
	}
	return res[0], nil
}

// RestoreXcompPerm asks the kernel again for the XSAVE features the
// process had asked for, before its threads' registers are set (a thread
// with AMX state in use needs the permission for that).
func RestoreXcompPerm(t *Target, p *pb.Process) error {
	for f := uint64(0); f < 64; f++ {
		if p.XcompPerm&(1<<f) == 0 {
			continue
		}
		if _, err := t.Syscall(unix.SYS_ARCH_PRCTL, archReqXcompPerm, f); err != nil {
			return fmt.Errorf("process %d uses XSAVE feature %d (AMX), which this CPU or kernel does not offer (%w): restart it on a machine with it", p.Pid, f, err)
		}
	}
	return nil
}

// RestoreDumpable makes the process dumpable, or not, as it was. It comes
// after the credentials: changing them resets it (to the fs.suid_dumpable
// sysctl, 0 by default), which left a restarted process of another user
// than ckpt's undumpable, its /proc files owned by root. Dumpable by root
// only (suid_dumpable 2) cannot be asked for, and is left to the kernel.
func RestoreDumpable(t *Target, p *pb.Process) error {
	if p.Dumpable != 1 && p.Dumpable != 2 {
		return nil
	}
	if _, err := t.Syscall(unix.SYS_PRCTL, unix.PR_SET_DUMPABLE, uint64(p.Dumpable-1)); err != nil {
		return fmt.Errorf("set dumpable %d: %w", p.Dumpable-1, err)
	}
	return nil
}

// RestoreCreds gives the stub the process's credentials and securebits.
// It comes after everything that needs ckpt's privileges.
func RestoreCreds(t *Target, c *pb.Creds, cur *pb.Caps, securebits uint32) error {
	if c == nil {
		return nil
	}
	groups := make([]byte, 4*len(c.Groups))
	for i, g := range c.Groups {
		groups[4*i], groups[4*i+1], groups[4*i+2], groups[4*i+3] = byte(g), byte(g>>8), byte(g>>16), byte(g>>24)
	}
	d := &batchData{t: t}
	var addr uint64
	if len(groups) > 0 {
		var err error
		if addr, err = d.put(groups); err != nil {
			return err
		}
	}
	calls := append([]Call{{Nr: unix.SYS_SETGROUPS, Args: []uint64{uint64(len(c.Groups)), addr},
		Err: func(err error) error { return fmt.Errorf("set groups: %w", err) }}}, idCalls(c)...)
	calls, err := capsCalls(cur, c.Caps, rootnessOf(c), calls, d, securebits)
	if err != nil {
		return err
	}
	_, err = t.Batch(calls)
	return err
}

// CheckUnprivCaps refuses, for a restart that gives every process no
// capabilities, an image whose process c had some.
func CheckUnprivCaps(pid uint32, c *pb.Creds) error {
	if c == nil || c.Caps == nil || plainCaps(c.Caps, false) {
		return nil
	}
	return fmt.Errorf("process %d had capabilities (CapEff %016x, CapPrm %016x), which a restart as a user cannot give; restart as root", pid, c.Caps.Effective, c.Caps.Permitted)
}

// RestoreIDs sets the uids and gids of c but not the supplementary groups:
// in a user namespace that denies setgroups (an unprivileged restart) the
// thread keeps the groups it inherited from ckpt, which the credential
// check found equal to the image's.
func RestoreIDs(t *Target, c *pb.Creds) error {
	if c == nil {
		return nil
	}
	_, err := t.Batch(idCalls(c))
	return err
}

// idCalls set the uids and gids of c, gids first (while setgid is still
// allowed).
func idCalls(c *pb.Creds) []Call {
	return []Call{
		{Nr: unix.SYS_SETRESGID, Args: []uint64{uint64(c.Gid), uint64(c.Egid), uint64(c.Sgid)},
			Err: func(err error) error { return fmt.Errorf("set gids %d/%d/%d: %w", c.Gid, c.Egid, c.Sgid, err) }},
		{Nr: unix.SYS_SETFSGID, Args: []uint64{uint64(c.Fsgid)},
			Err: func(err error) error { return fmt.Errorf("set fsgid: %w", err) }},
		{Nr: unix.SYS_SETRESUID, Args: []uint64{uint64(c.Uid), uint64(c.Euid), uint64(c.Suid)},
			Err: func(err error) error { return fmt.Errorf("set uids %d/%d/%d: %w", c.Uid, c.Euid, c.Suid, err) }},
		{Nr: unix.SYS_SETFSUID, Args: []uint64{uint64(c.Fsuid)},
			Err: func(err error) error { return fmt.Errorf("set fsuid: %w", err) }},
	}
}

// RestoreNoNewPrivs sets no_new_privs in the thread t runs in, if the
// process had it (it cannot be cleared, so it comes last).
func RestoreNoNewPrivs(t *Target, p *pb.Process) error {
	if !p.NoNewPrivs {
		return nil
	}
	if _, err := t.Syscall(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	return nil
}

// parseLimits parses /proc/PID/limits, whose lines follow the RLIMIT_*
// numbering: "Max open files  1024  1048576  files".
func parseLimits(text string) ([]*pb.Rlimit, error) {
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if len(lines) < numRlimits+1 {
		return nil, fmt.Errorf("%d lines, want %d", len(lines), numRlimits+1)
	}
	val := func(s string) (uint64, bool) {
		if s == "unlimited" {
			return unix.RLIM_INFINITY, true
		}
		v, err := strconv.ParseUint(s, 10, 64)
		return v, err == nil
	}
	var out []*pb.Rlimit
	for r, line := range lines[1 : numRlimits+1] {
		f := strings.Fields(line)
		if len(f) > 0 {
			if _, ok := val(f[len(f)-1]); !ok {
				f = f[:len(f)-1] // units
			}
		}
		if len(f) < 2 {
			return nil, fmt.Errorf("bad line %q", line)
		}
		cur, ok1 := val(f[len(f)-2])
		max, ok2 := val(f[len(f)-1])
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("bad line %q", line)
		}
		out = append(out, &pb.Rlimit{Resource: uint32(r), Cur: cur, Max: max})
	}
	return out, nil
}

// SetName sets the name (comm) of the thread t runs in.
func SetName(t *Target, name string) error {
	c, err := nameCall(&batchData{t: t}, name)
	if err != nil {
		return err
	}
	_, err = t.Batch([]Call{c})
	return err
}

// nameCall is the call that sets the thread's name.
func nameCall(d *batchData, name string) (Call, error) {
	if len(name) > 15 {
		name = name[:15]
	}
	addr, err := d.putString(name)
	if err != nil {
		return Call{}, err
	}
	return Call{Nr: unix.SYS_PRCTL, Args: []uint64{unix.PR_SET_NAME, addr},
		Err: func(err error) error { return fmt.Errorf("set name %q: %w", name, err) }}, nil
}

// Self is what preflight compares each process with: ckpt's own status
// and namespaces, read once per checkpoint.
type Self struct {
	Status proc.Status
	Ns     *pb.NsIds
}

// SuspendsSeccomp reports whether ckpt may lift a tracee's seccomp
// filters while it works on it (PTRACE_O_SUSPEND_SECCOMP): with
// CAP_SYS_ADMIN, and not under seccomp itself.
func (s *Self) SuspendsSeccomp() bool {
	eff, err := strconv.ParseUint(s.Status["CapEff"], 16, 64)
	return err == nil && eff&(1<<unix.CAP_SYS_ADMIN) != 0 && s.Status["Seccomp"] == "0"
}

// ReadSelf reads ckpt's Self.
func ReadSelf() (*Self, error) {
	st, err := proc.ReadStatus(os.Getpid())
	if err != nil {
		return nil, err
	}
	ns, err := ReadNsIds(0)
	if err != nil {
		return nil, err
	}
	return &Self{Status: st, Ns: ns}, nil
}

// PreflightTask refuses, before anything is touched, process state that
// ckpt cannot restore and would otherwise silently drop or change:
// seccomp filters and a capability set other than the one its credentials
// give at restart.
// ns are pid's namespaces.
func PreflightTask(pid int, ns *pb.NsIds, self *Self) (filtered bool, err error) {
	st, err := proc.ReadStatus(pid)
	if err != nil {
		return false, err
	}
	if t := st["TracerPid"]; t != "" && t != "0" {
		comm, _ := os.ReadFile("/proc/" + t + "/comm")
		return false, fmt.Errorf("process %d is traced by process %s (%s), a debugger or strace: a process has one tracer at a time; detach that one first", pid, t, strings.TrimSpace(string(comm)))
	}
	switch v := st["Seccomp"]; {
	case v == "" || v == "0":
	case v == "2" && self.SuspendsSeccomp():
		// Filters: read after the freeze, restored before the release.
		filtered = true
	case v == "2":
		return false, fmt.Errorf("process %d runs under seccomp filters, which only a ckpt with CAP_SYS_ADMIN (not itself under seccomp) can read and keep out of its way: %w here; run ckpt as root", pid, ErrUnsupported)
	default:
		return false, fmt.Errorf("process %d runs in seccomp strict mode (%s), which allows no call ckpt could inject: %w", pid, v, ErrUnsupported)
	}
	uids, _ := st.Uints("Uid", 10)
	root := len(uids) == 4 && (uids[0] == 0 || uids[1] == 0 || uids[2] == 0)
	// A process in a user namespace below ckpt's (a tree restored by an
	// unprivileged ckpt restart) got the full bounding set a new user
	// namespace starts with, as it will again.
	bnd := self.Status["CapBnd"]
	if ns.User != self.Ns.User {
		if b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err == nil {
			if last, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && last < 63 {
				bnd = fmt.Sprintf("%016x", uint64(1)<<(last+1)-1)
			}
		}
	}
	if ns.User == self.Ns.User {
		return filtered, nil // the sets are restored (see caps.go)
	}
	for _, k := range []string{"CapPrm", "CapEff", "CapInh", "CapAmb", "CapBnd"} {
		want := "0000000000000000"
		if root && k != "CapInh" && k != "CapAmb" {
			want = self.Status[k]
		}
		if k == "CapBnd" {
			want = bnd
		}
		if st[k] != want {
			return false, fmt.Errorf("process %d has capabilities %s=%s, which a restart (giving %s) would not reproduce: %w yet", pid, k, st[k], want, ErrUnsupported)
		}
	}
	return filtered, nil
}
