package broker

import (
	"bytes"

	"github.com/twmb/franz-go/pkg/kgo"
)

// CompressMin is the default of Compression's minBytes: ~16 orders.
const CompressMin = 4096

// Compression is the producers' batch compression: zstd (klauspost/compress,
// through franz-go), except for batches smaller than minBytes, which go out
// uncompressed. zstd's cost is mostly per batch, not per byte: building its
// entropy tables takes ~5 µs whatever the size, so a batch of one order (~230
// bytes) costs as much to compress as one of 30, and saves ~30 bytes
// (tuning.md, "The producer burns CPU at moderate rates"). minBytes <= 0
// compresses every batch. Consumers need nothing: each batch says its codec.
func Compression(minBytes int) kgo.Opt {
	// None is the fallback for brokers older than zstd; an error only
	// comes from an unknown codec.
	inner, err := kgo.DefaultCompressor(kgo.ZstdCompression(), kgo.NoCompression())
	if err != nil {
		panic("broker: zstd compressor: " + err.Error())
	}
	if minBytes <= 0 {
		return kgo.WithCompressor(inner)
	}
	return kgo.WithCompressor(&minSizeCompressor{min: minBytes, inner: inner})
}

type minSizeCompressor struct {
	min   int
	inner kgo.Compressor
}

func (c *minSizeCompressor) Compress(dst *bytes.Buffer, src []byte, flags ...kgo.CompressFlag) ([]byte, kgo.CompressionCodecType) {
	if len(src) < c.min {
		return src, kgo.CodecNone // franz-go sends the batch as it is
	}
	return c.inner.Compress(dst, src, flags...)
}
