package resource

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseLimitsMatchesGetrlimit(t *testing.T) {
	b, err := os.ReadFile("/proc/self/limits")
	if err != nil {
		t.Skip(err)
	}
	lims, err := parseLimits(string(b))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lims {
		var want unix.Rlimit
		if err := unix.Getrlimit(int(l.Resource), &want); err != nil {
			t.Fatal(err)
		}
		if l.Cur != want.Cur || l.Max != want.Max {
			t.Errorf("rlimit %d: parsed %d/%d, getrlimit says %d/%d", l.Resource, l.Cur, l.Max, want.Cur, want.Max)
		}
	}
}
