package image

import (
	"bytes"
	"io"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ckpt/ckpt/image/pb"
)

// TestCodec checks that records decode to what was encoded, also for what
// proto.Marshal refuses: a path that is not UTF-8 (Linux names are bytes).
func TestCodec(t *testing.T) {
	msgs := []struct {
		typ Type
		m   proto.Message
	}{
		{TypeHeader, &pb.Header{FormatVersion: FormatVersion, PageSize: PageSize, Arch: "x86_64", Kernel: "6.18"}},
		{TypeFile, &pb.File{Id: 7, Path: "/tmp/caf\xe9\xff", Flags: 2, Pos: 1 << 40}},
		{TypeMm, &pb.Mm{Id: 1, Vmas: []*pb.Vma{{Start: 0x1000, End: 0x3000, Prot: 3, Name: "[heap]", Pages: 2}}}},
		{TypeProcess, &pb.Process{Pid: 42, Comm: "\x80bad", Threads: []*pb.Thread{{Tid: 42, Sigmask: 1 << 63}}, Sigactions: []*pb.Sigaction{{Signo: 10, Handler: 0x401000}}}},
	}
	var buf bytes.Buffer
	w, err := NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range msgs {
		if err := w.Message(c.typ, c.m); err != nil {
			t.Fatalf("write %v: %v", c.typ, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(r.Header, msgs[0].m) {
		t.Errorf("header: got %v, want %v", r.Header, msgs[0].m)
	}
	for _, c := range msgs[1:] {
		rec, err := r.Next()
		if err != nil {
			t.Fatalf("read %v: %v", c.typ, err)
		}
		got := c.m.ProtoReflect().New().Interface()
		if err := Unmarshal(rec, got); err != nil {
			t.Fatal(err)
		}
		if rec.Type != c.typ || !proto.Equal(got, c.m) {
			t.Errorf("%v record: got %v, want %v", rec.Type, got, c.m)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("after the last record: %v, want EOF", err)
	}
}

// TestUnmarshalEmpties checks that decoding into a used message replaces
// its contents (the generated decoder merges).
func TestUnmarshalEmpties(t *testing.T) {
	b, err := marshal(&pb.Process{Pid: 1})
	if err != nil {
		t.Fatal(err)
	}
	p := &pb.Process{Pid: 9, Comm: "old", Threads: []*pb.Thread{{Tid: 9}}}
	if err := unmarshal(b, p); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(p, &pb.Process{Pid: 1}) {
		t.Errorf("got %v, want only pid 1", p)
	}
}
