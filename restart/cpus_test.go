package restart

import (
	"testing"

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
