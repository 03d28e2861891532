package pkgstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

func TestStore(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("deephaven"), 100000)
	sha := sum(data)
	for _, tt := range []struct {
		name string
		sha  string
		size int64
		body []byte
		want error
	}{
		{"short", sha, int64(len(data)), data[:100], ErrMismatch},
		{"long", sha, int64(len(data)), append(append([]byte{}, data...), 'x'), ErrMismatch},
		{"other bytes", sha, int64(len(data)), bytes.Repeat([]byte("x"), len(data)), ErrMismatch},
	} {
		if err := s.Write(tt.sha, tt.size, bytes.NewReader(tt.body)); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v", tt.name, err)
		}
		if s.Has(sha, int64(len(data))) {
			t.Fatalf("%s: refused bytes are visible", tt.name)
		}
	}
	if err := s.Write("nothex", 1, bytes.NewReader(nil)); err == nil || !strings.Contains(err.Error(), "64 lowercase hex") {
		t.Errorf("bad sha: %v", err)
	}
	if err := s.Write(sha, 0, bytes.NewReader(nil)); err == nil || !strings.Contains(err.Error(), "size 0") {
		t.Errorf("zero size: %v", err)
	}
	if err := s.Write(sha, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	f, err := s.Open(sha)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(f)
	f.Close()
	if !bytes.Equal(got, data) {
		t.Fatal("stored bytes differ")
	}
	// No partial file is left behind by the refused writes.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("store holds %d files, want 1", len(ents))
	}
	// Prune keeps what is recorded and what is young.
	old := time.Now().Add(-time.Hour)
	other := sum([]byte("other"))
	if err := s.Write(other, 5, strings.NewReader("other")); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(filepath.Join(dir, other), old, old)
	os.Chtimes(filepath.Join(dir, sha), old, old)
	// What a coordinator that died in the middle of a write leaves.
	partial := filepath.Join(dir, "."+other+".tmp-1")
	os.WriteFile(partial, []byte("x"), 0o600)
	os.Chtimes(partial, old, old)
	removed := s.Prune(map[string]bool{sha: true}, time.Minute)
	if _, err := os.Stat(partial); len(removed) != 2 || !s.Has(sha, int64(len(data))) || s.Has(other, 5) || !os.IsNotExist(err) {
		t.Errorf("pruned %v", removed)
	}
}
