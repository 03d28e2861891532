package install

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dhvisor/dhvisor/agent/safefs"
	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/pkgsig"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// Source streams a stored package from the coordinator at addr, starting at
// offset, into w (the gRPC client in production).
type Source interface {
	Fetch(ctx context.Context, addr, sha256 string, offset int64, w io.Writer) error
}

var shaRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// validateRef checks a package reference from the coordinator.
func validateRef(ref *pb.PackageRef) error {
	switch {
	case ref == nil:
		return errors.New("package: missing")
	case len(ref.Signature) > pkgsig.MaxSignature:
		return fmt.Errorf("package.signature: %d bytes, at most %d", len(ref.Signature), pkgsig.MaxSignature)
	case ref.Path != "":
		if !filepath.IsAbs(ref.Path) {
			return fmt.Errorf("package.path %q: must be absolute", ref.Path)
		}
		if !shaRE.MatchString(ref.Sha256) {
			return fmt.Errorf("package.sha256 %q: expected the 64 lowercase hex digits dhctl hashed the file at package.path to", ref.Sha256)
		}
	case !shaRE.MatchString(ref.Sha256):
		return fmt.Errorf("package.sha256 %q: expected 64 lowercase hex digits", ref.Sha256)
	case ref.Size <= 0:
		return fmt.Errorf("package.size %d: must be positive", ref.Size)
	case len(ref.Sources) == 0:
		return errors.New("package.sources: no coordinator holds the package")
	case ref.FileName == "" || filepath.Base(ref.FileName) != ref.FileName || ref.FileName == "." || ref.FileName == "..":
		return fmt.Errorf("package.file_name %q: expected a plain file name", ref.FileName)
	}
	return nil
}

// fetch returns the package as a verified file in the cache: copied from
// the path given, or fetched from the sources and resumed from what an
// earlier, interrupted fetch left. Every later read of the package (its
// version, its signature, the install) is of that copy, which only root
// can write.
func (in *Installer) fetch(ctx context.Context, ref *pb.PackageRef, progress func(*pb.InstallProgress)) (string, error) {
	name := ref.FileName
	if ref.Path != "" {
		name = filepath.Base(ref.Path)
	}
	// One fetch of a package at a time: an install step waits for the
	// prefetch of its package and then finds it in the cache.
	lock := in.fetchLock(ref.Sha256)
	lock.Lock()
	defer lock.Unlock()
	dir := filepath.Join(in.cfg.CacheDir, ref.Sha256)
	file := filepath.Join(dir, name)
	if st, err := os.Stat(file); err == nil {
		// Verified when this agent fetched it and unchanged since, or
		// checked now (a file from before a restart: a disk can rot, and
		// the install must be of exactly what was uploaded).
		if in.wasVerified(ref.Sha256, st.ModTime()) {
			return file, nil
		}
		if err := verify(file, ref.Sha256); err == nil {
			in.markVerified(ref.Sha256, file)
			return file, nil
		}
		os.Remove(file)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", err
	}
	if progress == nil {
		progress = func(*pb.InstallProgress) {}
	}
	var err error
	if ref.Path != "" {
		err = in.copyPath(ref, file+".part", progress)
	} else {
		err = in.fetchRemote(ctx, ref, file+".part", progress)
	}
	if err != nil {
		return "", err
	}
	if err := os.Rename(file+".part", file); err != nil {
		return "", err
	}
	in.markVerified(ref.Sha256, file)
	return file, nil
}

