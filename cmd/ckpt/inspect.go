package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/ptrace"
	"github.com/ckpt/ckpt/resource"
)

func inspectCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "inspect [--json] FILE",
		Short: "Print every record of an image as text or JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var in io.Reader = os.Stdin
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return fmt.Errorf("inspect: %w", err)
				}
				defer f.Close()
				in = f
			}
			if err := inspect(in, os.Stdout, asJSON); err != nil {
				return fmt.Errorf("inspect %s: %w", args[0], err)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON, one object per record")
	return c
}

type jsonRecord struct {
	Offset uint64          `json:"offset"`
	Type   string          `json:"type"`
	Length uint64          `json:"length"`
	Data   json.RawMessage `json:"data,omitempty"`
}

func inspect(in io.Reader, out io.Writer, asJSON bool) error {
	r, err := image.NewReader(in)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	emit := func(off uint64, t image.Type, length uint64, m proto.Message) error {
		rec := jsonRecord{Offset: off, Type: t.String(), Length: length}
		if m != nil {
			validUTF8(m.ProtoReflect())
			b, err := protojson.MarshalOptions{EmitUnpopulated: false}.Marshal(m)
			if err != nil {
				return err
			}
			rec.Data = b
		}
		return enc.Encode(rec)
	}
	h := r.Header
	if asJSON {
		if err := emit(16, image.TypeHeader, 0, h); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(out, "image format %d, %s, page size %d\n", h.FormatVersion, h.Arch, h.PageSize)
		if r.Version != image.FormatVersion {
			fmt.Fprintf(out, "  older than version %d: restart needs `ckpt convert` first\n", image.FormatVersion)
		}
		fmt.Fprintf(out, "  written by ckpt %s on %s at %s\n", h.ToolVersion, h.Hostname, time.Unix(0, h.TimeUnixNano).UTC().Format(time.RFC3339))
		fmt.Fprintf(out, "  kernel %s\n", h.Kernel)
		if h.Container {
			fmt.Fprintf(out, "  checkpoint of a container (pid %d inside is its init)\n", h.RootPid)
		} else {
			fmt.Fprintf(out, "  checkpoint of pid %d\n", h.RootPid)
		}
		if h.CheckpointId != 0 {
			fmt.Fprintf(out, "  checkpoint id %d\n", h.CheckpointId)
		}
		if h.SelfTid != 0 {
			fmt.Fprintf(out, "  self-checkpoint by thread %d\n", h.SelfTid)
		}
		if len(h.XstateLayout) > 0 {
			var fs []string
			for _, c := range h.XstateLayout {
				fs = append(fs, strconv.Itoa(int(c.Feature)))
			}
			fmt.Fprintf(out, "  CPU's XSAVE components %s; its kernel's vDSO has %d functions\n", strings.Join(fs, " "), len(h.VdsoSymbols))
		}
	}
	var mms []*pb.Mm
	pages := map[uint32]map[uint64]uint64{} // mm -> vma start -> pages
	var files []*pb.File
	stored := map[uint32]int64{} // deleted files' data, by file id
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		var m proto.Message
		switch rec.Type {
		case image.TypeFile:
			m = &pb.File{}
		case image.TypeMm:
			m = &pb.Mm{}
		case image.TypeProcess:
			m = &pb.Process{}
		case image.TypePageMap:
			m = &pb.PageMap{}
		case image.TypeIPC:
			m = &pb.IpcNamespace{}
		case image.TypeNetNamespace:
			m = &pb.NetNamespace{}
		case image.TypeMountNs:
			m = &pb.MountNamespace{}
		case image.TypeMountFile:
			m = &pb.MountFile{}
		case image.TypeFileData:
			m = &pb.FileData{}
		case image.TypeNamespace:
			m = &pb.Namespace{}
		case image.TypeLeaks:
			m = &pb.Leaks{}
		}
		if m != nil {
			if err := image.Unmarshal(rec, m); err != nil {
				return err
			}
		}
		if asJSON {
			if err := emit(rec.Offset, rec.Type, rec.Len, m); err != nil {
				return err
			}
		}
		switch v := m.(type) {
		case *pb.File:
			files = append(files, v)
		case *pb.FileData:
			stored[v.FileId] += int64(len(v.Data))
		case *pb.Mm:
			mms = append(mms, v)
		case *pb.Process:
			if !asJSON {
				printProcess(out, v)
			}
		case *pb.IpcNamespace:
			if !asJSON {
				printIPC(out, v)
			}
		case *pb.Namespace:
			if !asJSON {
				fmt.Fprintf(out, "namespace %s %d", strings.ToLower(v.Kind.String()), v.Id)
				switch v.Kind {
				case pb.Namespace_UTS:
					fmt.Fprintf(out, ": host name %q, domain name %q", v.Hostname, v.Domainname)
				case pb.Namespace_TIME:
					fmt.Fprintf(out, ": monotonic offset %v, boot time offset %v", time.Duration(v.MonotonicOffsetNs), time.Duration(v.BoottimeOffsetNs))
				}
				fmt.Fprintln(out)
			}
		case *pb.Leaks:
			if !asJSON {
				for _, l := range v.Leaks {
					fmt.Fprintf(out, "leak: %s\n", describeLeak(l))
				}
			}
		case *pb.NetNamespace:
			if !asJSON {
				fmt.Fprintln(out, strings.Join(resource.DescribeNetNamespace(v), "\n"))
			}
		case *pb.MountNamespace:
			if !asJSON {
				for _, mnt := range v.Mounts {
					fmt.Fprintf(out, "mount %d: %s %s %s (%s) %s\n", mnt.Id, mnt.MountPoint, mnt.FsType, mnt.Source, strings.ToLower(mnt.Kind.String()), mnt.Options)
				}
			}
		case *pb.PageMap:
			for _, mm := range mms {
				if mm.Id != v.MmId {
					continue
				}
				if pages[mm.Id] == nil {
					pages[mm.Id] = map[uint64]uint64{}
				}
				for _, run := range v.Runs {
					if vma := resource.FindVma(mm, run.Addr, run.Npages*image.PageSize); vma != nil {
						pages[mm.Id][vma.Start] += run.Npages
					}
				}
			}
		}
	}
	if asJSON {
		return emit(0, image.TypeTail, 0, r.Tail)
	}
	for _, f := range files {
		fmt.Fprintf(out, "file %d: %s %s flags %#o pos %d\n", f.Id, strings.ToLower(f.Kind.String()), f.Path, f.Flags, f.Pos)
		if s := f.Socket; s != nil {
			fmt.Fprintf(out, "  %s\n", describeSocket(s))
		}
		if f.Seals != nil && *f.Seals != 0 {
			fmt.Fprintf(out, "  seals %#x\n", *f.Seals)
		}
		switch {
		case f.DeletedChunks:
			fmt.Fprintf(out, "  deleted file of %d bytes, %d bytes of data stored\n", f.DeletedSize, stored[f.Id])
		case f.DeletedData != nil:
			fmt.Fprintf(out, "  deleted file of %d bytes, stored\n", len(f.DeletedData))
		case f.Deleted:
			fmt.Fprintf(out, "  deleted file (its content is with an earlier file)\n")
		}
		for _, l := range f.Locks {
			fmt.Fprintf(out, "  lock: %s\n", resource.DescribeLock(l))
		}
	}
	for _, mm := range mms {
		fmt.Fprintf(out, "address space %d: brk %#x-%#x, stack %#x, exe file %d\n", mm.Id, mm.StartBrk, mm.Brk, mm.StartStack, mm.ExeFileId)
		var total uint64
		for _, v := range mm.Vmas {
			n := pages[mm.Id][v.Start]
			total += n
			kind := "private"
			if v.Shared {
				kind = "shared"
			}
			if v.Special != "" {
				kind = "kernel"
			}
			fmt.Fprintf(out, "  %012x-%012x %s %-7s %7d/%-7d pages  %s%s\n", v.Start, v.End, protString(v.Prot), kind, n, (v.End-v.Start)/image.PageSize, v.Name, vmaFlags(v))
		}
		fmt.Fprintf(out, "  %d pages stored (%d MiB)\n", total, total*image.PageSize>>20)
	}
	t := r.Tail
	fmt.Fprintf(out, "complete: %d records, %d pages, %d bytes, crc32c %08x\n", t.Records, t.Pages, t.Bytes, t.Crc32C)
	return nil
}

