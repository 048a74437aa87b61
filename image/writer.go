package image

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/proto"

	"github.com/ckpt/ckpt/image/pb"
)

// NewCompressor returns the zstd stream that --compress images are written
// through; closing it completes the stream. The fastest level on two
// threads, for throughput; a 1 MiB window rather than the default 8 MiB,
// which keeps ckpt's heap small (page data gains little from long-range
// matches) and so spares the collector from running continuously under
// ckpt's memory limit.
func NewCompressor(w io.Writer) (*zstd.Encoder, error) {
	return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(2), zstd.WithWindowSize(1<<20))
}

// Writer writes an image stream. It buffers only a small window; page data
// is copied straight through.
type Writer struct {
	w       *bufio.Writer
	under   io.Writer // w's destination, for page data written past the buffer
	crc     uint32    // CRC-32C of the stream so far
	off     uint64
	records uint64
	pages   uint64
	procs   uint32
	err     error
	closed  bool
	// Progress, if set, counts the bytes written, for a progress display
	// running on another goroutine.
	Progress *atomic.Uint64
}

// NewWriter starts an image on w by writing the magic and version.
func NewWriter(w io.Writer) (*Writer, error) {
	return newWriterVersion(w, FormatVersion)
}

// newWriterVersion writes an image of an older version, for tests.
func newWriterVersion(w io.Writer, version uint32) (*Writer, error) {
	iw := &Writer{w: bufio.NewWriterSize(w, 1<<20), under: w}
	var hdr [headerLen]byte
	copy(hdr[:], Magic)
	binary.LittleEndian.PutUint32(hdr[8:], version)
	if err := iw.write(hdr[:]); err != nil {
		return nil, err
	}
	return iw, nil
}

func (w *Writer) write(b []byte) error {
	if w.err != nil {
		return w.err
	}
	n, err := w.w.Write(b)
	w.crc = crc32.Update(w.crc, castagnoli, b[:n])
	return w.wrote(n, err)
}

// directWrite is the size from which page data bypasses the buffer: it
// would be copied once more and, in a small checkpoint, fault in buffer
// pages for nothing.
const directWrite = 64 << 10

// writeSummed writes b, whose CRC-32C the caller computed, folding that
// into the stream's checksum instead of computing it here.
func (w *Writer) writeSummed(b []byte, sum uint32) error {
	if w.err != nil {
		return w.err
	}
	var n int
	var err error
	if len(b) >= directWrite {
		if err = w.w.Flush(); err == nil {
			n, err = w.under.Write(b)
		}
	} else {
		n, err = w.w.Write(b)
	}
	if n == len(b) {
		w.crc = crc32cCombine(w.crc, sum, uint64(n))
	} else {
		w.crc = crc32.Update(w.crc, castagnoli, b[:n])
	}
	return w.wrote(n, err)
}

// wrote accounts for n bytes written and records err.
func (w *Writer) wrote(n int, err error) error {
	w.off += uint64(n)
	if w.Progress != nil {
		w.Progress.Add(uint64(n))
	}
	if err != nil {
		w.err = fmt.Errorf("write image: %w", err)
	}
	return w.err
}

func (w *Writer) recordHeader(t Type, length uint64) error {
	var h [recordHeaderLen]byte
	binary.LittleEndian.PutUint32(h[0:], uint32(t))
	binary.LittleEndian.PutUint64(h[8:], length)
	w.records++
	return w.write(h[:])
}

var zeros [PageSize]byte

func (w *Writer) padTo8(n uint64) error {
	if p := pad8(n); p != 0 {
		return w.write(zeros[:p])
	}
	return nil
}

// Message writes one metadata record.
func (w *Writer) Message(t Type, m proto.Message) error {
	b, err := marshal(m)
	if err != nil {
		return fmt.Errorf("encode %v record: %w", t, err)
	}
	return w.record(t, b)
}

