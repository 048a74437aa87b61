package resource

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestNsLinkID(t *testing.T) {
	for _, c := range []struct {
		link string
		id   uint64
		ok   bool
	}{
		{"net:[4026531833]", 4026531833, true},
		{"pid_for_children:[4026531836]", 4026531836, true},
		{"net:[]", 0, false},
		{"net:[12", 0, false},
		{"net:12]", 0, false},
		{"net:[x1]", 0, false},
	} {
		id, ok := nsLinkID(c.link)
		if id != c.id || ok != c.ok {
			t.Errorf("nsLinkID(%q) = %d, %v; want %d, %v", c.link, id, ok, c.id, c.ok)
		}
	}
}

// TestReadNsIds checks the ids read from the links against the inodes a
// stat of the same links gives.
func TestReadNsIds(t *testing.T) {
	ids, err := ReadNsIds(0)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range NsKinds {
		var st unix.Stat_t
		if err := unix.Stat("/proc/self/ns/"+k.Name, &st); err != nil {
			t.Fatal(err)
		}
		if got := k.Get(ids); got != st.Ino {
			t.Errorf("%s namespace: id %d, inode %d", k.Name, got, st.Ino)
		}
	}
}
