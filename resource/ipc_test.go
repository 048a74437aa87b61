package resource

import (
	"testing"
	"unsafe"
)

// The raw structures must match the kernel's x86-64 layouts.
func TestIPCLayouts(t *testing.T) {
	if s := unsafe.Sizeof(msqidDS{}); s != 120 {
		t.Errorf("msqid64_ds is %d bytes, want 120", s)
	}
	if s := unsafe.Sizeof(semidDS{}); s != 104 {
		t.Errorf("semid64_ds is %d bytes, want 104", s)
	}
	if s := unsafe.Sizeof(semBuf{}); s != 6 {
		t.Errorf("sembuf is %d bytes, want 6", s)
	}
}

func TestSysvNameKey(t *testing.T) {
	for name, want := range map[string]int32{"/SYSV00001234 (deleted)": 0x1234, "/SYSVffffffff (deleted)": -1} {
		if k, ok := sysvNameKey(name); !ok || k != want {
			t.Errorf("%q: %#x %v, want %#x", name, k, ok, want)
		}
	}
	for _, name := range []string{"/SYSV1234 (deleted)", "/SYSV00001234", "/dev/zero (deleted)", "/SYSV0000123g (deleted)"} {
		if _, ok := sysvNameKey(name); ok {
			t.Errorf("%q taken for a SysV segment", name)
		}
	}
}
