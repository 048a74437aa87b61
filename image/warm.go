package image

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/ckpt/ckpt/image/pb"
)

// Warm builds the protobuf runtime's encoders and decoders for the image
// messages. The runtime builds them lazily, on a type's first use, at tens
// to hundreds of microseconds a type: run on a goroutine of its own at
// start-up, Warm does that on the second core while the first one works,
// instead of in the middle of a checkpoint's frozen time or a restart.
// Concurrent first uses wait for the same one-time build, so calling Warm
// never duplicates work.
func Warm() {
	seen := map[protoreflect.FullName]bool{}
	for _, m := range []proto.Message{&pb.Header{}, &pb.File{}, &pb.Mm{}, &pb.Process{}, &pb.PageMap{}, &pb.Leak{}, &pb.Tail{}} {
		warm(m.ProtoReflect().Descriptor(), seen)
	}
}

// warm builds the codecs of md and of the messages its fields hold. Only
// the records every image has are warmed: those of containers, SysV IPC
// and the like are built on first use, so as not to spend the second
// core's time on what most checkpoints never touch.
func warm(md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) {
	if seen[md.FullName()] {
		return
	}
	seen[md.FullName()] = true
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName()); err == nil {
		proto.Size(mt.New().Interface())
	}
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		if f := fields.Get(i); f.Message() != nil && !f.IsMap() {
			warm(f.Message(), seen)
		}
	}
}