// copyPath copies the package at ref.Path, read once through a descriptor
// only root could have filled (safefs.OpenRootOnly), into part, and
// refuses bytes other than those dhctl hashed.
func (in *Installer) copyPath(ref *pb.PackageRef, part string, progress func(*pb.InstallProgress)) error {
	src, err := safefs.OpenRootOnly(ref.Path)
	if err != nil {
		return fmt.Errorf("package %s: %w (a package installed as root must be a root-owned file that no group or other user can write, in directories the same)", ref.Path, err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	if err := in.reserve(st.Size()); err != nil {
		return err
	}
	f, err := os.OpenFile(part, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	w := &progressWriter{f: f, h: h, total: st.Size(), progress: progress, phase: "copying"}
	if _, err := io.Copy(w, io.LimitReader(src, st.Size())); err != nil {
		os.Remove(part)
		return fmt.Errorf("copying %s into the package cache: %w", ref.Path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != ref.Sha256 {
		os.Remove(part)
		return fmt.Errorf("package %s changed after dhctl hashed it: its sha256 is %s now, the upgrade was started with %s: not installed", ref.Path, got, ref.Sha256)
	}
	return f.Sync()
}

// fetchRemote fetches the package from ref.Sources into part, resuming
// from what part holds.
func (in *Installer) fetchRemote(ctx context.Context, ref *pb.PackageRef, part string, progress func(*pb.InstallProgress)) error {
	f, err := os.OpenFile(part, os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	have, err := io.Copy(h, f) // what an interrupted fetch left
	if err != nil {
		return err
	}
	if have > ref.Size {
		if err := f.Truncate(0); err != nil {
			return err
		}
		h.Reset()
		have = 0
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
	}
	if err := in.reserve(ref.Size - have); err != nil {
		return err
	}
	w := &progressWriter{f: f, h: h, n: have, total: ref.Size, progress: progress, phase: "fetching"}
	var errs []error
	for _, addr := range ref.Sources {
		if w.n >= ref.Size {
			break
		}
		if w.n > 0 {
			in.log.Info("resuming a package fetch", "sha256", ref.Sha256, "from", addr, "offset", w.n)
		}
		err := in.src.Fetch(ctx, addr, ref.Sha256, w.n, w)
		if err == nil && w.n == ref.Size {
			break
		}
		if err == nil {
			err = fmt.Errorf("stream ended at %d of %d bytes", w.n, ref.Size)
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		if ctx.Err() != nil {
			break
		}
	}
	if w.n != ref.Size {
		return fmt.Errorf("fetching the package (%d of %d bytes so far, kept to resume): %w", w.n, ref.Size, errors.Join(errs...))
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != ref.Sha256 {
		os.Remove(part)
		return fmt.Errorf("fetched package has sha256 %s, expected %s: discarded", got, ref.Sha256)
	}
	return f.Sync()
}

// reserve refuses to put need more bytes in the cache when its file
// system would then have less than packages.reserve free: the state file
// and the install journal share that disk, and an agent that cannot write
// its state refuses to start services.
func (in *Installer) reserve(need int64) error {
	free, err := in.freeSpace(in.cfg.CacheDir)
	if err != nil {
		return fmt.Errorf("free space in %s: %w", in.cfg.CacheDir, err)
	}
	keep := int64(in.cfg.Reserve)
	if free-need < keep {
		return fmt.Errorf("not enough space in %s for the package (%s more): %s free, and packages.reserve keeps %s free for the agent's state; free some space or lower packages.reserve",
			in.cfg.CacheDir, config.ByteSize(need), config.ByteSize(max(free, 0)), config.ByteSize(keep))
	}
	return nil
}

// statfsFree is the space an unprivileged write may use on dir's file
// system (root may use the blocks reserved for it too, but those are the
// system's last resort).
func statfsFree(dir string) (int64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, err
	}
	return int64(fs.Bavail) * fs.Bsize, nil
}

func (in *Installer) fetchLock(sha string) *sync.Mutex {
	in.mu.Lock()
	defer in.mu.Unlock()
	l := in.fetching[sha]
	if l == nil {
		l = &sync.Mutex{}
		in.fetching[sha] = l
	}
	return l
}

func (in *Installer) wasVerified(sha string, mtime time.Time) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	at, ok := in.verified[sha]
	return ok && at.Equal(mtime)
}

func (in *Installer) markVerified(sha, file string) {
	st, err := os.Stat(file)
	if err != nil {
		return
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	in.verified[sha] = st.ModTime()
}

// progressWriter appends fetched bytes to the partial file, hashing them.
type progressWriter struct {
	f        *os.File
	h        hash.Hash
	n, total int64
	last     int64
	progress func(*pb.InstallProgress)
	phase    string
}

func (w *progressWriter) Write(p []byte) (int, error) {
	if w.n+int64(len(p)) > w.total {
		return 0, fmt.Errorf("the coordinator sent more than the package's %d bytes", w.total)
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	// Progress every 5% is enough to show and cheap to send.
	if w.n-w.last >= w.total/20 || w.n == w.total {
		w.last = w.n
		w.progress(&pb.InstallProgress{Phase: w.phase, Bytes: w.n, Total: w.total})
	}
	return n, err
}

func verify(file, want string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("package %s has sha256 %s, expected %s", file, got, want)
	}
	return nil
}

// prune removes cached packages other than keep (the package just
// installed and the one it replaced, which a revert may need).
func (in *Installer) prune(keep ...string) {
	ents, err := os.ReadDir(in.cfg.CacheDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.IsDir() && !slices.Contains(keep, e.Name()) {
			// Not a package being fetched (an upgrade's prefetch).
			lock := in.fetchLock(e.Name())
			if lock.TryLock() {
				os.RemoveAll(filepath.Join(in.cfg.CacheDir, e.Name()))
				lock.Unlock()
			}
		}
	}
}
