package trace

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
)

var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// Writer writes a trace, zstd-compressed unless made with Plain.
type Writer struct {
	bw   *bufio.Writer
	zw   *zstd.Encoder // nil: plain text
	line []byte
	last time.Duration
	n    uint64
}

// WriterOption changes how a Writer writes.
type WriterOption func(*writerConfig)

type writerConfig struct{ plain bool }

// Plain writes uncompressed text (for tests and small hand-made traces).
func Plain() WriterOption { return func(c *writerConfig) { c.plain = true } }

// NewWriter writes the header to w and returns a Writer for the records.
// Close flushes; it does not close w.
func NewWriter(w io.Writer, h Header, opts ...WriterOption) (*Writer, error) {
	var cfg writerConfig
	for _, o := range opts {
		o(&cfg)
	}
	tw := &Writer{line: make([]byte, 0, 256)}
	if cfg.plain {
		tw.bw = bufio.NewWriterSize(w, 64<<10)
	} else {
		// One encoder goroutine: the generator is the bottleneck of a
		// tracegen, not the compression, and a replay reads far faster
		// than it sends.
		zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		tw.zw, tw.bw = zw, bufio.NewWriterSize(zw, 64<<10)
	}
	var hb strings.Builder
	hb.WriteString(magicLine + "\n")
	for _, kv := range h.Meta {
		if kv.Key == "" || strings.ContainsAny(kv.Key, " \t\r\n=") || strings.ContainsAny(kv.Value, " \t\r\n") {
			return nil, fmt.Errorf("trace: meta %q=%q: keys and values must not contain white space", kv.Key, kv.Value)
		}
		fmt.Fprintf(&hb, "#meta %s=%s\n", kv.Key, kv.Value)
	}
	seen := make(map[string]bool, len(h.Items))
	for i := range h.Items {
		it := &h.Items[i]
		if err := it.check(); err != nil {
			return nil, fmt.Errorf("trace: %w", err)
		}
		if seen[it.SKU] {
			return nil, fmt.Errorf("trace: sku %s declared twice", it.SKU)
		}
		seen[it.SKU] = true
		hb.WriteString(it.line())
		hb.WriteByte('\n')
	}
	if _, err := tw.bw.WriteString(hb.String()); err != nil {
		return nil, err
	}
	return tw, nil
}

// Write appends one record. Offsets must not decrease.
func (w *Writer) Write(r *Record) error {
	if err := r.check(); err != nil {
		return fmt.Errorf("trace: record %d: %w", w.n+1, err)
	}
	if r.At < w.last {
		return fmt.Errorf("trace: record %d at %v is before the previous one at %v (records must be in time order)", w.n+1, r.At, w.last)
	}
	w.last = r.At
	w.n++
	b := AppendRecord(w.line[:0], r)
	w.line = b
	_, err := w.bw.Write(b)
	return err
}

// Count is the number of records written so far.
func (w *Writer) Count() uint64 { return w.n }

// Close flushes the buffered records and ends the compressed stream.
func (w *Writer) Close() error {
	if err := w.bw.Flush(); err != nil {
		return err
	}
	if w.zw != nil {
		return w.zw.Close()
	}
	return nil
}

// AppendRecord appends r as one line (with its newline) to dst.
func AppendRecord(dst []byte, r *Record) []byte {
	dst = strconv.AppendInt(dst, int64(r.At/time.Microsecond), 10)
	dst = append(dst, ' ')
	dst = append(dst, r.Kind.String()...)
	dst = append(dst, ' ')
	dst = append(dst, r.User...)
	dst = append(dst, ' ')
	dst = append(dst, r.IP...)
	dst = append(dst, ' ')
	dst = appendOrDash(dst, r.SKU)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, r.Qty, 10)
	dst = append(dst, ' ')
	dst = appendOrDash(dst, r.Key)
	return append(dst, '\n')
}

func appendOrDash(dst, b []byte) []byte {
	if len(b) == 0 {
		return append(dst, '-')
	}
	return append(dst, b...)
}

// Reader reads a trace record by record. It allocates nothing per record.
type Reader struct {
	br     *bufio.Reader
	zr     *zstd.Decoder
	h      Header
	line   int // line number of the last line read, for errors
	last   time.Duration
	n      uint64
	peeked []byte // the first record line, read while looking for the end of the header
	closer io.Closer
}

