package image

import (
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	"github.com/ckpt/ckpt/image/pb"
)

// version is one format version and the step that upgrades an image of it
// to the next.
type version struct {
	number uint32
	// changes says what this version changed, for docs and messages.
	changes string
	// upgrade rewrites one metadata record of this version (the header
	// included) into the records of the next; nil for the newest version.
	// Pages records are copied as they are and never seen here. The chain
	// sets the header's format_version itself.
	upgrade func(Record) ([]Record, error)
}

// versions lists every format version ckpt wrote, oldest first; versions[i]
// is version OldestVersion+i. A new version appends a row and gives the
// previous row its upgrade step.
var versions = [...]version{
	{1, "the first version", upgradeV1},
	{2, "records 10-16 (namespaces, SysV IPC, mounts, network, leaks); the PIDs of a container image are those inside its own PID namespace", nil},
}

// upgradeV1 needs to change nothing but the version: a version 1 image has
// no namespace records and host PIDs, which is what version 2 says for a
// checkpoint of processes in ckpt's own namespaces. It only refuses record
// types version 1 did not have.
func upgradeV1(rec Record) ([]Record, error) {
	if rec.Type > TypeTail {
		return nil, fmt.Errorf("image damaged at byte %d: record type %d in a version 1 image", rec.Offset, uint32(rec.Type))
	}
	return []Record{rec}, nil
}

// VersionInfo describes one format version.
type VersionInfo struct {
	Number  uint32
	Changes string
}

// Versions returns every format version this ckpt reads, oldest first.
func Versions() []VersionInfo {
	vs := make([]VersionInfo, len(versions))
	for i, v := range versions {
		vs[i] = VersionInfo{v.number, v.changes}
	}
	return vs
}

// Compression chooses how Convert compresses its output.
type Compression int

const (
	// SameCompression compresses the output if the input was compressed.
	SameCompression Compression = iota
	// Compress writes a zstd-compressed image.
	Compress
	// Decompress writes an uncompressed image.
	Decompress
)

// ConvertResult says what Convert did.
type ConvertResult struct {
	// From is the input's format version; To is FormatVersion.
	From, To uint32
	// Compressed says whether the output is zstd-compressed.
	Compressed bool
	// Bytes is the size of the (uncompressed) output stream.
	Bytes uint64
}

// Convert copies the image on in to out, upgraded to FormatVersion through
// each version's step in turn. It streams: only one metadata record and a
// 1 MiB page buffer are held at a time, whatever the image size. The input
// is checked as it is read (its tail last), and the output gets new
// alignment padding, counts and checksum. An image of the current version
// is copied unchanged (but still checked): its uncompressed stream byte
// for byte.
//
// On error the output is incomplete: it ends with an error record (so that
// a reader learns why), and a caller writing a file should remove it.
func Convert(in io.Reader, out io.Writer, c Compression) (ConvertResult, error) {
	r, err := NewReader(in)
	if err != nil {
		return ConvertResult{}, err
	}
	res := ConvertResult{From: r.Version, To: FormatVersion, Compressed: c == Compress || c == SameCompression && r.Compressed}
	steps := versions[r.Version-OldestVersion : len(versions)-1]
	var enc *zstd.Encoder
	if res.Compressed {
		if enc, err = NewCompressor(out); err != nil {
			return res, err
		}
		out = enc
	}
	w, err := NewWriter(out)
	if err != nil {
		return res, err
	}
	if err := convertRecords(r, w, steps); err != nil {
		w.Fail(fmt.Errorf("ckpt convert: %w", err)) // a reader of the output learns why it ends
		if enc != nil {
			enc.Close()
		}
		return res, err
	}
	if err := w.Close(); err != nil {
		return res, err
	}
	if enc != nil {
		if err := enc.Close(); err != nil {
			return res, fmt.Errorf("write compressed image: %w", err)
		}
	}
	res.Bytes = w.Offset()
	return res, nil
}

func convertRecords(r *Reader, w *Writer, steps []version) error {
	emit := func(rec Record) error {
		recs := []Record{rec}
		for _, s := range steps {
			var next []Record
			for _, rec := range recs {
				out, err := s.upgrade(rec)
				if err != nil {
					return fmt.Errorf("upgrade from version %d: %w", s.number, err)
				}
				for _, o := range out {
					if o.Type == TypeHeader {
						if o, err = setHeaderVersion(o, s.number+1); err != nil {
							return err
						}
					}
					next = append(next, o)
				}
			}
			recs = next
		}
		for _, rec := range recs {
			if err := w.record(rec.Type, rec.Payload); err != nil {
				return err
			}
		}
		return nil
	}
	if err := emit(Record{Type: TypeHeader, Len: uint64(len(r.headerRaw)), Payload: r.headerRaw, Offset: headerLen}); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if rec.Type == TypeHeader {
			return fmt.Errorf("image damaged at byte %d: a second header record", rec.Offset)
		}
		if rec.Type != TypePages {
			if err := emit(rec); err != nil {
				return err
			}
			continue
		}
		err = w.alignedPages(rec.Len/PageSize, func(pw *countWriter) error {
			_, err := io.CopyBuffer(pw, onlyReader{r}, buf)
			return err
		})
		if err != nil {
			return err
		}
	}
}

// onlyReader hides the Reader's other methods from io.CopyBuffer, which
// would otherwise look for a WriterTo.
type onlyReader struct{ io.Reader }

func setHeaderVersion(rec Record, v uint32) (Record, error) {
	h := &pb.Header{}
	if err := Unmarshal(rec, h); err != nil {
		return rec, err
	}
	h.FormatVersion = v
	b, err := marshal(h)
	if err != nil {
		return rec, fmt.Errorf("encode header: %w", err)
	}
	rec.Payload, rec.Len = b, uint64(len(b))
	return rec, nil
}
