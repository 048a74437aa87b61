package resource

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckpt/ckpt/image/pb"
)

// TestInheritStdio: only a pipe end whose other end no process of the
// image holds, on descriptor 0-2 of the root, is replaced, and only by a
// descriptor of ckpt's that can be used that way.
func TestInheritStdio(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	o := NewOpenFiles()
	defer o.Close()
	for _, f := range []*pb.File{
		{Id: 1, Kind: pb.File_PIPE, PipeIno: 10, Flags: unix.O_WRONLY}, // outside reader
		{Id: 2, Kind: pb.File_PIPE, PipeIno: 20, Flags: unix.O_WRONLY}, // both ends inside
		{Id: 3, Kind: pb.File_PIPE, PipeIno: 20, Flags: unix.O_RDONLY},
		{Id: 4, Kind: pb.File_PIPE, PipeIno: 30, Flags: unix.O_RDONLY, PipeData: []byte("x")}, // outside writer
		{Id: 5, Kind: pb.File_PIPE, PipeIno: 40, Flags: unix.O_WRONLY},                        // on fd 3
	} {
		if err := o.Add(f); err != nil {
			t.Fatal(err)
		}
	}
	root := &pb.Process{Pid: 7, Comm: "prog", Fds: []*pb.Fd{{Fd: 0, FileId: 4}, {Fd: 1, FileId: 1}, {Fd: 2, FileId: 2}, {Fd: 3, FileId: 5}}}
	var said []string
	// ckpt's stdin is the pipe's write end: no use as a read end.
	o.InheritStdio(root, [3]*os.File{w, w, w}, func(s string) { said = append(said, s) })
	if len(o.inherit) != 1 || o.inherit[10] != w {
		t.Errorf("inherited %v, want pipe 10 only", o.inherit)
	}
	if len(said) != 2 || !strings.Contains(said[0], "fd 0 of process 7 (prog) was a pipe to processes outside the image; it comes back without them, and it reads end of file") ||
		!strings.Contains(said[1], "fd 1 of process 7 (prog) was a pipe to processes outside the image; it is now this restart's standard output") {
		t.Errorf("said %q", said)
	}
	f, _, err := o.Get(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("through")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 7)
	if n, _ := r.Read(b); string(b[:n]) != "through" {
		t.Errorf("read %q from ckpt's pipe, want what the process wrote", b[:n])
	}

	o2 := NewOpenFiles()
	defer o2.Close()
	o2.Add(&pb.File{Id: 4, Kind: pb.File_PIPE, PipeIno: 30, Flags: unix.O_RDONLY, PipeData: []byte("xy")})
	said = nil
	o2.InheritStdio(&pb.Process{Pid: 7, Comm: "prog", Fds: []*pb.Fd{{Fd: 0, FileId: 4}}}, [3]*os.File{r}, func(s string) { said = append(said, s) })
	if o2.inherit[30] != r || len(said) != 1 || !strings.Contains(said[0], "standard input (the 2 bytes that were waiting in the pipe stay with the old one)") {
		t.Errorf("stdin: inherited %v, said %q", o2.inherit, said)
	}
}
