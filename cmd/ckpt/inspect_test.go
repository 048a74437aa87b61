package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/ckpt/ckpt/image"
	"github.com/ckpt/ckpt/image/pb"
)

// TestInspectJSONNotUTF8: a name that is not UTF-8 (as the kernel may give
// it) is printed with U+FFFD in its place, not refused.
func TestInspectJSONNotUTF8(t *testing.T) {
	var img bytes.Buffer
	w, err := image.NewWriter(&img)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Message(image.TypeHeader, &pb.Header{FormatVersion: image.FormatVersion, PageSize: image.PageSize, Arch: "x86_64"}); err != nil {
		t.Fatal(err)
	}
	if err := w.Message(image.TypeFile, &pb.File{Id: 1, Path: "/tmp/caf\xe9"}); err != nil {
		t.Fatal(err)
	}
	if err := w.Message(image.TypeProcess, &pb.Process{Pid: 7, Comm: "\xffname", Threads: []*pb.Thread{{Tid: 7, Comm: "t\xfe"}}}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := inspect(&img, &out, true); err != nil {
		t.Fatalf("inspect --json: %v", err)
	}
	text := out.String()
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if !json.Valid([]byte(line)) {
			t.Errorf("not JSON: %s", line)
		}
	}
	for _, want := range []string{"/tmp/caf\uFFFD", "\uFFFDname", "t\uFFFD"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
}

// TestVmaFlags: the names inspect gives an area's advice, MAP_NORESERVE
// and mlock; an advice this ckpt does not know is shown by number.
func TestVmaFlags(t *testing.T) {
	for _, tc := range []struct {
		v    *pb.Vma
		want string
	}{
		{&pb.Vma{}, ""},
		{&pb.Vma{Advice: []uint32{14, 16}}, " [hugepage, dontdump]"},
		{&pb.Vma{Advice: []uint32{12}, Locked: true}, " [mergeable, locked]"},
		{&pb.Vma{Noreserve: true}, " [noreserve]"},
		{&pb.Vma{Advice: []uint32{99}}, " [advice 99]"},
	} {
		if got := vmaFlags(tc.v); got != tc.want {
			t.Errorf("vmaFlags(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}

// TestProcessAttrs: inspect names the prctl state that differs from a
// fresh process's, and nothing for an image older than the fields.
func TestProcessAttrs(t *testing.T) {
	for _, tc := range []struct {
		p    *pb.Process
		want string
	}{
		{&pb.Process{}, ""},
		{&pb.Process{Dumpable: 2}, ""},
		{&pb.Process{Dumpable: 1, ChildSubreaper: true}, "not dumpable, child subreaper"},
		{&pb.Process{Dumpable: 3, ThpDisabled: true, NoNewPrivs: true}, "dumpable by root only, transparent huge pages disabled, no_new_privs"},
		{&pb.Process{OomScoreAdj: proto.Int32(0)}, ""},
		{&pb.Process{OomScoreAdj: proto.Int32(-500)}, "oom_score_adj -500"},
		{&pb.Process{JobStop: uint32(unix.SIGTSTP), NoNewPrivs: true}, "stopped by SIGTSTP, no_new_privs"},
		{&pb.Process{Seccomp: []*pb.SeccompFilter{{}, {}}}, "2 seccomp filters"},
	} {
		if got := processAttrs(tc.p); got != tc.want {
			t.Errorf("processAttrs(%v) = %q, want %q", tc.p, got, tc.want)
		}
	}
}
