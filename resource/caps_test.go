package resource

import (
	"os"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

func TestReadCaps(t *testing.T) {
	st := proc.ParseStatus([]byte("Name:\tx\nCapInh:\t0000000000000400\nCapPrm:\t0000000000002421\nCapEff:\t0000000000000421\nCapBnd:\t000001fffebfffff\nCapAmb:\t0000000000000400\n"))
	c, err := readCaps(st)
	if err != nil {
		t.Fatal(err)
	}
	want := &pb.Caps{Inheritable: 0x400, Permitted: 0x2421, Effective: 0x421, Bounding: 0x1fffebfffff, Ambient: 0x400}
	if !proto.Equal(c, want) {
		t.Errorf("caps %v, want %v", c, want)
	}
	if _, err := readCaps(proc.ParseStatus([]byte("CapInh:\tzz\n"))); err == nil {
		t.Error("bad CapInh accepted")
	}
}

func TestPlainCaps(t *testing.T) {
	full := uint64(0x1ffffffffff)
	for _, tt := range []struct {
		name  string
		c     *pb.Caps
		root  bool
		plain bool
	}{
		{"root, all", &pb.Caps{Permitted: full, Effective: full, Bounding: full}, true, true},
		{"root, reduced bounding set", &pb.Caps{Permitted: full &^ 1, Effective: full &^ 1, Bounding: full &^ 1}, true, true},
		{"root, less effective", &pb.Caps{Permitted: full, Effective: 1, Bounding: full}, true, false},
		{"user, none", &pb.Caps{Bounding: full}, false, true},
		{"user, ambient", &pb.Caps{Permitted: 1 << 10, Effective: 1 << 10, Inheritable: 1 << 10, Ambient: 1 << 10, Bounding: full}, false, false},
	} {
		if got := plainCaps(tt.c, tt.root); got != tt.plain {
			t.Errorf("%s: plainCaps = %v, want %v", tt.name, got, tt.plain)
		}
	}
	if err := CheckUnprivCaps(5, &pb.Creds{Uid: 1000, Caps: &pb.Caps{Permitted: 1 << 10, Bounding: full}}); err == nil {
		t.Error("an unprivileged restart accepted a process with capabilities")
	}
	if err := CheckUnprivCaps(5, &pb.Creds{Uid: 1000, Caps: &pb.Caps{Bounding: full}}); err != nil {
		t.Errorf("an unprivileged restart refused a process without capabilities: %v", err)
	}
}

// TestReadSelfCaps compares what the syscalls say with /proc/self/status.
func TestReadSelfCaps(t *testing.T) {
	got, err := ReadSelfCaps()
	if err != nil {
		t.Fatal(err)
	}
	st, err := proc.ReadStatus(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	want, err := readCaps(st)
	if err != nil {
		t.Fatal(err)
	}
	if !sameCaps(got, want) {
		t.Errorf("ReadSelfCaps %v, /proc/self/status %v", got, want)
	}
}
