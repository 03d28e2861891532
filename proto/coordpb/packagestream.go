package coordpb

import (
	"errors"
	"io"
)

// PackageChunkSize is the data per message of a package stream (an upload,
// a copy to another coordinator, an agent's fetch), well under gRPC's 4 MiB
// message limit.
const PackageChunkSize = 256 << 10

// SendPackage sends the bytes of r in chunks, header (if any) with the
// first, which an upload needs even when r is empty. The error is send's
// or r's, as they returned it.
func SendPackage(send func(*PackageChunk) error, r io.Reader, header *Package) error {
	buf := make([]byte, PackageChunkSize)
	first := true
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 || (first && header != nil) {
			m := &PackageChunk{Data: buf[:n]}
			if first {
				m.Header = header
			}
			if serr := send(m); serr != nil {
				return serr
			}
			first = false
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// PackageReader reads the bytes of a package stream: first (the data that
// came with the header, if any), then every chunk recv returns until its
// io.EOF at the end of the stream.
type PackageReader struct {
	buf  []byte
	recv func() (*PackageChunk, error)
}

// NewPackageReader returns a reader of the stream that recv receives.
func NewPackageReader(first []byte, recv func() (*PackageChunk, error)) *PackageReader {
	return &PackageReader{buf: first, recv: recv}
}

func (r *PackageReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		m, err := r.recv()
		if err != nil {
			return 0, err
		}
		r.buf = m.Data
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}
