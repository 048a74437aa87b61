package resource

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

const pageSize = image.PageSize

// specialNames are the kernel-provided areas moved into place at restart.
var specialNames = map[string]bool{"[vdso]": true, "[vvar]": true, "[vvar_vclock]": true}

// PreflightMm checks, without touching the process, that every memory area
// is of a kind ckpt can checkpoint, and returns the areas with their flags
// (smaps), for DumpMm. smaps walks the page tables of every area (17 ms for
// 1 GiB here): done now, that is not frozen time.
func PreflightMm(pid int) ([]proc.Vma, error) {
	vmas, err := proc.ReadSmaps(pid)
	if err != nil {
		return nil, fmt.Errorf("read memory map of %d: %w", pid, err)
	}
	return vmas, checkVmas(pid, vmas)
}

// adviceFlags are the VmFlags of smaps that madvise sets, with the advice
// that sets each and its name for display: restart gives an area its
// advice again (a secure heap's wipe-on-fork, a JVM's huge pages, a
// virtual machine's memory offered to KSM). A hint is advice a kernel
// without the feature refuses (EINVAL: no transparent huge pages, no
// KSM); restart leaves it out there.
var adviceFlags = []struct {
	flag   string
	advice uint32
	name   string
	hint   bool
}{
	{"hg", unix.MADV_HUGEPAGE, "hugepage", true},
	{"nh", unix.MADV_NOHUGEPAGE, "nohugepage", true},
	{"dd", unix.MADV_DONTDUMP, "dontdump", false},
	{"dc", unix.MADV_DONTFORK, "dontfork", false},
	{"wf", unix.MADV_WIPEONFORK, "wipeonfork", false},
	{"mg", unix.MADV_MERGEABLE, "mergeable", true},
}

// adviceOf finds advice a in adviceFlags; ok is false for advice no image
// may hold.
func adviceOf(a uint32) (name string, hint, ok bool) {
	for _, f := range adviceFlags {
		if f.advice == a {
			return f.name, f.hint, true
		}
	}
	return "", false, false
}

// AdviceName names an madvise advice an image may hold, for display.
func AdviceName(a uint32) string {
	if name, _, ok := adviceOf(a); ok {
		return name
	}
	return fmt.Sprintf("advice %d", a)
}

// vmaAdvice lists the madvise advice area v carries.
func vmaAdvice(v *proc.Vma) []uint32 {
	var out []uint32
	for _, a := range adviceFlags {
		if v.HasFlag(a.flag) {
			out = append(out, a.advice)
		}
	}
	return out
}

// flagsFrom gives each area of vmas (read from maps, which shows no flags)
// the flags of the same area in pre (smaps, read before the freeze), and
// reports whether every area was found there. An area is the same if it
// has the same bounds and attributes, or, for one that grows down, the
// same end: a stack may have grown between the two reads.
func flagsFrom(vmas, pre []proc.Vma) bool {
	byEnd := make(map[uint64]*proc.Vma, len(pre))
	for i := range pre {
		byEnd[pre[i].End] = &pre[i]
	}
	for i := range vmas {
		v := &vmas[i]
		p := byEnd[v.End]
		if p == nil || p.Perms != v.Perms || p.Offset != v.Offset || p.Inode != v.Inode ||
			p.Major != v.Major || p.Minor != v.Minor || p.Name != v.Name ||
			p.Start != v.Start && !(p.HasFlag("gd") && v.Start < p.Start) {
			return false
		}
		v.VmFlags = p.VmFlags
	}
	return true
}

func checkVmas(pid int, vmas []proc.Vma) error {
	for _, v := range vmas {
		if err := checkVma(pid, &v); err != nil {
			return err
		}
	}
	return nil
}

func checkVma(pid int, v *proc.Vma) error {
	switch {
	case v.Name == "[vsyscall]" || specialNames[v.Name]:
		return nil
	case v.Inode != 0 && IsShmemName(v.Name):
		return nil
	case isSysvShm(v):
		if !v.Shared() {
			return fmt.Errorf("process %d maps SysV shared memory %s privately at %#x-%#x: %w", pid, v.Name, v.Start, v.End, ErrUnsupported)
		}
		return nil
	case v.Inode == 0:
		if strings.HasPrefix(v.Name, "[") && v.Name != "[heap]" && v.Name != "[stack]" && !strings.HasPrefix(v.Name, "[anon:") {
			return fmt.Errorf("process %d has the kernel area %s at %#x-%#x: %w yet", pid, v.Name, v.Start, v.End, ErrUnsupported)
		}
		return nil
	case !strings.HasPrefix(v.Name, "/"):
		return fmt.Errorf("process %d maps %q at %#x-%#x: %w yet", pid, v.Name, v.Start, v.End, ErrUnsupported)
	case strings.HasSuffix(v.Name, " (deleted)"):
		// Kept in the image, as a deleted file held open is.
		var st unix.Stat_t
		if err := unix.Stat(mapFilesPath(pid, v.Start, v.End), &st); err != nil {
			return fmt.Errorf("process %d maps the deleted file %s at %#x-%#x: %w", pid, strings.TrimSuffix(v.Name, " (deleted)"), v.Start, v.End, err)
		}
	}
	return nil
}