func protString(p uint32) string {
	b := []byte("---")
	if p&1 != 0 {
		b[0] = 'r'
	}
	if p&2 != 0 {
		b[1] = 'w'
	}
	if p&4 != 0 {
		b[2] = 'x'
	}
	return string(b)
}

func printProcess(out io.Writer, p *pb.Process) {
	fmt.Fprintf(out, "process %d (%s): parent %d, group %d, session %d\n", p.Pid, p.Comm, p.Ppid, p.Pgid, p.Sid)
	if c := p.Creds; c != nil {
		fmt.Fprintf(out, "  uid %d/%d/%d gid %d/%d/%d groups %v\n", c.Uid, c.Euid, c.Suid, c.Gid, c.Egid, c.Sgid, c.Groups)
	}
	cwd := p.Cwd
	if p.CwdDeleted {
		cwd += " (removed)"
	}
	fmt.Fprintf(out, "  cwd %s, root %s, umask %#o, personality %#x\n", cwd, p.Root, p.Umask, p.Personality)
	if a := processAttrs(p); a != "" {
		fmt.Fprintf(out, "  %s\n", a)
	}
	fds := append([]*pb.Fd(nil), p.Fds...)
	sort.Slice(fds, func(i, j int) bool { return fds[i].Fd < fds[j].Fd })
	for _, fd := range fds {
		ce := ""
		if fd.Cloexec {
			ce = " cloexec"
		}
		fmt.Fprintf(out, "  fd %d -> file %d%s\n", fd.Fd, fd.FileId, ce)
	}
	for _, a := range p.Sigactions {
		fmt.Fprintf(out, "  signal %d: handler %#x flags %#x mask %#x\n", a.Signo, a.Handler, a.Flags, a.Mask)
	}
	for _, it := range p.Itimers {
		fmt.Fprintf(out, "  itimer %d: value %v interval %v\n", it.Which, time.Duration(it.ValueNs), time.Duration(it.IntervalNs))
	}
	for _, l := range p.PosixLocks {
		fmt.Fprintf(out, "  %s through fd %d\n", resource.DescribeLock(l), l.Fd)
	}
	for _, pt := range p.PosixTimers {
		fmt.Fprintf(out, "  POSIX timer %d: clock %d, %s, value %v interval %v\n", pt.Id, pt.Clock, timerNotify(pt), time.Duration(pt.ValueNs), time.Duration(pt.IntervalNs))
	}
	if n := len(p.SharedPending); n > 0 {
		fmt.Fprintf(out, "  %d process-wide pending signals\n", n)
	}
	for _, th := range p.Threads {
		fmt.Fprintf(out, "  thread %d (%s)\n", th.Tid, th.Comm)
		if regs, err := resource.ThreadRegs(th); err == nil {
			fmt.Fprintf(out, "    rip %#x rsp %#x rax %#x orig_rax %d fs_base %#x\n", regs.Rip, regs.Rsp, regs.Rax, int64(regs.Orig_rax), regs.Fs_base)
		}
		fmt.Fprintf(out, "    xstate %d bytes, sigmask %#x, %d pending\n", len(th.Xstate), th.Sigmask, len(th.Pending))
		if th.AltstackSize != 0 {
			fmt.Fprintf(out, "    altstack %#x+%d\n", th.AltstackSp, th.AltstackSize)
		}
		fmt.Fprintf(out, "    rseq %#x+%d, robust list %#x, clear_child_tid %#x\n", th.RseqAddr, th.RseqLen, th.RobustList, th.ClearChildTid)
		if th.PdeathSignal != 0 {
			fmt.Fprintf(out, "    parent death signal %v\n", unix.Signal(th.PdeathSignal))
		}
		if rs := th.Restart; rs != nil {
			fmt.Fprintf(out, "    in syscall %d, restarts", rs.Nr)
			if rs.RemainingNs > 0 {
				fmt.Fprintf(out, " with %v left", time.Duration(rs.RemainingNs))
			}
			fmt.Fprintln(out)
		}
	}
}

