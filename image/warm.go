package image

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/ckpt/ckpt/image/pb"
)

// Warm builds the protobuf runtime's encoders and decoders for every image
// message. The runtime builds them lazily, on a type's first use, at tens
// to hundreds of microseconds a type: run on a goroutine of its own at
// start-up, Warm does that on the second core while the first one works,
// instead of in the middle of a checkpoint's frozen time or a restart.
// Concurrent first uses wait for the same one-time build, so calling Warm
// never duplicates work.
func Warm() {
	warmMessages(pb.File_image_pb_image_proto.Messages())
}

func warmMessages(ms protoreflect.MessageDescriptors) {
	for i := 0; i < ms.Len(); i++ {
		md := ms.Get(i)
		if mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName()); err == nil {
			proto.Size(mt.New().Interface())
		}
		warmMessages(md.Messages())
	}
}
