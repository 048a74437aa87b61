package image

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/proto"

	"github.com/ckpt/ckpt/image/pb"
)

// ErrNotImage is returned for a stream that does not start with the magic.
var ErrNotImage = errors.New("not a ckpt image (bad magic)")

// Reader reads an image stream sequentially and checks it as it goes.
type Reader struct {
	r       *bufio.Reader
	crc     hash.Hash32
	off     uint64
	records uint64
	pages   uint64
	procs   uint32
	// left is what remains unread of the current PAGES payload.
	left   uint64
	pad    uint64
	Header *pb.Header
	Tail   *pb.Tail
	// Version is the stream's format version, OldestVersion to
	// FormatVersion; only FormatVersion can be restarted (CheckCurrent).
	Version uint32
	// Compressed says the stream was zstd-compressed.
	Compressed bool
	// headerRaw is the header record's payload, copied as is by Convert.
	headerRaw []byte
	// Progress, if set, counts the bytes read, for a progress display
	// running on another goroutine.
	Progress *atomic.Uint64
}

// Record is one record returned by Next. For TypePages, Payload is nil and
// the page bytes are read with Reader.Read before the next call to Next.
type Record struct {
	Type    Type
	Len     uint64
	Payload []byte
	// Offset is the stream offset of the record header.
	Offset uint64
}

// readBuffer is the reader's buffer: enough for metadata records, and
// small enough that page data, read in larger pieces, bypasses it (bufio
// reads a piece at least as large as its buffer straight into the
// caller's): pages are copied once, from the image into the restorer's
// buffer, and a small image faults in few buffer pages.
const readBuffer = 64 << 10

// zstdMagic opens a zstd frame: images written with --compress.
var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// NewReader checks the magic and version and reads the header record. A
// zstd-compressed image is decompressed on the fly. Every version from
// OldestVersion to FormatVersion is accepted; a restorer must also call
// CheckCurrent.
func NewReader(r io.Reader) (*Reader, error) {
	br := bufio.NewReaderSize(r, readBuffer)
	compressed := false
	if head, _ := br.Peek(4); bytes.Equal(head, zstdMagic) {
		compressed = true
		// Bounded, as the stream is untrusted.
		dec, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderMaxMemory(256<<20))
		if err != nil {
			return nil, fmt.Errorf("compressed image: %w", err)
		}
		br = bufio.NewReaderSize(dec.IOReadCloser(), readBuffer)
	}
	ir := &Reader{r: br, crc: crc32.New(castagnoli), Compressed: compressed}
	var hdr [headerLen]byte
	if _, err := io.ReadFull(ir.r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: stream is only %d bytes", ErrNotImage, len(bytes.TrimRight(hdr[:], "\x00")))
		}
		return nil, fmt.Errorf("read image: %w", err)
	}
	if string(hdr[:8]) != Magic {
		return nil, ErrNotImage
	}
	ir.crc.Write(hdr[:])
	ir.off = headerLen
	ir.Version = binary.LittleEndian.Uint32(hdr[8:])
	switch v := ir.Version; {
	case v > FormatVersion:
		return nil, fmt.Errorf("image format version %d is newer than this ckpt knows (%d to %d); use a newer ckpt", v, OldestVersion, FormatVersion)
	case v < OldestVersion:
		return nil, fmt.Errorf("image format version %d is not a version ckpt ever wrote (%d to %d): image damaged", v, OldestVersion, FormatVersion)
	}
	rec, err := ir.Next()
	if err != nil {
		return nil, err
	}
	if rec.Type != TypeHeader {
		return nil, fmt.Errorf("image damaged: first record is %v, not header", rec.Type)
	}
	h := &pb.Header{}
	if err := unmarshal(rec.Payload, h); err != nil {
		return nil, fmt.Errorf("image damaged: header record: %w", err)
	}
	if h.FormatVersion != ir.Version {
		return nil, fmt.Errorf("image damaged: header record says format version %d, the stream %d", h.FormatVersion, ir.Version)
	}
	if h.PageSize != PageSize {
		return nil, fmt.Errorf("image has page size %d; this machine uses %d", h.PageSize, PageSize)
	}
	ir.Header, ir.headerRaw = h, rec.Payload
	return ir, nil
}

// VersionError is returned by CheckCurrent for an image of an older format
// version, which `ckpt convert` upgrades.
type VersionError struct{ Version uint32 }

func (e *VersionError) Error() string {
	return fmt.Sprintf("image format version %d is older than the version %d this ckpt restarts: upgrade it with `ckpt convert OLD NEW` and restart NEW", e.Version, FormatVersion)
}

// CheckCurrent returns a *VersionError unless the image has the current
// format version: only that one can be restored, older ones must be
// converted first.
func (r *Reader) CheckCurrent() error {
	if r.Version != FormatVersion {
		return &VersionError{Version: r.Version}
	}
	return nil
}

