package checkpoint

import (
	"os/exec"
	"syscall"
	"testing"
)

func TestSessionOrphan(t *testing.T) {
	leader := exec.Command("sleep", "30")
	leader.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	member := exec.Command("sleep", "30")
	gone := exec.Command("true")
	for _, c := range []*exec.Cmd{leader, member} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	}
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		pid, sid int
		want     bool
	}{
		{"leads its own session", leader.Process.Pid, leader.Process.Pid, false},
		{"leader outside the PID namespace", 4000, 0, false},
		{"leader alive", member.Process.Pid, leader.Process.Pid, false},
		{"leader gone", member.Process.Pid, gone.Process.Pid, true},
		{"PID reused by a process that leads no session", leader.Process.Pid, member.Process.Pid, true},
	}
	for _, tt := range tests {
		if got := sessionOrphan(tt.pid, tt.sid); got != tt.want {
			t.Errorf("%s: sessionOrphan(%d, %d) = %v, want %v", tt.name, tt.pid, tt.sid, got, tt.want)
		}
	}
}
