package proc

import (
	"reflect"
	"testing"
)

func TestParseMountInfo(t *testing.T) {
	text := `27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
22 27 0:21 / /proc rw,relatime - proc proc rw
36 35 98:0 /mnt1 /mnt\0402\134x rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue
40 27 0:40 /dir\040a /tmp/a\011b ro,nosuid,nodev unbindable - tmpfs my\040tmp ro,size=1024k,mode=750
`
	ms, err := ParseMountInfo([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{ID: 27, Parent: 1, Major: 254, Minor: 0, Root: "/", MountPoint: "/", Options: "rw,relatime", FsType: "ext4", Source: "/dev/vda", SuperOptions: "rw,discard"},
		{ID: 22, Parent: 27, Major: 0, Minor: 21, Root: "/", MountPoint: "/proc", Options: "rw,relatime", FsType: "proc", Source: "proc", SuperOptions: "rw"},
		{ID: 36, Parent: 35, Major: 98, Minor: 0, Root: "/mnt1", MountPoint: `/mnt 2\x`, Options: "rw,noatime", Optional: []string{"master:1", "shared:7"}, FsType: "ext3", Source: "/dev/root", SuperOptions: "rw,errors=continue"},
		{ID: 40, Parent: 27, Major: 0, Minor: 40, Root: "/dir a", MountPoint: "/tmp/a\tb", Options: "ro,nosuid,nodev", Optional: []string{"unbindable"}, FsType: "tmpfs", Source: "my tmp", SuperOptions: "ro,size=1024k,mode=750"},
	}
	if !reflect.DeepEqual(ms, want) {
		t.Fatalf("got\n%+v\nwant\n%+v", ms, want)
	}
	if !ms[3].HasOption("nodev") || ms[3].HasOption("noexec") || ms[3].Dev() != "0:40" {
		t.Errorf("options of %+v", ms[3])
	}
	for _, bad := range []string{"1 2 3", "x 1 0:1 / / rw - a b c", "1 1 0:1 / / rw a b c d", "1 1 01 / / rw - a b c"} {
		if _, err := ParseMountInfo([]byte(bad + "\n")); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	if _, err := ReadMountInfo(1); err != nil {
		t.Errorf("own mountinfo: %v", err)
	}
}
