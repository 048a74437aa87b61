package checkpoint

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// A freezer cgroup (--freezer PATH) stops every task of the tree at the same
// instant, as in the seed's walkthrough, instead of one ptrace interrupt
// after another. ckpt then seizes the frozen tasks, thaws the cgroup (the
// tasks go straight into their ptrace stops, without returning to user
// space), dumps, and leaves the cgroup as it found it: tasks the user froze
// stay frozen until the user thaws them.

// freezer is a cgroup v1 freezer or a cgroup v2 directory.
type freezer struct {
	dir string
	v2  bool
	// wasFrozen records that the user had frozen it before ckpt came.
	wasFrozen bool
}

func openFreezer(dir string) (*freezer, error) {
	if _, err := os.Stat(filepath.Join(dir, "freezer.state")); err == nil {
		fz := &freezer{dir: dir}
		st, err := fz.state()
		fz.wasFrozen = st == "FROZEN"
		return fz, err
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.freeze")); err == nil {
		fz := &freezer{dir: dir, v2: true}
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.freeze"))
		fz.wasFrozen = strings.TrimSpace(string(b)) == "1"
		return fz, err
	}
	return nil, fmt.Errorf("%s is neither a cgroup v1 freezer (freezer.state) nor a cgroup v2 directory (cgroup.freeze)", dir)
}

func (fz *freezer) state() (string, error) {
	if fz.v2 {
		b, err := os.ReadFile(filepath.Join(fz.dir, "cgroup.events"))
		if err != nil {
			return "", err
		}
		if strings.Contains(string(b), "frozen 1") {
			return "FROZEN", nil
		}
		return "THAWED", nil
	}
	b, err := os.ReadFile(filepath.Join(fz.dir, "freezer.state"))
	return strings.TrimSpace(string(b)), err
}

// set freezes or thaws, and waits until the cgroup says so.
func (fz *freezer) set(frozen bool) error {
	var file, val, want string
	switch {
	case fz.v2 && frozen:
		file, val, want = "cgroup.freeze", "1", "FROZEN"
	case fz.v2:
		file, val, want = "cgroup.freeze", "0", "THAWED"
	case frozen:
		file, val, want = "freezer.state", "FROZEN", "FROZEN"
	default:
		file, val, want = "freezer.state", "THAWED", "THAWED"
	}
	if err := os.WriteFile(filepath.Join(fz.dir, file), []byte(val), 0); err != nil {
		return fmt.Errorf("freezer %s: write %s: %w", fz.dir, val, err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		st, err := fz.state()
		if err != nil {
			return err
		}
		if st == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("freezer %s stays %s, not %s", fz.dir, st, want)
		}
	}
}

// contains checks that pid is a member of the cgroup.
func (fz *freezer) contains(pid int) bool {
	b, err := os.ReadFile(filepath.Join(fz.dir, "cgroup.procs"))
	if err != nil {
		return false
	}
	for _, f := range strings.Fields(string(b)) {
		if f == fmt.Sprint(pid) {
			return true
		}
	}
	return false
}