// record writes one metadata record with an encoded payload.
func (w *Writer) record(t Type, b []byte) error {
	if t == TypeProcess {
		w.procs++
	}
	if err := w.recordHeader(t, uint64(len(b))); err != nil {
		return err
	}
	if err := w.write(b); err != nil {
		return err
	}
	return w.padTo8(uint64(len(b)))
}

// Pages writes a PAGEMAP record for runs, then a PAGES record whose payload
// starts 4 KiB-aligned, and calls fill to produce exactly the pages' bytes.
// fill receives a writer that accepts page data; it must write all of it.
func (w *Writer) Pages(pm *pb.PageMap, fill func(io.Writer) error) error {
	return w.pageRecords(pm, func(cw *countWriter) error { return fill(cw) })
}

// PageData writes a PAGEMAP record for runs and a PAGES record of data,
// the runs' pages. sum is Checksum(data), computed by the caller, possibly
// on another goroutine ahead of the write.
func (w *Writer) PageData(pm *pb.PageMap, data []byte, sum uint32) error {
	return w.pageRecords(pm, func(cw *countWriter) error { return cw.writeSummed(data, sum) })
}

func (w *Writer) pageRecords(pm *pb.PageMap, fill func(*countWriter) error) error {
	var n uint64
	for _, r := range pm.Runs {
		n += r.Npages
	}
	if err := w.Message(TypePageMap, pm); err != nil {
		return err
	}
	return w.alignedPages(n, fill)
}

// alignedPages writes a PAGES record of n pages, after a PAD record if its
// payload would not start on a page boundary otherwise.
func (w *Writer) alignedPages(n uint64, fill func(*countWriter) error) error {
	// Pad so that the PAGES payload lands on a page boundary.
	payloadAt := w.off + recordHeaderLen
	if gap := (PageSize - payloadAt%PageSize) % PageSize; gap != 0 {
		if gap < recordHeaderLen {
			gap += PageSize
		}
		if err := w.recordHeader(TypePad, gap-recordHeaderLen); err != nil {
			return err
		}
		for left := gap - recordHeaderLen; left > 0; {
			c := min(left, PageSize)
			if err := w.write(zeros[:c]); err != nil {
				return err
			}
			left -= c
		}
	}
	if err := w.recordHeader(TypePages, n*PageSize); err != nil {
		return err
	}
	cw := &countWriter{w: w}
	if err := fill(cw); err != nil {
		if w.err != nil {
			return w.err
		}
		return err
	}
	if cw.n != n*PageSize {
		return fmt.Errorf("pages record: wrote %d bytes, announced %d", cw.n, n*PageSize)
	}
	w.pages += n
	return nil
}

type countWriter struct {
	w *Writer
	n uint64
}

func (c *countWriter) Write(b []byte) (int, error) {
	if err := c.w.write(b); err != nil {
		return 0, err
	}
	c.n += uint64(len(b))
	return len(b), nil
}

func (c *countWriter) writeSummed(b []byte, sum uint32) error {
	if err := c.w.writeSummed(b, sum); err != nil {
		return err
	}
	c.n += uint64(len(b))
	return nil
}

// Fail writes an error record so that a reader learns why the stream ends,
// and flushes. The image stays incomplete: no tail is written.
func (w *Writer) Fail(cause error) error {
	if w.closed {
		return nil
	}
	w.closed = true
	w.err = nil // a previous write error may have been transient; try once
	if err := w.Message(TypeError, &pb.Error{Message: cause.Error()}); err != nil {
		return err
	}
	return w.w.Flush()
}

// Close writes the tail and flushes. Only an image closed without error is
// complete.
func (w *Writer) Close() error {
	if w.closed {
		return fmt.Errorf("image already closed")
	}
	w.closed = true
	tail := &pb.Tail{Records: w.records, Pages: w.pages, Bytes: w.off, Crc32C: w.crc, Processes: w.procs}
	if err := w.Message(TypeTail, tail); err != nil {
		return err
	}
	if err := w.w.Flush(); err != nil {
		return fmt.Errorf("write image: %w", err)
	}
	return nil
}

// Offset is the number of bytes written so far.
func (w *Writer) Offset() uint64 { return w.off }