// NewReader reads the header from r, which may be zstd-compressed or plain.
func NewReader(r io.Reader) (*Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	tr := &Reader{}
	if magic, _ := br.Peek(4); bytes.Equal(magic, zstdMagic) {
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, err
		}
		tr.zr = zr
		br = bufio.NewReaderSize(zr, 64<<10)
	}
	tr.br = br
	first, err := tr.readLine()
	if err != nil {
		if err == io.EOF {
			return nil, errors.New("trace: empty file (want a first line \"" + magicLine + "\")")
		}
		return nil, err
	}
	if string(first) != magicLine {
		if strings.HasPrefix(string(first), "#flashgate-trace ") {
			return nil, fmt.Errorf("trace: %q: this flashgate reads format v%d; regenerate the trace or use the flashgate that wrote it", first, Version)
		}
		return nil, fmt.Errorf("trace: the first line is not %q: not a flashgate trace (or a corrupt one)", magicLine)
	}
	seen := map[string]bool{}
	for {
		b, err := tr.readLine()
		if err == io.EOF {
			return tr, nil
		}
		if err != nil {
			return nil, err
		}
		if len(b) == 0 || b[0] != '#' {
			tr.peeked = b
			return tr, nil
		}
		s := string(b)
		switch {
		case strings.HasPrefix(s, "#sku ") || s == "#sku":
			it, err := parseItem(s)
			if err != nil {
				return nil, tr.errorf("%v", err)
			}
			if seen[it.SKU] {
				return nil, tr.errorf("sku %s declared twice", it.SKU)
			}
			if len(tr.h.Items) == maxHeaderSKUs {
				return nil, tr.errorf("more than %d sale items", maxHeaderSKUs)
			}
			seen[it.SKU] = true
			tr.h.Items = append(tr.h.Items, it)
		case strings.HasPrefix(s, "#meta "):
			kvs, err := parseMeta(s)
			if err != nil {
				return nil, tr.errorf("%v", err)
			}
			tr.h.Meta = append(tr.h.Meta, kvs...)
		}
	}
}

// Open opens a trace file; Close the Reader to close the file.
func Open(path string) (*Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	r, err := NewReader(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r.closer = f
	return r, nil
}

// Header is the trace's header.
func (r *Reader) Header() *Header { return &r.h }

// Count is the number of records read so far.
func (r *Reader) Count() uint64 { return r.n }

// Next reads the next record into rec; io.EOF after the last one. rec's
// slices point into the Reader's buffer until the next call.
func (r *Reader) Next(rec *Record) error {
	for {
		var b []byte
		if r.peeked != nil {
			b, r.peeked = r.peeked, nil
		} else {
			var err error
			if b, err = r.readLine(); err != nil {
				return err
			}
		}
		if len(b) == 0 || b[0] == '#' {
			continue // blank lines and comments between records
		}
		if err := parseRecord(b, rec); err != nil {
			return r.errorf("%v", err)
		}
		if rec.At < r.last {
			return r.errorf("offset %d µs is before the previous record's %d µs (records must be in time order)", rec.At/time.Microsecond, r.last/time.Microsecond)
		}
		r.last = rec.At
		r.n++
		return nil
	}
}

// Close releases the decoder and closes the file of Open.
func (r *Reader) Close() error {
	if r.zr != nil {
		r.zr.Close()
	}
	if r.closer != nil {
		return r.closer.Close()
	}
	return nil
}

func (r *Reader) errorf(format string, args ...any) error {
	return fmt.Errorf("trace: line %d: %s", r.line, fmt.Sprintf(format, args...))
}

// readLine returns the next line without its newline (CRLF accepted); the
// slice is valid until the next call.
func (r *Reader) readLine() ([]byte, error) {
	b, err := r.br.ReadSlice('\n')
	r.line++
	switch {
	case err == bufio.ErrBufferFull || len(b) > maxLineBytes:
		return nil, r.errorf("longer than %d bytes", maxLineBytes)
	case err == io.EOF && len(b) > 0:
		// last line without a newline
	case err != nil:
		if err == io.EOF {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("trace: reading line %d: %w", r.line, err)
	}
	b = bytes.TrimSuffix(b, []byte{'\n'})
	return bytes.TrimSuffix(b, []byte{'\r'}), nil
}

// parseRecord parses "offset_us kind user ip sku qty key" into rec.
func parseRecord(b []byte, rec *Record) error {
	var f [7][]byte
	n := 0
	for n < 7 {
		i := bytes.IndexByte(b, ' ')
		if i < 0 {
			f[n] = b
			n++
			b = nil
			break
		}
		f[n], b = b[:i], b[i+1:]
		n++
	}
	if n != 7 || b != nil {
		return errors.New("want 7 fields separated by one space: offset_us kind user ip sku qty key")
	}
	for i, x := range f {
		if len(x) == 0 {
			return fmt.Errorf("field %d of 7 is empty (two spaces in a row, or one at the end of the line); write \"-\" for none", i+1)
		}
	}
	us, ok := parseUint(f[0])
	if !ok {
		return fmt.Errorf("offset %q is not a number of microseconds", f[0])
	}
	rec.At = time.Duration(us) * time.Microsecond
	k, ok := kindOf(f[1])
	if !ok {
		return fmt.Errorf("kind %q is not one of order, retry, poll, cancel", f[1])
	}
	rec.Kind = k
	rec.User, rec.IP = f[2], f[3]
	rec.SKU, rec.Key = dashNil(f[4]), dashNil(f[6])
	q, ok := parseUint(f[5])
	if !ok {
		return fmt.Errorf("qty %q is not a number", f[5])
	}
	rec.Qty = int64(q)
	return rec.check()
}

func kindOf(b []byte) (Kind, bool) {
	for k, name := range kindNames {
		if name != "" && string(b) == name {
			return Kind(k), true
		}
	}
	return 0, false
}

func dashNil(b []byte) []byte {
	if len(b) == 1 && b[0] == '-' {
		return nil
	}
	return b
}

// parseUint parses up to 15 decimal digits (no sign).
func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}
