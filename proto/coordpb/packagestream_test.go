package coordpb

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// What SendPackage sends, PackageReader reads back: whole chunks, the
// header with the first (also for no bytes at all), the bytes unchanged.
func TestPackageStreamRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, PackageChunkSize, 2*PackageChunkSize + 7} {
		data := bytes.Repeat([]byte{0xd7}, size)
		hdr := &Package{Sha256: "x", Size: int64(size)}
		var sent []*PackageChunk
		if err := SendPackage(func(m *PackageChunk) error { sent = append(sent, m); return nil }, bytes.NewReader(data), hdr); err != nil {
			t.Fatal(err)
		}
		if wantMsgs := max(1, (size+PackageChunkSize-1)/PackageChunkSize); len(sent) != wantMsgs || sent[0].Header != hdr {
			t.Fatalf("%d bytes: %d messages (first header %v), want %d with the header first", size, len(sent), sent[0].Header, wantMsgs)
		}
		for _, m := range sent[1:] {
			if m.Header != nil {
				t.Fatalf("%d bytes: a header after the first message", size)
			}
		}
		rest := sent[1:]
		got, err := io.ReadAll(NewPackageReader(sent[0].Data, func() (*PackageChunk, error) {
			if len(rest) == 0 {
				return nil, io.EOF
			}
			m := rest[0]
			rest = rest[1:]
			return m, nil
		}))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: read back %d bytes, %v", size, len(got), err)
		}
	}
	// The sender's and the reader's errors come back as they are.
	refused := errors.New("refused")
	if err := SendPackage(func(*PackageChunk) error { return refused }, bytes.NewReader([]byte("x")), nil); !errors.Is(err, refused) {
		t.Errorf("send error: %v", err)
	}
	broken := errors.New("disk")
	if err := SendPackage(func(*PackageChunk) error { return nil }, io.MultiReader(bytes.NewReader([]byte("x")), errReader{broken}), nil); !errors.Is(err, broken) {
		t.Errorf("read error: %v", err)
	}
	if _, err := io.ReadAll(NewPackageReader(nil, func() (*PackageChunk, error) { return nil, broken })); !errors.Is(err, broken) {
		t.Errorf("receive error: %v", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