// processAttrs names the process attributes that differ from a fresh
// process's (prctl state, no_new_privs, oom_score_adj), for display.
func processAttrs(p *pb.Process) string {
	var as []string
	if p.JobStop != 0 {
		as = append(as, "stopped by "+unix.SignalName(unix.Signal(p.JobStop)))
	}
	if n := len(p.Seccomp); n > 0 {
		as = append(as, fmt.Sprintf("%d seccomp filters", n))
	}
	switch p.Dumpable {
	case 1:
		as = append(as, "not dumpable")
	case 3:
		as = append(as, "dumpable by root only")
	}
	if p.ChildSubreaper {
		as = append(as, "child subreaper")
	}
	if p.ThpDisabled {
		as = append(as, "transparent huge pages disabled")
	}
	if p.NoNewPrivs {
		as = append(as, "no_new_privs")
	}
	if p.OomScoreAdj != nil && *p.OomScoreAdj != 0 {
		as = append(as, fmt.Sprintf("oom_score_adj %d", *p.OomScoreAdj))
	}
	if p.Securebits != 0 {
		as = append(as, fmt.Sprintf("securebits %#x", p.Securebits))
	}
	if p.XcompPerm&(1<<ptrace.FeatureTileData) != 0 {
		as = append(as, "AMX permitted")
	}
	return strings.Join(as, ", ")
}

