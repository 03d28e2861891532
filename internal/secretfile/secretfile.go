// Package secretfile reads files that hold secrets (TLS private keys,
// gossip keys, service secrets) only when nobody else can read or replace
// them: a daemon that loads a key anyone may read has already leaked it,
// and one anyone may write takes a key someone else chose.
//
// The rule is OpenSSH's for private keys, with the one exception Debian
// makes for the ssl-cert group: the file belongs to root or to the
// daemon's own user; it is 0600 (or stricter), or 0640 (or stricter) when
// its group is root's or the daemon's own (root:dhvisor 0640 gives a key to
// a daemon running as dhvisor without giving it to anyone else).
package secretfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// maxSize bounds what is read: every secret file is small, and a huge one
// is a mistake (or a device) that must not exhaust the daemon's memory.
const maxSize = 1 << 20

// Read opens path, checks the opened file with Check (so the file checked
// is the file read) and returns its content. Errors start with path.
func Read(path string) ([]byte, error) {
	// O_NONBLOCK: a FIFO planted at path must fail the check, not hang
	// the open.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		var pe *fs.PathError
		if !errors.As(err, &pe) {
			return nil, err
		}
		if errors.Is(pe.Err, fs.ErrPermission) && os.Geteuid() != 0 {
			// A daemon that no longer runs as root (dhcoord, as
			// dhvisor) on a key root kept to itself.
			return nil, fmt.Errorf("%s: %w (this daemon runs as uid %d, gid %d: give it the file's group, mode 0640, e.g. chgrp %d %s; chmod 640 %s)", path, pe.Err, os.Geteuid(), os.Getegid(), os.Getegid(), path, path)
		}
		return nil, fmt.Errorf("%s: %w", path, pe.Err)
	}
	defer f.Close()
	return ReadOpened(path, f)
}

// ReadOpened is Read of a file the caller opened (through a directory
// descriptor, say), path naming it in errors. It does not close f.
func ReadOpened(path string, f *os.File) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := Check(path, fi); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > maxSize {
		return nil, fmt.Errorf("%s: larger than %d bytes; not a key or secrets file", path, maxSize)
	}
	return data, nil
}

// Check applies the rule to fi, the file at path as this process sees it.
func Check(path string, fi fs.FileInfo) error {
	return check(path, fi, uint32(os.Geteuid()), uint32(os.Getegid()))
}

func check(path string, fi fs.FileInfo, euid, egid uint32) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: cannot read its owner", path)
	}
	perm := fi.Mode().Perm()
	if st.Uid != 0 && st.Uid != euid {
		return fmt.Errorf("%s belongs to uid %d: a secret must belong to root or to this daemon's user (uid %d), or its owner can replace it (chown root %s)", path, st.Uid, euid, path)
	}
	groupOK := st.Gid == 0 || st.Gid == egid
	switch {
	case perm&0o007 != 0, perm&0o030 != 0, perm&0o040 != 0 && !groupOK:
		want := "0600, or 0640 with group root"
		if egid != 0 {
			want += fmt.Sprintf(" or gid %d (this daemon's group)", egid)
		}
		return fmt.Errorf("%s has mode %04o (group %d): a secret must be %s (chmod 600 %s)", path, perm, st.Gid, want, path)
	}
	return nil
}
