// Package safefs opens, reads and removes files that a less privileged user
// can write (a service's pidfile, its log directory) on behalf of the root
// agent without following a link that user placed.
//
// A path is walked one component at a time from the root with directory
// file descriptors. A symbolic link on the way is followed only when root
// owns it (Debian's /var/run -> /run, a site's /etc/deephaven -> /opt/...):
// a link a service user made is refused, so that user cannot steer the
// agent to /etc/shadow. The last component is opened with O_NOFOLLOW and
// must be a regular file.
package safefs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// maxLinks bounds the root-owned links followed in one walk, as the
// kernel's own limit (40) does for loops.
const maxLinks = 40

// ErrUnsafe reports a path through a link root does not own, or a last
// component that is not a regular file.
var ErrUnsafe = errors.New("unsafe path")

// Dir is an open directory that names inside it are resolved against.
type Dir struct {
	fd   int
	path string
}

// Path is the directory's path as it was asked for.
func (d *Dir) Path() string { return d.path }

// Close releases the directory.
func (d *Dir) Close() error { return unix.Close(d.fd) }

// File returns a duplicate of the directory's descriptor, for a child
// process that is to open names in it (safefs.FromFile in that child).
func (d *Dir) File() (*os.File, error) {
	fd, err := unix.Dup(d.fd)
	if err != nil {
		return nil, &os.PathError{Op: "dup", Path: d.path, Err: err}
	}
	return os.NewFile(uintptr(fd), d.path), nil
}

// Chown gives the directory itself to uid:gid, through its descriptor.
func (d *Dir) Chown(uid, gid int) error {
	if err := unix.Fchownat(d.fd, "", uid, gid, unix.AT_EMPTY_PATH); err != nil {
		return &os.PathError{Op: "chown", Path: d.path, Err: err}
	}
	return nil
}

// FromFile takes over a directory descriptor that a parent opened with
// OpenDir and passed on; path only names it in errors.
func FromFile(f *os.File, path string) (*Dir, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, &os.PathError{Op: "open", Path: path, Err: unix.ENOTDIR}
	}
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		return nil, &os.PathError{Op: "dup", Path: path, Err: err}
	}
	f.Close()
	return &Dir{fd: fd, path: filepath.Clean(path)}, nil
}

// OpenDir opens the directory at the absolute path dir, following only
// root-owned links on the way.
func OpenDir(dir string) (*Dir, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("%s: not an absolute path", dir)
	}
	fd, err := walk(dir, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return &Dir{fd: fd, path: filepath.Clean(dir)}, nil
}

// MkdirAll opens the directory at the absolute path dir as OpenDir does,
// creating each missing component with perm on the way. os.MkdirAll
// would follow a link a service user put in place of a component and
// create root's directories wherever it points.
func MkdirAll(dir string, perm uint32) (*Dir, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("%s: not an absolute path", dir)
	}
	if perm == 0 {
		return nil, fmt.Errorf("%s: no permission bits for the directories to create", dir)
	}
	fd, err := walk(dir, perm)
	if err != nil {
		return nil, &os.PathError{Op: "mkdir", Path: dir, Err: err}
	}
	return &Dir{fd: fd, path: filepath.Clean(dir)}, nil
}