// DumpMm describes the address space. brk is the exact program break, read
// by the caller with an injected brk(0). Shared memory objects go into
// files as SHMEM records. pre, if not nil, is what PreflightMm read before
// the freeze: then only maps is read now, and the one flag taken from
// smaps, grows-down, comes from pre (see flagsFrom); should an area differ
// from pre, smaps is read after all.
func DumpMm(pid int, brk uint64, files *FileSet, pre []proc.Vma) (*pb.Mm, error) {
	var vmas []proc.Vma
	var err error
	if pre != nil {
		if vmas, err = proc.ReadMaps(pid); err == nil && !flagsFrom(vmas, pre) {
			vmas = nil
		}
	}
	if vmas == nil && err == nil {
		vmas, err = proc.ReadSmaps(pid)
	}
	if err != nil {
		return nil, fmt.Errorf("read memory map of %d: %w", pid, err)
	}
	if err := checkVmas(pid, vmas); err != nil {
		return nil, err
	}
	st, err := proc.ReadStat(pid)
	if err != nil {
		return nil, err
	}
	auxv, err := proc.ReadFile(proc.Path(pid, "auxv"))
	if err != nil {
		return nil, err
	}
	filter, err := readProcNumber(pid, "coredump_filter", 16)
	if err != nil {
		return nil, err
	}
	exe, err := os.Readlink(proc.Path(pid, "exe"))
	if err != nil {
		return nil, err
	}
	// The rest adds to files, which collect may fill for two processes
	// at once.
	files.mu.Lock()
	defer files.mu.Unlock()
	var exeID uint32
	if strings.HasSuffix(exe, " (deleted)") {
		exeID, err = files.deletedMapped(pid, proc.Path(pid, "exe"), exe, false)
	} else {
		exeID, err = files.mappedFile(exe)
	}
	if err != nil {
		return nil, err
	}
	mm := &pb.Mm{
		Id:        1,
		StartCode: st.StartCode, EndCode: st.EndCode, StartData: st.StartData, EndData: st.EndData,
		StartBrk: st.StartBrk, Brk: brk, StartStack: st.StartStack,
		ArgStart: st.ArgStart, ArgEnd: st.ArgEnd, EnvStart: st.EnvStart, EnvEnd: st.EnvEnd,
		Auxv: auxv, ExeFileId: exeID, CoredumpFilter: proto.Uint32(uint32(filter)),
	}
	for _, v := range vmas {
		if v.Name == "[vsyscall]" {
			continue
		}
		pv := &pb.Vma{Start: v.Start, End: v.End, Shared: v.Shared(), Growsdown: v.HasFlag("gd"), Name: v.Name, Pgoff: v.Offset / pageSize,
			Advice: vmaAdvice(&v), Noreserve: v.HasFlag("nr"), Locked: v.HasFlag("lo")}
		if v.Read() {
			pv.Prot |= unix.PROT_READ
		}
		if v.Write() {
			pv.Prot |= unix.PROT_WRITE
		}
		if v.Exec() {
			pv.Prot |= unix.PROT_EXEC
		}
		switch {
		case specialNames[v.Name]:
			pv.Special, pv.Advice, pv.Locked = v.Name, nil, false // the kernel's own flags
		case isSysvShm(&v):
			// The inode number of a SysV segment's file is its id.
			pv.SysvShm, pv.SysvShmid = true, int32(v.Inode)
		case IsShmemName(v.Name):
			if !v.Shared() {
				return nil, fmt.Errorf("process %d maps %s privately at %#x-%#x: %w yet", pid, v.Name, v.Start, v.End, ErrUnsupported)
			}
			id, err := files.shmemObject(mapFilesPath(pid, v.Start, v.End), v.Name)
			if err != nil {
				return nil, err
			}
			pv.FileId = id
		case v.Inode != 0 && strings.HasSuffix(v.Name, " (deleted)"):
			id, err := files.deletedMapped(pid, mapFilesPath(pid, v.Start, v.End), v.Name, v.Shared() && v.Write())
			if err != nil {
				return nil, err
			}
			pv.FileId = id
		case v.Inode != 0:
			id, err := files.mappedFile(v.Name)
			if err != nil {
				return nil, err
			}
			if v.Shared() && v.Write() {
				files.Files[id-1].Flags = unix.O_RDWR
			}
			pv.FileId = id
		}
		mm.Vmas = append(mm.Vmas, pv)
	}
	return mm, nil
}

