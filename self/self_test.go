package self

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseAnswer(t *testing.T) {
	exited := func(code int) unix.WaitStatus { return unix.WaitStatus(code << 8) }
	for _, c := range []struct {
		answer string
		ws     unix.WaitStatus
		werr   error
		id     int64
		err    string
	}{
		{answer: "ckpt-id 42\n", id: 42},
		{answer: "ckpt-error checkpoint 7: no room\n", ws: exited(1), err: "no room"},
		{answer: "ckpt-id 0\n", err: "exited with status 0"},
		{answer: "ckpt-id -5\n", err: "exited with status 0"},
		{answer: "ckpt-id x\n", err: "exited with status 0"},
		{answer: "", ws: exited(2), err: "exited with status 2"},
		{answer: "", ws: unix.WaitStatus(unix.SIGKILL), err: "killed"},
		{answer: "", werr: unix.EINVAL, err: "wait for ckpt"},
	} {
		res, err := parseAnswer("img", []byte(c.answer), nil, c.ws, c.werr)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("answer %q: error %v, want one with %q", c.answer, err, c.err)
			}
			continue
		}
		if err != nil || res.ID != c.id || res.Restarted {
			t.Errorf("answer %q: %+v, %v; want id %d", c.answer, res, err, c.id)
		}
	}
}

func TestNoBinary(t *testing.T) {
	_, err := Checkpoint(t.TempDir()+"/img", Binary("/nonexistent/ckpt"))
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/ckpt") {
		t.Fatalf("error %v, want one naming the missing binary", err)
	}
	_, err = Checkpoint(t.TempDir()+"/img", Binary("no-such-ckpt-binary"))
	if err == nil || !strings.Contains(err.Error(), "CKPT") {
		t.Fatalf("error %v, want one telling to set CKPT", err)
	}
	if _, err := Checkpoint(""); err == nil {
		t.Fatal("no error for an empty path")
	}
}
