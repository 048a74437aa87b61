package resource

import (
	"encoding/binary"
	"testing"
)

func TestNotifies(t *testing.T) {
	insn := func(code uint16, k uint32) []byte {
		b := make([]byte, 8)
		binary.LittleEndian.PutUint16(b, code)
		binary.LittleEndian.PutUint32(b[4:], k)
		return b
	}
	load := insn(0x20, 0) // BPF_LD|BPF_W|BPF_ABS
	tests := []struct {
		name string
		prog []byte
		want bool
	}{
		{"allow", append(load, insn(bpfRetK, 0x7fff0000)...), false},
		{"errno", append(load, insn(bpfRetK, 0x00050000|13)...), false},
		{"user notification", append(load, insn(bpfRetK, seccompRetUserNotif)...), true},
		{"the value loaded, not returned", insn(0x20, seccompRetUserNotif), false},
	}
	for _, tt := range tests {
		if got := notifies(tt.prog); got != tt.want {
			t.Errorf("%s: notifies = %v, want %v", tt.name, got, tt.want)
		}
	}
}
