package e2e

import (
	"os/exec"
	"strings"
	"testing"
)

// TestSessionZero runs ckpt inside a PID namespace whose processes see
// their session as 0: its leader is outside, as for everything a
// container's init started without setsid (CI runs make test that way).
// A checkpoint and restart of such a process must work, the restored one
// staying in ckpt's session; ckpt once tried to re-create session 0.
func TestSessionZero(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare")
	}
	dir := t.TempDir()
	script := `sleep 30 & P=$!
sleep 0.05
read -r _ _ _ _ _ sid _ < /proc/$P/stat
echo "sid before $sid"
"$CKPT" checkpoint --kill -o "$DIR/img" $P || exit 1
"$CKPT" restart --detach "$DIR/img" || exit 1
read -r pid _ _ _ _ sid _ < /proc/$P/stat
echo "restored $pid (mine $P), sid $sid"
kill -9 $P`
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script)
	cmd.Env = append(cmd.Environ(), "CKPT="+ckptBin, "DIR="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in a new PID namespace: %v\n%s", err, out)
	}
	s := string(out)
	if !strings.Contains(s, "sid before 0") || !strings.Contains(s, "restored 2 (mine 2)") {
		t.Fatalf("want a process of session 0, restored with its PID:\n%s", s)
	}
}