// walk opens dir one component at a time; with create != 0 it makes the
// components that do not exist, with that mode.
func walk(dir string, create uint32) (int, error) {
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	pending := components(dir)
	links := 0
	for len(pending) > 0 {
		name := pending[0]
		pending = pending[1:]
		if name == ".." {
			// Lexical cleaning removed every ".." it could; one left comes
			// from a link's target and climbs from where the walk is.
			next, err := unix.Openat(fd, "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			unix.Close(fd)
			if err != nil {
				return -1, err
			}
			fd = next
			continue
		}
		var st unix.Stat_t
		err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) && create != 0 {
			// EEXIST: made by someone else since the stat; the open
			// below takes whatever is there now, and refuses a link.
			if err = unix.Mkdirat(fd, name, create); err == nil || errors.Is(err, unix.EEXIST) {
				err = unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
			}
		}
		if err != nil {
			unix.Close(fd)
			return -1, err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			if st.Uid != 0 {
				unix.Close(fd)
				return -1, fmt.Errorf("%w: %s is a link owned by uid %d, not root", ErrUnsafe, name, st.Uid)
			}
			if links++; links > maxLinks {
				unix.Close(fd)
				return -1, unix.ELOOP
			}
			target, err := readlinkat(fd, name)
			if err != nil {
				unix.Close(fd)
				return -1, err
			}
			if filepath.IsAbs(target) {
				unix.Close(fd)
				if fd, err = unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
					return -1, err
				}
			}
			pending = append(components(target), pending...)
			continue
		}
		// O_NOFOLLOW: a component swapped for a link since the stat fails
		// here instead of being followed.
		next, err := unix.Openat(fd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

func components(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

func readlinkat(dirfd int, name string) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// checkName refuses anything but a plain name inside the directory.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return fmt.Errorf("%q is not a file name", name)
	}
	return nil
}

// openRegular opens name in d with flags plus O_NOFOLLOW and O_NONBLOCK (a
// fifo must not block the agent) and refuses what is not a regular file.
func (d *Dir) openRegular(name string, flags int, perm uint32) (*os.File, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	full := filepath.Join(d.path, name)
	fd, err := unix.Openat(d.fd, name, flags|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, perm)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			err = fmt.Errorf("%w: it is a symbolic link", ErrUnsafe)
		}
		return nil, &os.PathError{Op: "open", Path: full, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "stat", Path: full, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, &os.PathError{Op: "open", Path: full, Err: fmt.Errorf("%w: not a regular file", ErrUnsafe)}
	}
	// Back to blocking for the caller's reads and writes.
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "open", Path: full, Err: err}
	}
	return os.NewFile(uintptr(fd), full), nil
}

// ReadFile reads the regular file name in d, at most limit bytes (more is
// an error: a pidfile is a few bytes, not whatever a user put there).
func (d *Dir) ReadFile(name string, limit int64) ([]byte, error) {
	f, err := d.openRegular(name, unix.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", f.Name(), limit)
	}
	return b, nil
}

// Open opens the regular file name in d for reading. The descriptor
// stays valid whatever happens to the name afterwards, so a caller that
// follows a file (a log) keeps reading what it opened.
func (d *Dir) Open(name string) (*os.File, error) {
	return d.openRegular(name, unix.O_RDONLY, 0)
}

// Stat describes name in d without following it.
func (d *Dir) Stat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := checkName(name); err != nil {
		return st, err
	}
	err := unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if err != nil {
		return st, &os.PathError{Op: "stat", Path: filepath.Join(d.path, name), Err: err}
	}
	return st, nil
}

// Remove unlinks name in d (a link itself, never its target).
func (d *Dir) Remove(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := unix.Unlinkat(d.fd, name, 0); err != nil {
		return &os.PathError{Op: "remove", Path: filepath.Join(d.path, name), Err: err}
	}
	return nil
}

// OpenAppend opens name in d for appending, creating it with perm, and
// gives it to uid:gid through the descriptor (never by path) when uid is
// not negative.
func (d *Dir) OpenAppend(name string, perm os.FileMode, uid, gid int) (*os.File, error) {
	f, err := d.openRegular(name, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT, uint32(perm.Perm()))
	if err != nil {
		return nil, err
	}
	if uid >= 0 {
		if err := f.Chown(uid, gid); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// ReadFile reads the file at the absolute path p as Dir.ReadFile does.
func ReadFile(p string, limit int64) ([]byte, error) {
	d, err := OpenDir(filepath.Dir(p))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.ReadFile(filepath.Base(p), limit)
}
