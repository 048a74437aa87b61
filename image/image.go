// Package image reads and writes ckpt image streams.
//
// An image is one stream, written and read strictly sequentially so that it
// can travel through pipes, compressors and ssh. In a nutshell:
//
//	magic (8 bytes) | format version (u32) | reserved (u32)
//	record*          each: type u32 | flags u32 | length u64 | payload | pad to 8
//	tail record      counts and a CRC32C of every byte before it
//
// Metadata payloads are protobuf messages from package pb. Page data travels
// in PAGES records whose payload starts at a 4 KiB-aligned stream offset (a
// PAD record is inserted before when needed), so a file image can later be
// mapped or served lazily. A PAGEMAP record before each PAGES record says
// which pages it holds.
//
// Images are untrusted input: the reader bounds every length and reports a
// damaged or foreign stream as an error, never a panic.
package image

import "fmt"

// Magic opens every image.
const Magic = "CKPT\x89img"

// FormatVersion is the version this package writes and restart accepts.
// Bumping it needs a step in convert.go's versions table and a golden image
// (make golden): see docs/image-format.md.
const FormatVersion = 2

// OldestVersion is the oldest version the reader accepts, for inspect and
// convert.
const OldestVersion = 1

// PageSize is the page size images are written with (x86-64).
const PageSize = 4096

// headerLen is the fixed prefix: magic, version, reserved.
const headerLen = 16

// recordHeaderLen is the size of type, flags and length.
const recordHeaderLen = 16

// MaxMetadata bounds a metadata payload; a larger one is a damaged image.
const MaxMetadata = 64 << 20

// MaxPages bounds one PAGES payload.
const MaxPages = 1 << 40

// Type is a record type.
type Type uint32

// Record types. Values are part of the format: never renumber.
const (
	TypeHeader  Type = 1
	TypeFile    Type = 2
	TypeMm      Type = 3
	TypeProcess Type = 4
	TypePageMap Type = 5
	TypePages   Type = 6
	TypePad     Type = 7
	TypeError   Type = 8
	TypeTail    Type = 9
	// TypeNamespace is a namespace restart re-creates (pb.Namespace).
	TypeNamespace Type = 10
	// TypeLeaks lists what the processes share with processes outside
	// them (pb.Leaks).
	TypeLeaks Type = 16
	// TypeIPC is a pb.IpcNamespace: the SysV IPC objects of one IPC
	// namespace (type 12 is reserved for SysV IPC as well).
	TypeIPC Type = 11

	// Mount namespace (resource/mounts.go): the mount table, then the
	// contents of its tmpfs mounts.
	TypeMountNs   Type = 13
	TypeMountFile Type = 14
)

// TypeNetNamespace holds a pb.NetNamespace, one per network namespace
// (resource/netns.go).
const TypeNetNamespace Type = 15

// TypeFileData is a pb.FileData, a piece of a deleted file's content
// right after its File record (resource/deleted.go). Kept out of the File
// record so that a file of any size streams through the image.
const TypeFileData Type = 17

var typeNames = map[Type]string{
	TypeHeader:       "header",
	TypeFile:         "file",
	TypeMm:           "mm",
	TypeProcess:      "process",
	TypePageMap:      "pagemap",
	TypePages:        "pages",
	TypePad:          "pad",
	TypeError:        "error",
	TypeTail:         "tail",
	TypeNamespace:    "namespace",
	TypeLeaks:        "leaks",
	TypeIPC:          "ipc",
	TypeNetNamespace: "netns",
	TypeMountNs:      "mountns",
	TypeMountFile:    "mountfile",
	TypeFileData:     "filedata",
}

func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type-%d", uint32(t))
}

func pad8(n uint64) uint64 { return (8 - n%8) % 8 }
