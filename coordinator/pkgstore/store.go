// Package pkgstore keeps upgrade packages on a coordinator's disk, beside
// raft's data: the bytes stay out of the raft log (a package is hundreds of
// megabytes), while their name, size, sha256 and holders are in raft.
package pkgstore

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dhvisor/dhvisor/internal/atomicfile"
)

// MaxSize bounds one package.
const MaxSize = 16 << 30

// spare is the free space a write must leave: raft's log and snapshots
// share the disk, and a full disk would stop them.
const spare = 256 << 20

var shaRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Store is a directory of packages named by their sha256.
type Store struct{ dir string }

// Open returns the store in dir, creating it.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &Store{dir: dir}, nil
}

// Valid checks a package's sha256 and size as a client states them.
func Valid(sha string, size int64) error {
	if !shaRE.MatchString(sha) {
		return fmt.Errorf("sha256 %q: expected 64 lowercase hex digits", sha)
	}
	if size <= 0 || size > MaxSize {
		return fmt.Errorf("size %d: expected 1 byte to %d GiB", size, MaxSize>>30)
	}
	return nil
}

func (s *Store) path(sha string) string { return filepath.Join(s.dir, sha) }

// Has reports whether the store holds the whole package.
func (s *Store) Has(sha string, size int64) bool {
	if !shaRE.MatchString(sha) {
		return false
	}
	st, err := os.Stat(s.path(sha))
	return err == nil && st.Size() == size
}

// Open opens a held package for reading.
func (s *Store) Open(sha string) (*os.File, error) {
	if !shaRE.MatchString(sha) {
		return nil, fmt.Errorf("sha256 %q: expected 64 lowercase hex digits", sha)
	}
	return os.Open(s.path(sha))
}

// Remove drops a held package (one refused after it was written).
func (s *Store) Remove(sha string) error {
	if !shaRE.MatchString(sha) {
		return fmt.Errorf("sha256 %q: expected 64 lowercase hex digits", sha)
	}
	if err := os.Remove(s.path(sha)); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// ErrMismatch is a package whose bytes do not match its stated size or
// sha256; nothing is kept.
var ErrMismatch = errors.New("the package's bytes do not match")

// Write stores the package read from r, which must be exactly size bytes
// with the given sha256; it is visible only once complete and verified.
func (s *Store) Write(sha string, size int64, r io.Reader) error {
	if err := Valid(sha, size); err != nil {
		return err
	}
	if s.Has(sha, size) {
		_, err := io.Copy(io.Discard, r) // already held: the sender's bytes are not needed
		return err
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(s.dir, &fs); err == nil {
		if free := int64(fs.Bavail) * fs.Bsize; free < size+spare {
			return fmt.Errorf("not enough space in %s for a package of %d MiB: %d MiB free, and %d MiB are kept for raft", s.dir, size>>20, free>>20, spare>>20)
		}
	}
	return atomicfile.WriteFrom(s.path(sha), 0o600, func(w io.Writer) error {
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(r, size+1))
		switch {
		case err != nil:
			return err
		case n != size:
			return fmt.Errorf("%w: %d bytes received, %d stated", ErrMismatch, n, size)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != sha {
			return fmt.Errorf("%w: sha256 is %s, %s stated", ErrMismatch, got, sha)
		}
		return nil
	})
}

// Prune removes packages not in keep and older than age (a package just
// written is recorded in raft a moment later), and partial writes older
// than age (left by a crash).
func (s *Store) Prune(keep map[string]bool, age time.Duration) []string {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil
	}
	var removed []string
	for _, e := range ents {
		name := e.Name()
		partial := atomicfile.IsTemp(name)
		if !partial && (!shaRE.MatchString(name) || keep[name]) {
			continue
		}
		if info, err := e.Info(); err != nil || time.Since(info.ModTime()) < age {
			continue
		}
		if os.Remove(filepath.Join(s.dir, name)) == nil {
			removed = append(removed, name)
		}
	}
	return removed
}
