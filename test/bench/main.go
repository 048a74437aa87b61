// Command bench measures ckpt's checkpoint and restart against baselines
// measured in the same run on the same machine, and prints medians.
//
// Baselines, interleaved with the ckpt runs so that the machine's drift hits
// both: memcpy bandwidth; W, writing N bytes from a touched buffer into a new
// file in the image directory; R, reading that file into fresh populated
// anonymous memory. Run as root: `make bench`.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const workload = `
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
int main(int argc, char **argv) {
	size_t n = strtoull(argv[1], 0, 10) << 20;
	if (n) {
		uint64_t *p = mmap(0, n, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_POPULATE, -1, 0);
		uint64_t s = 88172645463325252ULL;
		for (size_t i = 0; i < n / 8; i++) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; p[i] = s; }
	}
	int procs = argc > 2 ? atoi(argv[2]) : 1;
	int pipes = argc > 3 && strcmp(argv[3], "pipes") == 0;
	for (int i = 1; i < procs; i++) {
		int p[2];
		if (pipes && pipe(p) != 0) return 1;
		if (fork() == 0) {
			if (pipes) close(p[1]); /* keeps the read end */
			for (;;) pause();
		}
		if (pipes) { close(p[0]); write(p[1], "x", 1); } /* keeps the write end, one unread byte */
	}
	printf("READY\n");
	fflush(stdout);
	for (;;) pause();
}
`

// goWorkload is a Go program: a runtime that catches nearly every signal,
// runs several threads and reserves a gigabyte of address space, as real
// Go services do, with four goroutines ticking.
const goWorkload = `package main

import (
	"fmt"
	"time"
)