func (r *Reader) readFull(b []byte, hashIt bool) error {
	n, err := io.ReadFull(r.r, b)
	if hashIt {
		r.crc.Write(b[:n])
	}
	r.off += uint64(n)
	if r.Progress != nil {
		r.Progress.Add(uint64(n))
	}
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("image truncated at byte %d: the checkpoint did not finish or the file was cut", r.off)
		}
		return fmt.Errorf("read image at byte %d: %w", r.off, err)
	}
	return nil
}

func (r *Reader) skip(n uint64) error {
	var buf [PageSize]byte
	for n > 0 {
		c := min(n, PageSize)
		if err := r.readFull(buf[:c], true); err != nil {
			return err
		}
		n -= c
	}
	return nil
}

// Next returns the next record. After a valid tail it returns io.EOF. A
// stream that ends with an error record returns that error.
func (r *Reader) Next() (Record, error) {
	if r.Tail != nil {
		return Record{}, io.EOF
	}
	if r.left > 0 {
		if err := r.skip(r.left); err != nil {
			return Record{}, err
		}
		r.left = 0
	}
	if r.pad > 0 {
		if err := r.skip(r.pad); err != nil {
			return Record{}, err
		}
		r.pad = 0
	}
	for {
		start := r.off
		var h [recordHeaderLen]byte
		if err := r.readFull(h[:], false); err != nil {
			return Record{}, err
		}
		t := Type(binary.LittleEndian.Uint32(h[0:]))
		length := binary.LittleEndian.Uint64(h[8:])
		if t != TypeTail {
			r.crc.Write(h[:])
			r.records++
		}
		rec := Record{Type: t, Len: length, Offset: start}
		switch t {
		case TypePad:
			if length > 2*PageSize {
				return Record{}, fmt.Errorf("image damaged at byte %d: pad record of %d bytes", start, length)
			}
			if err := r.skip(length + pad8(length)); err != nil {
				return Record{}, err
			}
			continue
		case TypePages:
			if length%PageSize != 0 || length > MaxPages {
				return Record{}, fmt.Errorf("image damaged at byte %d: pages record of %d bytes", start, length)
			}
			r.left = length
			r.pages += length / PageSize
			return rec, nil
		default:
			if _, known := typeNames[t]; !known {
				return Record{}, fmt.Errorf("image damaged at byte %d: unknown record type %d", start, uint32(t))
			}
		}
		if length > MaxMetadata {
			return Record{}, fmt.Errorf("image damaged at byte %d: %v record of %d bytes", start, t, length)
		}
		sum := r.crc.Sum32()
		hashIt := t != TypeTail
		// Grow the buffer as bytes arrive, so a hostile length costs nothing
		// until the data is really there.
		rec.Payload = make([]byte, 0, min(length, 64<<10))
		for got := uint64(0); got < length; {
			n := min(length-got, 1<<20)
			rec.Payload = append(rec.Payload, make([]byte, n)...)
			if err := r.readFull(rec.Payload[got:got+n], hashIt); err != nil {
				return Record{}, err
			}
			got += n
		}
		var p [8]byte
		if err := r.readFull(p[:pad8(length)], hashIt); err != nil {
			return Record{}, err
		}
		switch t {
		case TypeProcess:
			r.procs++
		case TypeError:
			e := &pb.Error{}
			if err := unmarshal(rec.Payload, e); err != nil {
				return Record{}, fmt.Errorf("image damaged: error record: %w", err)
			}
			return Record{}, fmt.Errorf("image is incomplete: the checkpoint failed: %s", e.Message)
		case TypeTail:
			tail := &pb.Tail{}
			if err := unmarshal(rec.Payload, tail); err != nil {
				return Record{}, fmt.Errorf("image damaged: tail record: %w", err)
			}
			if tail.Crc32C != sum || tail.Bytes != start || tail.Records != r.records || tail.Pages != r.pages || tail.Processes != r.procs {
				return Record{}, fmt.Errorf("image damaged: checksum or counts do not match the tail (crc %08x, want %08x)", sum, tail.Crc32C)
			}
			if _, err := r.r.ReadByte(); err != io.EOF {
				return Record{}, fmt.Errorf("image damaged: data after the tail at byte %d", r.off)
			}
			r.Tail = tail
			return Record{}, io.EOF
		}
		return rec, nil
	}
}

// Read reads page bytes of the current PAGES record.
func (r *Reader) Read(b []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if uint64(len(b)) > r.left {
		b = b[:r.left]
	}
	if err := r.readFull(b, true); err != nil {
		return 0, err
	}
	r.left -= uint64(len(b))
	return len(b), nil
}

// Unmarshal decodes a metadata payload, naming the record on failure.
func Unmarshal(rec Record, m proto.Message) error {
	if err := unmarshal(rec.Payload, m); err != nil {
		return fmt.Errorf("image damaged: %v record at byte %d: %w", rec.Type, rec.Offset, err)
	}
	return nil
}