func printIPC(out io.Writer, ns *pb.IpcNamespace) {
	if ns.Host {
		fmt.Fprintf(out, "SysV IPC of ckpt's own namespace %d: %d attached shared memory segments; message queues and semaphores not captured\n", ns.Ns, len(ns.Shm))
	} else {
		fmt.Fprintf(out, "SysV IPC namespace %d: %d shared memory segments, %d message queues, %d semaphore sets\n", ns.Ns, len(ns.Shm), len(ns.Msg), len(ns.Sem))
	}
	perm := func(p *pb.IpcPerm) string {
		if p == nil {
			return ""
		}
		return fmt.Sprintf("key %#08x mode %#o owner %d:%d creator %d:%d", uint32(p.Key), p.Mode, p.Uid, p.Gid, p.Cuid, p.Cgid)
	}
	for _, s := range ns.Shm {
		extra := ""
		if s.Dest {
			extra = ", removed (SHM_DEST)"
		}
		fmt.Fprintf(out, "  shm %d: %d bytes, %s, %d attached%s\n", s.Id, s.Size, perm(s.Perm), s.Nattch, extra)
	}
	for _, q := range ns.Msg {
		var n int
		for _, m := range q.Messages {
			n += len(m.Text)
		}
		fmt.Fprintf(out, "  msg %d: %d messages (%d bytes) of %d, %s\n", q.Id, len(q.Messages), n, q.Qbytes, perm(q.Perm))
	}
	for _, s := range ns.Sem {
		fmt.Fprintf(out, "  sem %d: values %v, %s\n", s.Id, s.Values, perm(s.Perm))
	}
	for _, u := range ns.Undo {
		fmt.Fprintf(out, "  undo list of process %d:", u.Pid)
		for _, a := range u.Adj {
			fmt.Fprintf(out, " sem %d.%d %+d", a.Semid, a.Num, a.Adj)
		}
		fmt.Fprintln(out)
	}
	for _, c := range ns.Sysctls {
		fmt.Fprintf(out, "  kernel.%s = %s\n", c.Name, c.Value)
	}
}

