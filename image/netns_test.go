package image

import (
	"bytes"
	"io"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ckpt/ckpt/image/pb"
)

// A network namespace record (type 15) travels through writer and reader.
func TestNetNamespaceRecord(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	want := &pb.NetNamespace{Id: 7, Links: []*pb.NetLink{{Index: 1, Name: "lo"}, {Index: 2, Name: "dummy0", Kind: "dummy", Mtu: 1400}}}
	if err := w.Message(TypeHeader, &pb.Header{FormatVersion: FormatVersion, PageSize: PageSize, Arch: "x86_64"}); err != nil {
		t.Fatal(err)
	}
	if err := w.Message(TypeNetNamespace, want); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := NewReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	var got *pb.NetNamespace
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if rec.Type == TypeNetNamespace {
			got = &pb.NetNamespace{}
			if err := Unmarshal(rec, got); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !proto.Equal(got, want) {
		t.Errorf("read %v, wrote %v", got, want)
	}
	if TypeNetNamespace.String() != "netns" {
		t.Errorf("type 15 is called %q", TypeNetNamespace.String())
	}
}
