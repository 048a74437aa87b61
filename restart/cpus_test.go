package restart

import (
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/ptrace"
	"github.com/ckpt/ckpt/resource"
)

func TestCPUSets(t *testing.T) {
	for _, c := range []struct {
		cpus  []int
		words []uint64
		list  string
	}{
		{[]int{0}, []uint64{1}, "0"},
		{[]int{0, 1, 2, 3, 6}, []uint64{0x4f}, "0-3,6"},
		{[]int{1, 64, 65, 127}, []uint64{2, 1<<0 | 1<<1 | 1<<63}, "1,64-65,127"},
	} {
		var set ptrace.CPUSet
		for _, cpu := range c.cpus {
			set.Set(cpu)
		}
		words := resource.CPUWords(&set)
		if len(words) != len(c.words) {
			t.Fatalf("%v: words %#x, want %#x", c.cpus, words, c.words)
		}
		for i := range words {
			if words[i] != c.words[i] {
				t.Fatalf("%v: words %#x, want %#x", c.cpus, words, c.words)
			}
		}
		back, ok := resource.CPUSetOf(&pb.Thread{Cpus: words})
		if !ok || back != set {
			t.Errorf("%v: back from the image: %v (ok %v)", c.cpus, cpuList(&back), ok)
		}
		if got := cpuList(&set); got != c.list {
			t.Errorf("%v: list %q, want %q", c.cpus, got, c.list)
		}
	}
	// No set (an older image), an empty one, one wider than CPUSet: none.
	wide := make([]uint64, 17)
	wide[16] = 1
	for _, words := range [][]uint64{nil, {0}, wide} {
		if _, ok := resource.CPUSetOf(&pb.Thread{Cpus: words}); ok {
			t.Errorf("CPUSetOf(%#x) = ok, want no set", words)
		}
	}
}

// TestRestoreCPUs sets a recorded CPU set on a thread (this test's own),
// and falls back to ckpt's set, with a warning naming the CPUs, for one
// this machine cannot honour.
func TestRestoreCPUs(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	orig, err := ptrace.Affinity(tid)
	if err != nil {
		t.Fatal(err)
	}
	defer ptrace.SetAffinity(tid, &orig)
	first := -1
	for c := 0; first < 0 && c < len(orig)*64; c++ {
		if orig.IsSet(c) {
			first = c
		}
	}
	var warned []string
	opts := &Options{Warn: func(s string) { warned = append(warned, s) }, cpus: &orig}

	var one ptrace.CPUSet
	one.Set(first)
	if err := restoreCPUs(opts, &pb.Thread{Tid: 42, Cpus: resource.CPUWords(&one)}, tid); err != nil {
		t.Fatal(err)
	}
	if got, _ := ptrace.Affinity(tid); got != one || len(warned) != 0 {
		t.Errorf("recorded set {%d}: got %s, warnings %q", first, cpuList(&got), warned)
	}

	var far ptrace.CPUSet
	far.Set(1000)
	if err := restoreCPUs(opts, &pb.Thread{Tid: 42, Cpus: resource.CPUWords(&far)}, tid); err != nil {
		t.Fatal(err)
	}
	if got, _ := ptrace.Affinity(tid); got != orig {
		t.Errorf("set {1000}: got %s, want ckpt's %s", cpuList(&got), cpuList(&orig))
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "thread 42 ran on CPUs 1000") {
		t.Errorf("warnings %q, want one about thread 42 and CPU 1000", warned)
	}
}
