package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFreezer is the seed's walkthrough: put a tree in a freezer cgroup,
// freeze it, checkpoint it, restart it. Tasks the user froze stay frozen
// after a checkpoint that leaves them running.
func TestFreezer(t *testing.T) {
	roots := map[string]string{"v1": "/sys/fs/cgroup/freezer", "v2": "/sys/fs/cgroup/unified"}
	for _, v := range []string{"v1", "v2"} {
		for _, kill := range []bool{false, true} {
			name := v + "/running"
			if kill {
				name = v + "/kill"
			}
			t.Run(name, func(t *testing.T) {
				dir := filepath.Join(roots[v], fmt.Sprintf("ckpt-e2e-%d", os.Getpid()))
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Skipf("no %s freezer here: %v", v, err)
				}
				t.Cleanup(func() {
					setFreezer(t, dir, v, false)
					for i := 0; i < 100 && os.Remove(dir) != nil; i++ {
						time.Sleep(20 * time.Millisecond)
					}
				})
				p := startWorkload(t, compile(t, "tree"))
				for _, pid := range append([]int{p.pid}, descendants(p.pid)...) {
					if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(itoa(pid)), 0); err != nil {
						t.Fatalf("move %d into %s: %v", pid, dir, err)
					}
				}
				setFreezer(t, dir, v, true)
				img := filepath.Join(p.dir, "img")
				args := []string{"checkpoint", "--freezer", dir, "-o", img, itoa(p.pid)}
				if kill {
					args = append(args[:1], append([]string{"--kill"}, args[1:]...)...)
				}
				if out, err := ckpt(nil, args...); err != nil {
					t.Fatalf("checkpoint: %v\n%s", err, out)
				}
				if !kill {
					if st := freezerState(t, dir, v); st != "FROZEN" {
						t.Fatalf("freezer is %s after the checkpoint; the user froze it, it must stay FROZEN", st)
					}
					setFreezer(t, dir, v, false)
					p.verifyExit(p.exit, true, 10*time.Second)
					return
				}
				p.exit.wait(10 * time.Second)
				r := p.restart(img)
				p.verifyExit(r.exit, true, 10*time.Second)
			})
		}
	}
}

func freezerState(t *testing.T, dir, v string) string {
	t.Helper()
	if v == "v1" {
		b, err := os.ReadFile(filepath.Join(dir, "freezer.state"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "frozen 1") {
		return "FROZEN"
	}
	return "THAWED"
}

func setFreezer(t *testing.T, dir, v string, frozen bool) {
	t.Helper()
	file, val, want := "freezer.state", "THAWED", "THAWED"
	if v == "v2" {
		file, val = "cgroup.freeze", "0"
	}
	if frozen {
		val, want = "FROZEN", "FROZEN"
		if v == "v2" {
			val = "1"
		}
	}
	if err := os.WriteFile(filepath.Join(dir, file), []byte(val), 0); err != nil {
		if os.IsNotExist(err) {
			return
		}
		t.Fatal(err)
	}
	for i := 0; i < 500 && freezerState(t, dir, v) != want; i++ {
		time.Sleep(10 * time.Millisecond)
	}
}
