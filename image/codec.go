package image

import (
	"google.golang.org/protobuf/proto"
)

// The metadata records are encoded and decoded with the code
// protoc-gen-go-vtproto generates (pb/image_vtproto.pb.go), not with the
// protobuf runtime's reflection: the runtime builds a codec for each
// message type on its first use, tens to hundreds of microseconds a type,
// about 1.3 ms for the types every image holds. A ckpt process lives for
// milliseconds and uses each type a few times, so that set-up was most of
// its protobuf cost. The generated code needs none. Two differences from
// proto.Marshal/Unmarshal, both wanted here: string fields are not checked
// for UTF-8 (a path or a command name is whatever bytes the kernel gave),
// and a message must be empty before it is decoded into (it is merged).

type vtMessage interface {
	MarshalVT() ([]byte, error)
	UnmarshalVT([]byte) error
}

// marshal encodes m.
func marshal(m proto.Message) ([]byte, error) {
	if vm, ok := m.(vtMessage); ok {
		return vm.MarshalVT()
	}
	return proto.Marshal(m)
}

// unmarshal decodes b into m, which it empties first.
func unmarshal(b []byte, m proto.Message) error {
	if vm, ok := m.(vtMessage); ok {
		if r, ok := m.(interface{ Reset() }); ok {
			r.Reset()
		}
		return vm.UnmarshalVT(b)
	}
	return proto.Unmarshal(b, m)
}
