package checkpoint

import "testing"

func TestPipeLinkInode(t *testing.T) {
	for _, tc := range []struct {
		link string
		ino  uint64
		ok   bool
	}{
		{"pipe:[123]", 123, true},
		{"pipe:[0]", 0, true},
		{"pipe:[18446744073709551615]", 18446744073709551615, true},
		{"pipe:[18446744073709551616]", 0, false}, // overflows
		{"pipe:[]", 0, false},
		{"pipe:[12a]", 0, false},
		{"pipe:[12", 0, false},
		{"socket:[123]", 0, false},
		{"/tmp/fifo", 0, false},
	} {
		ino, ok := pipeLinkInode([]byte(tc.link))
		if ino != tc.ino || ok != tc.ok {
			t.Errorf("pipeLinkInode(%q) = %d, %v; want %d, %v", tc.link, ino, ok, tc.ino, tc.ok)
		}
	}
}
