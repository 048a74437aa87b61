package checkpoint

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/resource"
)

func TestCodeWorthIt(t *testing.T) {
	bit := resource.SigBit
	tests := []struct {
		name    string
		sets    resource.SignalSets
		threads int
		want    bool
	}{
		{"tiny", resource.SignalSets{}, 1, false},
		{"python", resource.SignalSets{Ignored: bit(unix.SIGPIPE) | bit(unix.SIGXFSZ), Caught: bit(unix.SIGINT)}, 1, true},
		{"kill and stop never asked", resource.SignalSets{Caught: bit(unix.SIGKILL) | bit(unix.SIGSTOP)}, 1, false},
		{"three threads", resource.SignalSets{}, 3, true},
		{"go", resource.SignalSets{Ignored: 0x2, Caught: 0xfffffffd7fc1fefd}, 7, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := codeWorthIt(tt.sets, tt.threads); got != tt.want {
				t.Errorf("codeWorthIt(%+v, %d) = %v, want %v", tt.sets, tt.threads, got, tt.want)
			}
		})
	}
}
