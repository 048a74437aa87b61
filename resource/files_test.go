package resource

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPlanFdMoves runs each plan on a model descriptor table and checks
// that every descriptor ends up where it belongs, with its flag, that no
// dup3 overwrote a source still to be moved, and that nothing but the
// sources is left open (the caller closes those).
func TestPlanFdMoves(t *testing.T) {
	for _, tc := range []struct {
		name  string
		moves []fdMove
	}{
		{"none", nil},
		{"in place", []fdMove{{0, 0, 0}, {1, 1, unix.O_CLOEXEC}}},
		{"disjoint", []fdMove{{0, 5, 0}, {1, 6, 0}}},
		{"chain", []fdMove{{0, 1, 0}, {1, 2, 0}, {2, 3, unix.O_CLOEXEC}}},
		{"chain reversed", []fdMove{{2, 3, 0}, {1, 2, 0}, {0, 1, 0}}},
		{"swap", []fdMove{{3, 4, 0}, {4, 3, unix.O_CLOEXEC}}},
		{"cycle of three and a tail", []fdMove{{0, 1, 0}, {1, 2, 0}, {2, 0, 0}, {5, 0 + 9, 0}, {9, 10, 0}}},
		{"two cycles", []fdMove{{0, 1, 0}, {1, 0, 0}, {2, 3, 0}, {3, 2, unix.O_CLOEXEC}, {4, 4, 0}}},
		{"pulled low, placed high", []fdMove{{0, 3, 0}, {1, 4, 0}, {2, 5, 0}, {3, 0, 0}, {4, 1, 0}, {5, 2, 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const spare = 100
			// table: number -> (description, cloexec); description i is moves[i]'s.
			type ent struct {
				desc    int
				cloexec bool
			}
			table := map[uint64]ent{}
			for i, m := range tc.moves {
				table[m.from] = ent{desc: i}
			}
			moved := map[int]bool{}
			for _, op := range planFdMoves(tc.moves, spare) {
				src, ok := table[op.from]
				if !ok {
					t.Fatalf("%+v: %d is not open", op, op.from)
				}
				switch {
				case op.close:
					if op.from != spare {
						t.Fatalf("plan closes %d, which is not the spare", op.from)
					}
					delete(table, op.from)
				case op.from == op.to:
					table[op.to] = ent{src.desc, op.flags != 0}
					moved[src.desc] = true
				default:
					if dst, busy := table[op.to]; busy && op.to != spare && !moved[dst.desc] && tc.moves[dst.desc].from == op.to {
						t.Fatalf("%+v overwrites description %d before it moved", op, dst.desc)
					}
					table[op.to] = ent{src.desc, op.flags != 0}
					moved[src.desc] = true // copied out of its source, to its place or the spare
				}
			}
			for i, m := range tc.moves {
				got, ok := table[m.to]
				if !ok || got.desc != i || got.cloexec != (m.flags != 0) {
					t.Errorf("fd %d holds %+v (open %v), want description %d cloexec %v", m.to, got, ok, i, m.flags != 0)
				}
			}
			if _, ok := table[spare]; ok {
				t.Errorf("the spare %d is left open", spare)
			}
			targets := map[uint64]bool{}
			for _, m := range tc.moves {
				targets[m.to] = true
			}
			for n := range table {
				if !targets[n] {
					isSource := false
					for _, m := range tc.moves {
						isSource = isSource || m.from == n
					}
					if !isSource {
						t.Errorf("%s", fmt.Sprintf("fd %d is open and neither a target nor a source", n))
					}
				}
			}
		})
	}
}

// TestFdClosed: preflight reads a running process, which may close a
// descriptor between the listing and the reading; only that case is
// skipped.
func TestFdClosed(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "fd")
	if err != nil {
		t.Fatal(err)
	}
	open := int(f.Fd())
	g, err := os.CreateTemp(t.TempDir(), "fd")
	if err != nil {
		t.Fatal(err)
	}
	closed := int(g.Fd())
	g.Close()
	defer f.Close()
	gone := fmt.Errorf("read fd: %w", &os.PathError{Op: "readlink", Path: "x", Err: unix.ENOENT})
	self := os.Getpid()
	tests := []struct {
		name string
		fd   int
		err  error
		want bool
	}{
		{"closed meanwhile", closed, gone, true},
		{"still open", open, gone, false},
		{"another error", closed, fmt.Errorf("read fd: %w", unix.EACCES), false},
	}
	for _, tt := range tests {
		if got := fdClosed(self, tt.fd, tt.err); got != tt.want {
			t.Errorf("%s: fdClosed(%d) = %v, want %v", tt.name, tt.fd, got, tt.want)
		}
	}
	if fdClosed(1<<22, closed, gone) {
		t.Error("fdClosed is true for a process that does not exist")
	}
}