func main() {
	for i := 0; i < 4; i++ {
		go func() {
			for {
				time.Sleep(time.Millisecond)
			}
		}()
	}
	fmt.Println("READY")
	select {}
}
`

var (
	ckpt   = flag.String("ckpt", "bin/ckpt", "ckpt binary")
	dir    = flag.String("dir", "/dev/shm", "directory for images (tmpfs gives the figures of docs/performance.md)")
	runs   = flag.Int("runs", 5, "runs per figure (the median is reported)")
	bigMB  = flag.Int("mb", 1024, "size of the big process in MiB")
	growth = flag.Bool("growth", false, "measure how the cost grows with memory size (64, 256, 1024 MiB) and process count (1, 10, 100)")
)

func main() {
	flag.Parse()
	if os.Geteuid() != 0 {
		fatal(fmt.Errorf("run as root"))
	}
	work, err := os.MkdirTemp(*dir, "ckpt-bench-")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(work)
	bin := filepath.Join(work, "wl")
	src := bin + ".c"
	os.WriteFile(src, []byte(workload), 0o644)
	if out, err := exec.Command("gcc", "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		fatal(fmt.Errorf("gcc: %v\n%s", err, out))
	}
	unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)

	fmt.Printf("ckpt bench: %d runs each, medians; images in %s\n\n", *runs, *dir)
	if *growth {
		fmt.Printf("%-22s %12s %12s %12s\n", "workload", "checkpoint", "frozen", "restart")
		row := func(name string, mb, procs int) {
			var ck, fr, rs []float64
			for i := 0; i < *runs; i++ {
				res := cycleN(bin, work, mb, procs, false)
				ck, fr, rs = append(ck, res.ckpt), append(fr, res.frozen), append(rs, res.restart)
			}
			fmt.Printf("%-22s %9.1f ms %9.1f ms %9.1f ms\n", name, med(ck)*1e3, med(fr)*1e3, med(rs)*1e3)
		}
		for _, mb := range []int{64, 256, 1024} {
			row(fmt.Sprintf("%d MiB, 1 process", mb), mb, 1)
		}
		for _, n := range []int{1, 10, 100} {
			row(fmt.Sprintf("%d processes", n), 0, n)
		}
		return
	}
	memcpy := median(*runs, func() float64 { return memcpyGBs(256 << 20) })
	fmt.Printf("memcpy bandwidth                  %8.2f GB/s\n", memcpy)
	var tck, tfr, trs []float64
	for i := 0; i < *runs; i++ {
		c, f, r := treeCycle(bin, work)
		tck, tfr, trs = append(tck, c), append(tfr, f), append(trs, r)
	}
	fmt.Printf("\n3-process tree with pipes\n")
	fmt.Printf("  checkpoint (left running)       %8.1f ms   (frozen %.1f ms)\n", med(tck)*1e3, med(tfr)*1e3)
	fmt.Printf("  restart (--detach)              %8.1f ms\n", med(trs)*1e3)

	goBin := filepath.Join(work, "goprog")
	os.WriteFile(goBin+".go", []byte(goWorkload), 0o644)
	build := exec.Command("go", "build", "-o", goBin, goBin+".go")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
	if out, err := build.CombinedOutput(); err != nil {
		fatal(fmt.Errorf("go build: %v\n%s", err, out))
	}
	var gck, gfr, grs []float64
	for i := 0; i < *runs; i++ {
		c, f, r := liveCycle(goBin, nil, work)
		gck, gfr, grs = append(gck, c), append(gfr, f), append(grs, r)
	}
	fmt.Printf("\nGo program (4 threads, 55 signal handlers, 1.2 GB of address space)\n")
	fmt.Printf("  checkpoint (left running)       %8.1f ms   (frozen %.1f ms)\n", med(gck)*1e3, med(gfr)*1e3)
	fmt.Printf("  restart (--detach)              %8.1f ms\n", med(grs)*1e3)

	for _, sz := range []int{0, *bigMB} {
		var ck, rs, frozen, size, rssCk, rssRs, w, r, zck, zsize []float64
		var ckPh, rsPh [][]phaseTime
		for i := 0; i < *runs; i++ {
			res := cycle(bin, work, sz)
			ck, rs, frozen = append(ck, res.ckpt), append(rs, res.restart), append(frozen, res.frozen)
			if sz > 0 {
				w, r = append(w, res.w), append(r, res.r)
			}
			size, rssCk, rssRs = append(size, res.size), append(rssCk, res.rssCkpt), append(rssRs, res.rssRestart)
			zck, zsize = append(zck, res.zckpt), append(zsize, res.zsize)
			ckPh, rsPh = append(ckPh, res.ckptPhases), append(rsPh, res.restartPhases)
		}
		name := "tiny process"
		if sz > 0 {
			name = fmt.Sprintf("%d MiB process", sz)
		}
		fmt.Printf("\n%s\n", name)
		fmt.Printf("  checkpoint (--kill, to file)    %8.1f ms   (frozen %.1f ms)\n", med(ck)*1e3, med(frozen)*1e3)
		fmt.Printf("  restart (--detach)              %8.1f ms\n", med(rs)*1e3)
		printPhases("checkpoint", ckPh)
		printPhases("restart", rsPh)
		fmt.Printf("  image size                      %8.2f MiB\n", med(size)/(1<<20))
		fmt.Printf("  checkpoint --compress (zstd)    %8.1f ms, %.2f MiB image\n", med(zck)*1e3, med(zsize)/(1<<20))
		fmt.Printf("  ckpt peak RSS                   %8.1f MiB checkpoint, %.1f MiB restart\n", med(rssCk)/1024, med(rssRs)/1024)
		if sz > 0 {
			gb := float64(uint64(sz)<<20) / 1e9
			fmt.Printf("  checkpoint throughput           %8.2f GB/s = %.2f x baseline W (%.2f GB/s), %.2f x memcpy\n", gb/med(ck), gb/med(ck)/(gb/med(w)), gb/med(w), gb/med(ck)/memcpy)
			fmt.Printf("  restart throughput              %8.2f GB/s = %.2f x baseline R (%.2f GB/s), %.2f x memcpy\n", gb/med(rs), gb/med(rs)/(gb/med(r)), gb/med(r), gb/med(rs)/memcpy)
			fmt.Printf("  compressed checkpoint           %8.2f GB/s (incompressible data)\n", gb/med(zck))
		}
	}
}

type result struct {
	ckpt, restart, frozen, size, rssCkpt, rssRestart float64
	// w and r are the baselines W and R, measured inside the cycle.
	w, r         float64
	zckpt, zsize float64
	// phases of the checkpoint and the restart as ckpt -v reports them.
	ckptPhases, restartPhases []phaseTime
}

type phaseTime struct {
	name string
	sec  float64
}

// phasesOf parses "ckpt: phases: name 1.2ms, other 30µs".
func phasesOf(msg string) []phaseTime {
	i := strings.Index(msg, "ckpt: phases: ")
	if i < 0 {
		return nil
	}
	line, _, _ := strings.Cut(msg[i+len("ckpt: phases: "):], "\n")
	var out []phaseTime
	for _, part := range strings.Split(line, ", ") {
		j := strings.LastIndexByte(part, ' ')
		if j < 0 {
			continue
		}
		d, err := time.ParseDuration(part[j+1:])
		if err != nil {
			continue
		}
		out = append(out, phaseTime{part[:j], d.Seconds()})
	}
	return out
}

// printPhases prints the median of each phase over runs, in order.
func printPhases(what string, runs [][]phaseTime) {
	if len(runs) == 0 || len(runs[0]) == 0 {
		return
	}
	var parts []string
	for i, ph := range runs[0] {
		var v []float64
		for _, r := range runs {
			if i < len(r) && r[i].name == ph.name {
				v = append(v, r[i].sec)
			}
		}
		parts = append(parts, fmt.Sprintf("%s %.1f", ph.name, med(v)*1e3))
	}
	fmt.Printf("  %-31s %s (ms)\n", what+" by phase", strings.Join(parts, ", "))
}

// treeCycle checkpoints a 3-process tree linked by pipes, leaving it
// running (a --kill would wait for init to reap the orphaned children,
// lazily on this machine), then kills it and, once its PIDs are free,
// restarts it.
func treeCycle(bin, work string) (ckptSec, frozenSec, restartSec float64) {
	return liveCycle(bin, []string{"0", "3", "pipes"}, work)
}

// liveCycle starts bin with args, waits for its READY line, checkpoints
// it left running, kills it and restarts it.
func liveCycle(bin string, args []string, work string) (ckptSec, frozenSec, restartSec float64) {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		fatal(err)
	}
	if err := cmd.Start(); err != nil {
		fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "READY" {
		fatal(fmt.Errorf("workload %s did not start", filepath.Base(bin)))
	}
	pid := cmd.Process.Pid
	go cmd.Wait()
	pids := append([]int{pid}, descendants(pid)...)
	img := filepath.Join(work, filepath.Base(bin)+".img")
	t0 := time.Now()
	msg, err := exec.Command(*ckpt, "checkpoint", "-v", "-o", img, fmt.Sprint(pid)).CombinedOutput()
	ckptSec = time.Since(t0).Seconds()
	if err != nil {
		fatal(fmt.Errorf("checkpoint %s: %v: %s", filepath.Base(bin), err, msg))
	}
	if i := strings.Index(string(msg), "frozen "); i >= 0 {
		f := strings.Fields(string(msg[i+7:]))
		if len(f) > 0 {
			d, _ := time.ParseDuration(strings.TrimSuffix(f[0], ","))
			frozenSec = d.Seconds()
		}
	}
	unix.Kill(-pid, unix.SIGKILL)
	waitGone(pids)
	t0 = time.Now()
	if msg, err := exec.Command(*ckpt, "restart", "--detach", img).CombinedOutput(); err != nil {
		fatal(fmt.Errorf("restart %s: %v: %s", filepath.Base(bin), err, msg))
	}
	restartSec = time.Since(t0).Seconds()
	unix.Kill(-pid, unix.SIGKILL)
	waitGone(pids)
	return ckptSec, frozenSec, restartSec
}

// cycle starts the workload, checkpoints it with --kill and restarts it.
// With mb > 0 it also measures the baselines W and R (see cycleN).
func cycle(bin, work string, mb int) result { return cycleN(bin, work, mb, 1, mb > 0) }

// cycleN does the same with a tree of procs processes.
func cycleN(bin, work string, mb, procs int, baselines bool) result {
	cmd := exec.Command(bin, fmt.Sprint(mb), fmt.Sprint(procs))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// The workload's output goes to a file outside the image directory,
	// as a job's log would: a descriptor on a /dev/shm file counts as
	// shared memory for the leak scan, which then has to stat every
	// descriptor of the machine instead of reading their links.
	logf, err := os.CreateTemp("", "ckpt-bench-log-")
	if err != nil {
		fatal(err)
	}
	logPath := logf.Name()
	defer os.Remove(logPath)
	cmd.Stdout = logf
	err = cmd.Start()
	logf.Close()
	if err != nil {
		fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		if b, _ := os.ReadFile(logPath); strings.HasPrefix(string(b), "READY") {
			break
		}
		if time.Now().After(deadline) {
			fatal(fmt.Errorf("workload did not start"))
		}
	}
	pid := cmd.Process.Pid
	go cmd.Wait()
	pids := append([]int{pid}, descendants(pid)...)
	img := filepath.Join(work, "img")
	var res result
	// First a compressed checkpoint that leaves the process running.
	if procs == 1 {
		t0 := time.Now()
		if msg, err := exec.Command(*ckpt, "checkpoint", "--compress", "-o", img+".zst", fmt.Sprint(pid)).CombinedOutput(); err != nil {
			fatal(fmt.Errorf("checkpoint --compress: %v: %s", err, msg))
		}
		res.zckpt = time.Since(t0).Seconds()
		if st, err := os.Stat(img + ".zst"); err == nil {
			res.zsize = float64(st.Size())
		}
		os.Remove(img + ".zst")
	}
	t0 := time.Now()
	c := exec.Command(*ckpt, "checkpoint", "-v", "--kill", "-o", img, fmt.Sprint(pid))
	msg, err := c.CombinedOutput()
	res.ckpt = time.Since(t0).Seconds()
	if err != nil {
		fatal(fmt.Errorf("checkpoint: %v: %s", err, msg))
	}
	res.rssCkpt = peakKiB(string(msg))
	res.ckptPhases = phasesOf(string(msg))
	if i := strings.Index(string(msg), "frozen "); i >= 0 {
		var d time.Duration
		f := strings.Fields(string(msg[i+7:]))
		if len(f) > 0 {
			d, _ = time.ParseDuration(strings.TrimSuffix(f[0], ","))
		}
		res.frozen = d.Seconds()
	}
	st, _ := os.Stat(img)
	res.size = float64(st.Size())
	// checkpoint --kill returns once the processes have died; their PIDs
	// are free once reaped, which for the orphans of a killed tree is up
	// to this machine's init (lazy: up to 2 s). The restart timed below
	// would wait for that; it is no cost of ckpt's.
	waitGone(pids)
	t0 = time.Now()
	c = exec.Command(*ckpt, "restart", "-v", "--detach", img)
	msg, err = c.CombinedOutput()
	if err != nil {
		fatal(fmt.Errorf("restart: %v: %s", err, msg))
	}
	res.restart = time.Since(t0).Seconds()
	res.rssRestart = peakKiB(string(msg))
	res.restartPhases = phasesOf(string(msg))
	os.Remove(img)
	// The baselines run under the conditions of what they stand for. On
	// this VM, whether a write or a fill gets pages freed a moment ago or
	// fresh ones from the host decides its speed. W, like the checkpoint's
	// write: with the workload's memory resident (the restored copy now)
	// and an image-sized file just removed (the image now, the compressed
	// image then).
	if baselines {
		res.w = baselineW(work, uint64(mb)<<20)
	}
	unix.Kill(-pid, unix.SIGKILL) // the restored tree is its own process group
	unix.Kill(pid, unix.SIGKILL)
	for i := 0; i < 5000; i++ { // the restored process's parent was ckpt: init reaps it
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	// R, like the restart's fill: right after a process of that size died
	// (the restored copy now, the checkpointed one then).
	if baselines {
		res.r = baselineR(work, uint64(mb)<<20)
	}
	return res
}

// descendants lists the processes below pid.
func descendants(pid int) []int {
	var out []int
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, f := range strings.Fields(string(b)) {
		if k, err := strconv.Atoi(f); err == nil {
			out = append(out, k)
			out = append(out, descendants(k)...)
		}
	}
	return out
}

// waitGone waits, up to 5 s each, until the processes pids have vanished.
func waitGone(pids []int) {
	for _, p := range pids {
		for i := 0; i < 5000; i++ {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", p)); os.IsNotExist(err) {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func memcpyGBs(n int) float64 {
	a, b := make([]byte, n), make([]byte, n)
	for i := range a {
		a[i] = byte(i)
	}
	copy(b, a)
	t0 := time.Now()
	copy(b, a)
	return float64(n) / time.Since(t0).Seconds() / 1e9
}

// baselineW writes n bytes from a touched buffer into a new file; it
// returns seconds.
func baselineW(work string, n uint64) float64 {
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	p := filepath.Join(work, "w")
	t0 := time.Now()
	f, err := os.Create(p)
	if err != nil {
		fatal(err)
	}
	for left := n; left > 0; left -= uint64(len(buf)) {
		if _, err := f.Write(buf); err != nil {
			fatal(err)
		}
	}
	f.Close()
	return time.Since(t0).Seconds()
}

// baselineR reads the file baselineW wrote into fresh populated anonymous
// memory; it returns seconds.
func baselineR(work string, n uint64) float64 {
	p := filepath.Join(work, "w")
	defer os.Remove(p)
	t0 := time.Now()
	mem, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		fatal(err)
	}
	defer unix.Munmap(mem)
	f, err := os.Open(p)
	if err != nil {
		fatal(err)
	}
	defer f.Close()
	for off := 0; off < len(mem); {
		k, err := f.Read(mem[off:min(off+(4<<20), len(mem))])
		if err != nil {
			fatal(err)
		}
		off += k
	}
	return time.Since(t0).Seconds()
}

func median(n int, f func() float64) float64 {
	var v []float64
	for i := 0; i < n; i++ {
		v = append(v, f())
	}
	return med(v)
}

func med(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

// peakKiB extracts "peak memory N kB" from ckpt -v output. (The rusage of a
// child is no use here: its maxrss starts from the parent's at fork.)
func peakKiB(msg string) float64 {
	i := strings.Index(msg, "peak memory ")
	if i < 0 {
		return 0
	}
	var kb float64
	fmt.Sscanf(msg[i+len("peak memory "):], "%f", &kb)
	return kb
}