// DumpPages writes the pages of every private area that hold data of their
// own: for anonymous areas the present or swapped pages (never-touched ones
// and the shared zero page are left out), for file areas only the pages that
// became anonymous (clean pages come back from the file). The pages go
// through pw, which may still be writing them when DumpPages returns.
func DumpPages(t *Target, mm *pb.Mm, pw *PageWriter) error {
	// Opened without the os package's poller set-up (~10 µs a file here,
	// per process of a tree).
	fd, err := unix.Open(proc.Path(t.Pid, "pagemap"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open pagemap of %d: %w", t.Pid, err)
	}
	pm := os.NewFile(uintptr(fd), "pagemap")
	defer pm.Close()
	d := &pageDumper{t: t, pw: pw, mmID: mm.Id}
	defer func() {
		if d.mem != nil {
			d.mem.Close()
		}
	}()
	return d.dump(proc.NewPageScanner(pm), mm)
}

// dump reads and hands over every private area's pages.
func (d *pageDumper) dump(scan *proc.PageScanner, mm *pb.Mm) error {
	for _, v := range mm.Vmas {
		if v.Special != "" || v.Shared {
			continue
		}
		// Pages of anonymous memory that hold only zeros are left out: they
		// come back as zeros. (In a file mapping, zeros may hide a file page
		// that is not zero, so they stay.)
		d.readable, d.skipZero = v.Prot&unix.PROT_READ != 0, v.FileId == 0
		err := scan.DataPages(v.Start, v.End, func(start, end uint64) error {
			return d.add(start, end-start)
		})
		if err != nil {
			return fmt.Errorf("dump vma %#x-%#x (%s): %w", v.Start, v.End, v.Name, err)
		}
	}
	// One record for the areas that fit one buffer, not one per area: a
	// small process has a few pages in each of a dozen areas, and a
	// record each cost a hand-over to the writer and up to a page of
	// padding (a tiny image shrank by a quarter).
	if err := d.flush(false); err != nil {
		return fmt.Errorf("dump pages of process %d: %w", d.t.Pid, err)
	}
	return nil
}

// pageDumper gathers the page runs of an address space into a buffer and
// writes them as one PAGES record per buffer-full, without the zero pages
// of anonymous areas.
type pageDumper struct {
	t                  *Target
	mem                *os.File
	pw                 *PageWriter
	mmID               uint32
	buf                []byte // nil until the first run of a buffer-full
	used               int
	pieces             []piece // in buffer order
	readable, skipZero bool
	// remote are the runs not read yet, which go to buf[unread:used]: a
	// small process has a few pages in each of a dozen areas, read with
	// one process_vm_readv instead of one each.
	remote []unix.RemoteIovec
	unread int
}

// piece is one run of present pages read into the buffer, of one area.
type piece struct {
	addr, n  uint64
	skipZero bool // anonymous memory: its zero pages are left out
}

var zeroPage [pageSize]byte

// iovMax is the most iovecs one process_vm_readv takes (UIO_MAXIOV).
const iovMax = 1024

// add reads [addr, addr+n) into the buffer, flushing it when full.
func (d *pageDumper) add(addr, n uint64) error {
	for n > 0 {
		if d.buf == nil {
			var err error
			if d.buf, err = d.pw.buffer(); err != nil {
				return err
			}
		}
		c := min(n, uint64(len(d.buf)-d.used))
		if d.readable {
			d.remote = append(d.remote, unix.RemoteIovec{Base: uintptr(addr), Len: int(c)})
		} else if err := d.readMem(addr, c); err != nil {
			return err
		}
		d.pieces = append(d.pieces, piece{addr, c, d.skipZero})
		d.used += int(c)
		addr, n = addr+c, n-c
		if d.used == len(d.buf) {
			if err := d.flush(true); err != nil {
				return err
			}
		} else if len(d.remote) == iovMax {
			if err := d.readRemote(); err != nil {
				return err
			}
		}
	}
	return nil
}

// readMem reads [addr, addr+n) through /proc/PID/mem, which reads
// PROT_NONE memory too (process_vm_readv honours protections); it is
// opened when first needed: few processes hold data there.
func (d *pageDumper) readMem(addr, n uint64) error {
	if err := d.readRemote(); err != nil { // the runs before it, in order
		return err
	}
	if d.mem == nil {
		fd, err := unix.Open(proc.Path(d.t.Pid, "mem"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open memory of %d: %w", d.t.Pid, err)
		}
		d.mem = os.NewFile(uintptr(fd), "mem")
	}
	if _, err := d.mem.ReadAt(d.buf[d.used:d.used+int(n)], int64(addr)); err != nil {
		return fmt.Errorf("read pages %#x-%#x: %w", addr, addr+n, err)
	}
	d.unread = d.used + int(n)
	return nil
}

// readRemote reads the runs gathered in remote with one process_vm_readv.
func (d *pageDumper) readRemote() error {
	if len(d.remote) == 0 {
		return nil
	}
	b := d.buf[d.unread:d.used]
	local := []unix.Iovec{{Base: &b[0], Len: uint64(len(b))}}
	got, err := unix.ProcessVMReadv(d.t.Pid, local, d.remote, 0)
	if err != nil || got != len(b) {
		// The first run not read whole is the one that failed.
		for _, r := range d.remote {
			if got < r.Len {
				if err == nil {
					err = fmt.Errorf("short read, %d bytes of %d", got, r.Len)
				}
				return fmt.Errorf("read pages %#x-%#x of %d: %w", r.Base, r.Base+uintptr(r.Len), d.t.Pid, err)
			}
			got -= r.Len
		}
		if err == nil {
			err = fmt.Errorf("read more than the %d bytes asked for", len(b))
		}
		return fmt.Errorf("read pages of %d: %w", d.t.Pid, err)
	}
	d.remote, d.unread = d.remote[:0], d.used
	return nil
}

// flush writes the buffered pages, compacting away zero pages first. more
// says that the buffer filled up, so more pages are likely to follow.
func (d *pageDumper) flush(more bool) error {
	if err := d.readRemote(); err != nil {
		return err
	}
	var runs []*pb.PageRun
	off, k := 0, 0
	for _, pc := range d.pieces {
		// A run never spans two pieces: two areas may be adjacent, and a
		// restorer checks that each run lies within one area.
		joinable := false
		for p := uint64(0); p < pc.n; p += pageSize {
			page := d.buf[off+int(p) : off+int(p)+pageSize]
			if pc.skipZero && bytes.Equal(page, zeroPage[:]) {
				joinable = false
				continue
			}
			addr := pc.addr + p
			if n := len(runs); joinable && runs[n-1].Addr+runs[n-1].Npages*pageSize == addr {
				runs[n-1].Npages++
			} else {
				runs = append(runs, &pb.PageRun{Addr: addr, Npages: 1})
			}
			joinable = true
			if k != off+int(p) {
				copy(d.buf[k:k+pageSize], page)
			}
			k += pageSize
		}
		off += int(pc.n)
	}
	d.pieces, d.used, d.unread = d.pieces[:0], 0, 0
	if d.buf == nil {
		return nil
	}
	buf := d.buf
	d.buf = nil
	var sum uint32
	if len(runs) > 0 {
		sum = image.Checksum(buf[:k])
	}
	return d.pw.submit(&pb.PageMap{MmId: d.mmID, Runs: runs}, buf, k, sum, more)
}

// PageWriter writes PAGES records on a goroutine of its own, so that
// reading and checksumming the next buffer-full from a target
// (process_vm_readv, a copy) overlaps with writing the last one: with two
// buffers on two cores, the memory phase costs about what the writes alone
// cost. The writer is the slower side (the image's pages are new page
// cache), so the checksum is computed on the reader's. The goroutine starts
// with the first buffer that filled up: until then, the pages of small
// processes are written by the caller, which spares each a hand-over to
// another thread, a wakeup often of an idle vCPU (a tiny checkpoint's
// memory phase went from 0.83 to 0.56 ms, medians).
// One PageWriter serves every process of a checkpoint: its two 4 MiB
// buffers are allocated once (per process, allocating and faulting them in
// cost ~5 ms, more than a small process's pages). While it is open, the
// image writer is its alone.
type PageWriter struct {
	w      *image.Writer
	jobs   chan pageJob // nil until the goroutine starts
	closed bool
	free   chan []byte
	done   chan error
	err    error // the writer's error, once done has delivered it
	// failed is closed by the writer goroutine on its first error, so
	// that the reader stops instead of reading the rest for nothing.
	failed chan struct{}
	// Stop, if set, is asked before each buffer-full is read; its error
	// ends the dump (the checkpoint's interruption).
	Stop func() error
}

type pageJob struct {
	pm  *pb.PageMap // nil: buf holds only zero pages, nothing to write
	buf []byte
	n   int
	sum uint32 // image.Checksum(buf[:n])
}

// NewPageWriter returns a PageWriter on w; Close must follow.
func NewPageWriter(w *image.Writer) *PageWriter {
	const size = 4 << 20
	pw := &PageWriter{w: w, free: make(chan []byte, 2), done: make(chan error, 1), failed: make(chan struct{})}
	pw.free <- make([]byte, size)
	pw.free <- make([]byte, size)
	return pw
}

func (pw *PageWriter) run(jobs <-chan pageJob) {
	var err error
	for j := range jobs {
		if err == nil && j.pm != nil {
			err = pw.w.PageData(j.pm, j.buf[:j.n], j.sum)
			if err != nil {
				close(pw.failed)
			}
		}
		pw.free <- j.buf
	}
	pw.done <- err
}

// buffer waits for a buffer the writer is done with, or for its failure.
func (pw *PageWriter) buffer() ([]byte, error) {
	if pw.Stop != nil {
		if err := pw.Stop(); err != nil {
			return nil, err
		}
	}
	select {
	case b := <-pw.free:
		return b, nil
	case <-pw.failed:
		return nil, pw.Close()
	}
}

// submit hands over buf, whose first n bytes are the pages of pm's runs,
// with their checksum; more says that more pages are likely to follow.
func (pw *PageWriter) submit(pm *pb.PageMap, buf []byte, n int, sum uint32, more bool) error {
	if pw.closed {
		return errors.New("page writer used after Close")
	}
	if pw.err != nil { // an earlier write of the caller's own failed
		return pw.err
	}
	if len(pm.Runs) == 0 {
		pm = nil
	}
	if pw.jobs == nil && !more {
		var err error
		if pm != nil {
			err = pw.w.PageData(pm, buf[:n], sum)
		}
		pw.free <- buf
		if err != nil {
			pw.err = err
			close(pw.failed)
		}
		return err
	}
	if pw.jobs == nil {
		pw.jobs = make(chan pageJob, 1)
		// The channel is passed, not read from pw: Close clears pw.jobs,
		// possibly before this goroutine first runs.
		go pw.run(pw.jobs)
	}
	select {
	case pw.jobs <- pageJob{pm, buf, n, sum}:
		return nil
	case <-pw.failed:
		return pw.Close()
	}
}

// Close waits until everything submitted is written and returns the first
// write error. The image writer is the caller's again afterwards.
func (pw *PageWriter) Close() error {
	pw.closed = true
	if pw.jobs != nil {
		close(pw.jobs)
		pw.jobs = nil
		pw.err = <-pw.done
	}
	return pw.err
}

// ValidateMm checks an image address space before anything is built.
func ValidateMm(mm *pb.Mm) error {
	var prev uint64
	for _, v := range mm.Vmas {
		if v.Start%pageSize != 0 || v.End%pageSize != 0 || v.End <= v.Start || v.Start < prev || v.End > 1<<47 {
			return fmt.Errorf("image damaged: vma %#x-%#x", v.Start, v.End)
		}
		if v.Prot&^uint32(unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC) != 0 {
			return fmt.Errorf("image damaged: vma %#x-%#x protection %#x", v.Start, v.End, v.Prot)
		}
		for _, a := range v.Advice {
			if _, _, ok := adviceOf(a); !ok {
				return fmt.Errorf("image damaged: vma %#x-%#x advice %d", v.Start, v.End, a)
			}
		}
		prev = v.End
	}
	return nil
}

// FindVma returns the area of mm holding [addr, addr+n), or nil.
func FindVma(mm *pb.Mm, addr, n uint64) *pb.Vma {
	i := sort.Search(len(mm.Vmas), func(i int) bool { return mm.Vmas[i].End > addr })
	if i < len(mm.Vmas) && mm.Vmas[i].Start <= addr && addr+n <= mm.Vmas[i].End && addr+n > addr {
		return mm.Vmas[i]
	}
	return nil
}

// MoveSpecials moves the stub's vdso and vvar areas to where the image had
// them. The restoring kernel's own vdso is used, so images move between
// machines that run the same kernel; a different layout is refused.
// tmp is a free range large enough to hold all of them at once.
func MoveSpecials(t *Target, mm *pb.Mm, have []proc.Vma, tmp uint64) error {
	want := map[string]*pb.Vma{}
	for _, v := range mm.Vmas {
		if v.Special != "" {
			if !specialNames[v.Special] {
				return fmt.Errorf("image damaged: special area %q", v.Special)
			}
			want[v.Special] = v
		}
	}
	type move struct{ from, size, to uint64 }
	var moves []move
	for _, h := range have {
		if !specialNames[h.Name] {
			continue
		}
		w := want[h.Name]
		if w == nil || w.End-w.Start != h.End-h.Start {
			return fmt.Errorf("the vdso layout differs from the image's (%s); restart on a machine with the same kernel as the checkpoint", h.Name)
		}
		moves = append(moves, move{h.Start, h.End - h.Start, w.Start})
		delete(want, h.Name)
	}
	for name := range want {
		return fmt.Errorf("the image has %s but this kernel does not provide it; restart on the same kernel as the checkpoint", name)
	}
	// Two steps, through tmp, so that no move lands on an area not yet
	// moved; one batch.
	var calls []Call
	at := tmp
	for _, m := range moves {
		calls = append(calls, Call{Nr: unix.SYS_MREMAP, Args: []uint64{m.from, m.size, m.size, unix.MREMAP_MAYMOVE | unix.MREMAP_FIXED, at},
			Err: func(err error) error { return fmt.Errorf("move vdso area %#x: %w", m.from, err) }})
		at += m.size
	}
	at = tmp
	for _, m := range moves {
		calls = append(calls, Call{Nr: unix.SYS_MREMAP, Args: []uint64{at, m.size, m.size, unix.MREMAP_MAYMOVE | unix.MREMAP_FIXED, m.to},
			Err: func(err error) error { return fmt.Errorf("move vdso area to %#x: %w", m.to, err) }})
		at += m.size
	}
	_, err := t.Batch(calls)
	return err
}

// MapVmas creates every non-special area of mm in the stub, writable so
// that pages can be filled; FinishMm sets the final protections. Each
// mapped file is pulled into the stub once, however many areas map it; the
// mmaps and the closes of those descriptors run as one batch (SysV
// segments, attached on their own, split it).
func MapVmas(t *Target, mm *pb.Mm, files *OpenFiles, pl *FdPuller) error {
	fds, open, err := pullMapped(mm, files, pl)
	if err != nil {
		return err
	}
	var calls []Call
	run := func(last bool) error {
		if last {
			// The descriptors go with the last mappings, in the same batch.
			for _, fd := range open {
				calls = append(calls, Call{Nr: unix.SYS_CLOSE, Args: []uint64{fd},
					Err: func(err error) error { return fmt.Errorf("close mapped file in the stub: %w", err) }})
			}
		}
		_, err := t.Batch(calls)
		calls = calls[:0]
		return err
	}
	err = func() error {
		for i := 0; i < len(mm.Vmas); i++ {
			v := mm.Vmas[i]
			if v.Special != "" {
				continue
			}
			if v.SysvShm {
				if err := run(false); err != nil {
					return err
				}
				group := shmGroup(mm.Vmas, i)
				if err := attachShm(t, group); err != nil {
					return err
				}
				i += len(group) - 1
				continue
			}
			length := v.End - v.Start
			prot := uint64(v.Prot)
			flags := uint64(unix.MAP_FIXED)
			fd := ^uint64(0)
			if v.Shared {
				flags |= unix.MAP_SHARED
			} else {
				flags |= unix.MAP_PRIVATE
				prot |= unix.PROT_READ | unix.PROT_WRITE
			}
			if v.Growsdown {
				flags |= unix.MAP_GROWSDOWN
			}
			if v.Noreserve {
				flags |= unix.MAP_NORESERVE
			}
			if v.FileId == 0 {
				flags |= unix.MAP_ANONYMOUS
			} else {
				fd = fds[v.FileId]
			}
			calls = append(calls, Call{Nr: unix.SYS_MMAP, Args: []uint64{v.Start, length, prot, flags, fd, v.Pgoff * pageSize},
				Err: func(err error) error { return fmt.Errorf("restore vma %#x-%#x (%s): %w", v.Start, v.End, v.Name, err) }})
		}
		return run(true)
	}()
	if err != nil {
		// The batch stopped before its closes (the stub is about to be
		// killed, but leave nothing behind on principle).
		pl.CloseAll(open)
		return err
	}
	return restoreAdvice(t, mm)
}

// pullMapped copies into the stub, in one batch, a descriptor of each file
// mm maps (but SysV segments), after checking that none changed size since
// the checkpoint. It returns them by file id, and in the order pulled.
func pullMapped(mm *pb.Mm, files *OpenFiles, pl *FdPuller) (map[uint32]uint64, []uint64, error) {
	var ids []uint32
	var fs []*os.File
	seen := map[uint32]bool{}
	for _, v := range mm.Vmas {
		if v.Special != "" || v.SysvShm || v.FileId == 0 || seen[v.FileId] {
			continue
		}
		seen[v.FileId] = true
		f, rec, err := files.Get(v.FileId)
		if err != nil {
			return nil, nil, fmt.Errorf("vma %#x-%#x: %w", v.Start, v.End, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err == nil && st.Size != rec.Size {
			return nil, nil, fmt.Errorf("restore vma %#x-%#x: %s changed since the checkpoint (%d bytes, was %d); restore the original file", v.Start, v.End, rec.Path, st.Size, rec.Size)
		}
		ids = append(ids, v.FileId)
		fs = append(fs, f)
	}
	open, err := pl.PullAll(fs)
	if err != nil {
		return nil, nil, fmt.Errorf("map files: %w", err)
	}
	fds := make(map[uint32]uint64, len(ids))
	for i, id := range ids {
		fds[id] = open[i]
	}
	return fds, open, nil
}

// restoreAdvice gives each area its madvise advice again, before its pages
// are written (huge pages then take them). Hints a kernel refuses (EINVAL,
// see adviceFlags) are left out.
func restoreAdvice(t *Target, mm *pb.Mm) error {
	var calls []Call
	for _, v := range mm.Vmas {
		if v.Special != "" || v.SysvShm {
			continue
		}
		for _, a := range v.Advice { // checked by ValidateMm
			calls = append(calls, Call{Nr: unix.SYS_MADVISE, Args: []uint64{v.Start, v.End - v.Start, uint64(a)},
				Err: func(err error) error {
					return fmt.Errorf("restore advice %d of vma %#x-%#x (%s): %w", a, v.Start, v.End, v.Name, err)
				}})
		}
	}
	for len(calls) > 0 {
		res, err := t.Batch(calls)
		if err == nil {
			return nil
		}
		failed := calls[len(res)]
		if _, hint, _ := adviceOf(uint32(failed.Args[2])); !errors.Is(err, unix.EINVAL) || !hint {
			return err
		}
		calls = calls[len(res)+1:]
	}
	return nil
}

// PageRestorer fills stubs' memory on goroutines of their own: a big
// restart spends most of its time in process_vm_writev, in the page faults
// of fresh memory (the kernel clears each new page, and on this kind of VM
// the first touch of a page is what costs), while the caller reads and
// checksums the next buffer-full from the image, about a quarter of the
// work. Two writers fault in pages in parallel, on both cores, three
// buffers taking turns (1 GiB, A/B medians: 1.39 -> 0.83 s with the
// memory cold, 0.76 -> 0.70 s warm). Small records are written by the
// caller until a large one starts the goroutines (see inlineRestore). It
// serves every process of a restart; Close must follow.
type PageRestorer struct {
	jobs   chan restoreJob // nil until the goroutines start
	closed bool
	free   chan []byte
	done   chan error
	err    error
	failed chan struct{} // closed by a writer on the first error
	fail   sync.Once
}

// restoreWriters is how many goroutines write pages into stubs: one per
// core of the machines ckpt is measured on; each costs a 4 MiB buffer.
const restoreWriters = 2

type restoreJob struct {
	t    *Target
	buf  []byte    // the whole buffer, for reuse
	n    int       // bytes of buf to write
	segs []segment // where they go, in order
}

// segment is a stretch of a stub's memory that the next bytes of a
// buffer go to.
type segment struct {
	addr uint64
	n    int
}

// NewPageRestorer returns a PageRestorer; Close must follow.
func NewPageRestorer() *PageRestorer {
	pr := &PageRestorer{free: make(chan []byte, restoreWriters+1), done: make(chan error, restoreWriters), failed: make(chan struct{})}
	for range restoreWriters + 1 {
		pr.free <- nil // allocated on first use, as large as needed
	}
	return pr
}

// run writes jobs until the channel closes. The writers take jobs in any
// order: the runs of an image do not overlap, so which lands first does
// not matter.
func (pr *PageRestorer) run(jobs <-chan restoreJob) {
	var err error
	for j := range jobs {
		select {
		case <-pr.failed: // the other writer's error ends the restart
		default:
			if err = writeSegments(j.t, j.buf[:j.n], j.segs); err != nil {
				pr.fail.Do(func() { close(pr.failed) })
			}
		}
		pr.free <- j.buf
	}
	pr.done <- err
}

// writeSegments writes b into t's memory, segment after segment, in as few
// process_vm_writev calls as the kernel's iovec limit allows.
func writeSegments(t *Target, b []byte, segs []segment) error {
	const maxIov = 1024 // UIO_MAXIOV
	for len(segs) > 0 {
		k := min(len(segs), maxIov)
		remote := make([]unix.RemoteIovec, k)
		n := 0
		for i, s := range segs[:k] {
			remote[i] = unix.RemoteIovec{Base: uintptr(s.addr), Len: s.n}
			n += s.n
		}
		local := []unix.Iovec{{Base: &b[0], Len: uint64(n)}}
		w, err := unix.ProcessVMWritev(t.Pid, local, remote, 0)
		if err == nil && w != n {
			err = fmt.Errorf("short write %d of %d", w, n)
		}
		if err != nil {
			return fmt.Errorf("restore pages %#x-%#x of %d: %w", segs[0].addr, segs[k-1].addr+uint64(segs[k-1].n), t.Pid, err)
		}
		b, segs = b[n:], segs[k:]
	}
	return nil
}

// buffer waits for a buffer the writer is done with, or for its failure,
// and makes sure it holds size bytes: a record's pages, at most 4 MiB (a
// small process's pages then take no more memory than they need).
func (pr *PageRestorer) buffer(size int) ([]byte, error) {
	if pr.err != nil {
		return nil, pr.err
	}
	if pr.closed {
		return nil, errors.New("page restorer used after Close")
	}
	select {
	case b := <-pr.free:
		if len(b) < size {
			b = make([]byte, size)
		}
		return b, nil
	case <-pr.failed:
		return nil, pr.Close()
	}
}

// Restore reads the pages of one PAGES record (pm's runs) from r and hands
// them to the writer for the stub t, whose address space is mm. The runs
// are checked against mm before anything is read.
func (pr *PageRestorer) Restore(t *Target, mm *pb.Mm, pm *pb.PageMap, r io.Reader) error {
	for _, run := range pm.Runs {
		v := FindVma(mm, run.Addr, run.Npages*pageSize)
		if v == nil || v.Special != "" || v.Shared || run.Addr%pageSize != 0 {
			return fmt.Errorf("image damaged: pages %#x+%d outside any private area", run.Addr, run.Npages)
		}
	}
	var total uint64
	for _, run := range pm.Runs {
		total += run.Npages * pageSize
	}
	bufSize := int(min(total, 4<<20))
	var buf []byte
	var segs []segment
	used := 0
	submit := func() error {
		j := restoreJob{t: t, buf: buf, n: used, segs: segs}
		buf, segs, used = nil, nil, 0
		if pr.jobs == nil && total <= inlineRestore {
			err := writeSegments(j.t, j.buf[:j.n], j.segs)
			pr.free <- j.buf
			if err != nil {
				pr.err = err
			}
			return err
		}
		if pr.jobs == nil {
			pr.jobs = make(chan restoreJob, 1)
			// The channel is passed, not read from pr: Close clears pr.jobs.
			for range restoreWriters {
				go pr.run(pr.jobs)
			}
		}
		select {
		case pr.jobs <- j:
			return nil
		case <-pr.failed:
			pr.free <- j.buf
			return pr.Close()
		}
	}
	for _, run := range pm.Runs {
		size := run.Npages * pageSize
		for off := uint64(0); off < size; {
			if buf == nil {
				var err error
				if buf, err = pr.buffer(bufSize); err != nil {
					return err
				}
			}
			n := min(uint64(len(buf)-used), size-off)
			if _, err := io.ReadFull(r, buf[used:used+int(n)]); err != nil {
				pr.free <- buf
				return err
			}
			segs = append(segs, segment{run.Addr + off, int(n)})
			used += int(n)
			off += n
			if used == len(buf) {
				if err := submit(); err != nil {
					return err
				}
			}
		}
	}
	if used > 0 {
		return submit()
	}
	if buf != nil {
		pr.free <- buf
	}
	return nil
}

// inlineRestore is the size of PAGES record up to which the caller writes
// the pages itself, as long as no larger one started the goroutine: a
// hand-over to another thread costs a wakeup, often of an idle vCPU, more
// than writing a small process's pages.
const inlineRestore = 1 << 20

// Close waits until every page handed over is written and returns the
// first write error.
func (pr *PageRestorer) Close() error {
	pr.closed = true
	if pr.jobs != nil {
		close(pr.jobs)
		pr.jobs = nil
		for range restoreWriters {
			if err := <-pr.done; pr.err == nil {
				pr.err = err
			}
		}
	}
	return pr.err
}

// LockMm locks the areas that were locked in memory (mlock) again, which
// also faults in their pages. It runs after the process's limits are
// back: without CAP_IPC_LOCK (an unprivileged restart) RLIMIT_MEMLOCK
// bounds it, as it bounded the process.
func LockMm(t *Target, mm *pb.Mm) error {
	var calls []Call
	for _, v := range mm.Vmas {
		if !v.Locked || v.Special != "" {
			continue
		}
		calls = append(calls, Call{Nr: unix.SYS_MLOCK, Args: []uint64{v.Start, v.End - v.Start},
			Err: func(err error) error {
				return fmt.Errorf("lock vma %#x-%#x (%s) in memory: %w; the process's memory lock limit (RLIMIT_MEMLOCK, as the image has it) must cover its locked areas, or ckpt restart run with CAP_IPC_LOCK", v.Start, v.End, v.Name, err)
			}})
	}
	if len(calls) == 0 {
		return nil
	}
	_, err := t.Batch(calls)
	return err
}

type prctlMmMap struct {
	StartCode, EndCode, StartData, EndData uint64
	StartBrk, Brk, StartStack              uint64
	ArgStart, ArgEnd, EnvStart, EnvEnd     uint64
	Auxv                                   uint64
	AuxvSize                               uint32
	ExeFd                                  uint32
}

const prSetMmMap = 14

// FinishMm sets the final protections, the mm fields (brk, arg/env,
// auxv, exe) and the core dump filter.
func FinishMm(t *Target, mm *pb.Mm, files *OpenFiles, pl *FdPuller) error {
	if mm.CoredumpFilter != nil {
		// From outside; the stub inherited ckpt's.
		if err := writeProc(t.Pid, "coredump_filter", fmt.Sprintf("%#x", *mm.CoredumpFilter)); err != nil {
			return fmt.Errorf("set core dump filter %#x: %w", *mm.CoredumpFilter, err)
		}
	}
	exe, _, err := files.Get(mm.ExeFileId)
	if err != nil {
		return fmt.Errorf("exe: %w", err)
	}
	if len(mm.Auxv) > 1024 || len(mm.Auxv)%16 != 0 {
		return fmt.Errorf("image damaged: auxv of %d bytes", len(mm.Auxv))
	}
	exeFd, err := pl.Pull(exe)
	if err != nil {
		return err
	}
	auxv, err := t.Put(1024, mm.Auxv)
	if err != nil {
		t.Syscall(unix.SYS_CLOSE, exeFd)
		return err
	}
	m := prctlMmMap{
		StartCode: mm.StartCode, EndCode: mm.EndCode, StartData: mm.StartData, EndData: mm.EndData,
		StartBrk: mm.StartBrk, Brk: mm.Brk, StartStack: mm.StartStack,
		ArgStart: mm.ArgStart, ArgEnd: mm.ArgEnd, EnvStart: mm.EnvStart, EnvEnd: mm.EnvEnd,
		Auxv: auxv, AuxvSize: uint32(len(mm.Auxv)), ExeFd: uint32(exeFd),
	}
	addr, err := t.Put(0, bytesOf(&m))
	if err != nil {
		t.Syscall(unix.SYS_CLOSE, exeFd)
		return err
	}
	// One batch: the protections, the mm fields, the close of the exe.
	var calls []Call
	for _, v := range mm.Vmas {
		if v.Special != "" || v.Shared {
			continue
		}
		calls = append(calls, Call{Nr: unix.SYS_MPROTECT, Args: []uint64{v.Start, v.End - v.Start, uint64(v.Prot)},
			Err: func(err error) error { return fmt.Errorf("protect vma %#x-%#x: %w", v.Start, v.End, err) }})
	}
	calls = append(calls,
		Call{Nr: unix.SYS_PRCTL, Args: []uint64{unix.PR_SET_MM, prSetMmMap, addr, uint64(unsafe.Sizeof(m))},
			Err: func(err error) error {
				return fmt.Errorf("set mm layout (brk %#x, exe %s): %w", mm.Brk, exe.Name(), err)
			}},
		Call{Nr: unix.SYS_CLOSE, Args: []uint64{exeFd},
			Err: func(err error) error { return fmt.Errorf("close exe in the stub: %w", err) }})
	if res, err := t.Batch(calls); err != nil {
		if len(res) < len(calls)-1 {
			t.Syscall(unix.SYS_CLOSE, exeFd)
		}
		return err
	}
	return nil
}
