package resource

import (
	"errors"
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ckpt/ckpt/image/pb"
	"github.com/ckpt/ckpt/proc"
)

func TestFileLocks(t *testing.T) {
	reg := &pb.File{Kind: pb.File_REGULAR, Path: "/f"}
	own, posix, err := fileLocks(1, 7, reg, []proc.FdLock{
		{Kind: "POSIX", Write: true, Start: 10, End: 29},
		{Kind: "POSIX", Start: 100, End: -1},
		{Kind: "FLOCK", Write: true, End: -1},
		{Kind: "OFDLCK", Start: 0, End: 4},
	})
	if err != nil {
		t.Fatal(err)
	}
	wantPosix := []*pb.FileLock{
		{Kind: pb.FileLock_POSIX, Write: true, Start: 10, Len: 20, Fd: 7},
		{Kind: pb.FileLock_POSIX, Start: 100, Len: 0, Fd: 7},
	}
	wantOwn := []*pb.FileLock{
		{Kind: pb.FileLock_FLOCK, Write: true},
		{Kind: pb.FileLock_OFD, Start: 0, Len: 5},
	}
	for i, l := range wantPosix {
		if i >= len(posix) || !proto.Equal(l, posix[i]) {
			t.Errorf("POSIX locks %v, want %v", posix, wantPosix)
			break
		}
	}
	for i, l := range wantOwn {
		if i >= len(own) || !proto.Equal(l, own[i]) {
			t.Errorf("description locks %v, want %v", own, wantOwn)
			break
		}
	}
	for _, tt := range []struct {
		name string
		f    *pb.File
		l    proc.FdLock
	}{
		{"lease", reg, proc.FdLock{Kind: "LEASE", End: -1}},
		{"delegation", reg, proc.FdLock{Kind: "DELEG", End: -1}},
		{"on a pipe", &pb.File{Kind: pb.File_PIPE, Path: "pipe:[1]"}, proc.FdLock{Kind: "FLOCK", End: -1}},
	} {
		if _, _, err := fileLocks(1, 3, tt.f, []proc.FdLock{tt.l}); !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: error %v, want ErrUnsupported", tt.name, err)
		}
	}
}

func TestCheckLock(t *testing.T) {
	for _, tt := range []struct {
		l  *pb.FileLock
		ok bool
	}{
		{&pb.FileLock{Kind: pb.FileLock_POSIX, Start: 10, Len: 20}, true},
		{&pb.FileLock{Kind: pb.FileLock_OFD, Start: math.MaxInt64, Len: 0}, true},
		{&pb.FileLock{Kind: 7}, false},
		{&pb.FileLock{Start: math.MaxInt64 + 1}, false},
		{&pb.FileLock{Start: 1, Len: math.MaxInt64}, false},
	} {
		if err := checkLock(tt.l); (err == nil) != tt.ok {
			t.Errorf("checkLock(%v) = %v, want ok %v", tt.l, err, tt.ok)
		}
	}
}