// describeSocket says what a socket record holds.
func describeSocket(s *pb.Socket) string {
	if in := s.Inet; in != nil {
		addr := func(a []byte, port uint32) string {
			ip, ok := netip.AddrFromSlice(a)
			if !ok {
				return "nothing"
			}
			return netip.AddrPortFrom(ip, uint16(port)).String()
		}
		d := map[uint32]string{6: "TCP", 17: "UDP"}[in.Protocol] + " socket"
		switch {
		case in.Listening:
			d += fmt.Sprintf(" listening on %s (backlog %d)", addr(in.Addr, in.Port), in.Backlog)
		case len(in.Addr) != 0:
			d += " bound to " + addr(in.Addr, in.Port)
		default:
			d += ", not bound"
		}
		if len(in.PeerAddr) != 0 {
			d += ", connected to " + addr(in.PeerAddr, in.PeerPort)
		}
		if c := in.Tcp; c != nil {
			d += fmt.Sprintf(", %d bytes to send (%d not sent yet), %d received and unread", len(c.SendQueue), c.SendUnsent, len(c.RecvQueue))
		}
		return d
	}
	kind := map[uint32]string{1: "stream", 2: "datagram", 5: "seqpacket"}[s.Type]
	d := fmt.Sprintf("unix %s socket", kind)
	if len(s.Name) > 0 {
		name := string(s.Name)
		if s.Name[0] == 0 {
			name = "@" + name[1:]
		}
		d += fmt.Sprintf(" bound to %q", name)
	}
	if s.Listening {
		d += fmt.Sprintf(", listening (backlog %d)", s.Backlog)
	}
	if s.PeerIno != 0 {
		d += fmt.Sprintf(", paired with socket:[%d]", s.PeerIno)
		if s.External {
			d += " (held outside the image: restart gives its own descriptor)"
		}
	}
	n := 0
	for _, m := range s.Queue {
		n += len(m)
	}
	if len(s.Queue) > 0 {
		d += fmt.Sprintf(", %d bytes waiting", n)
		if s.Type != 1 {
			d += fmt.Sprintf(" in %d messages", len(s.Queue))
		}
	}
	if sh := []string{"", "reading shut down", "writing shut down", "shut down"}[s.Shutdown&3]; sh != "" {
		d += ", " + sh
	}
	return d
}

// timerNotify says how a POSIX timer notifies (sigev_notify).
func timerNotify(pt *pb.PosixTimer) string {
	const threadID = 4 // SIGEV_THREAD_ID
	switch {
	case pt.Notify == 1: // SIGEV_NONE
		return "no signal"
	case pt.Notify&threadID != 0:
		return fmt.Sprintf("signal %d (value %#x) to thread %d", pt.Signo, pt.Sigval, pt.Tid)
	default:
		return fmt.Sprintf("signal %d (value %#x)", pt.Signo, pt.Sigval)
	}
}

// describeLeak says what a process shared with one outside.
func describeLeak(l *pb.Leak) string {
	if l.Pid != 0 {
		return fmt.Sprintf("process %d shared %s with %d (%s) outside", l.Pid, l.What, l.OutsidePid, l.OutsideComm)
	}
	return fmt.Sprintf("%d (%s) outside was in the %s", l.OutsidePid, l.OutsideComm, l.What)
}

// validUTF8 replaces, in m and the messages it holds, the bytes of string
// fields that are not UTF-8 with U+FFFD: an image keeps names as the
// kernel gave them, JSON can only carry UTF-8, and protojson refuses the
// whole record otherwise.
func validUTF8(m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.StringKind:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				if s := l.Get(i).String(); !utf8.ValidString(s) {
					l.Set(i, protoreflect.ValueOfString(strings.ToValidUTF8(s, "\uFFFD")))
				}
			}
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				validUTF8(l.Get(i).Message())
			}
		case fd.IsMap():
			// The image's messages have no maps.
		case fd.Message() != nil:
			validUTF8(v.Message())
		case fd.Kind() == protoreflect.StringKind:
			if s := v.String(); !utf8.ValidString(s) {
				m.Set(fd, protoreflect.ValueOfString(strings.ToValidUTF8(s, "\uFFFD")))
			}
		}
		return true
	})
}

// vmaFlags names an area's madvise advice, MAP_NORESERVE and mlock, for
// display.
func vmaFlags(v *pb.Vma) string {
	var fs []string
	for _, a := range v.Advice {
		fs = append(fs, resource.AdviceName(a))
	}
	if v.Noreserve {
		fs = append(fs, "noreserve")
	}
	if v.Locked {
		fs = append(fs, "locked")
	}
	if len(fs) == 0 {
		return ""
	}
	return " [" + strings.Join(fs, ", ") + "]"
}
