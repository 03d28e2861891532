// Package asuser lets a test running as root connect to a unix socket as
// another user, so that a server sees that user in SO_PEERCRED and
// SO_PEERGROUPS, without a helper process.
package asuser

import (
	"errors"
	"net"
	"sync"
	"syscall"
)

// credMu serializes Dial: it changes the whole test process's ids.
var credMu sync.Mutex

// Dial connects to the unix socket at path as uid, gid and groups. The
// kernel takes a peer's credentials (effective ids and supplementary
// groups) at connect, so the process takes those effective ids for the
// one connect and then its own back: the real and saved uid stay root
// throughout, which is what lets it return. Every thread changes with it
// (Go applies set*id to all threads), so nothing else the test runs
// should touch files meanwhile.
func Dial(path string, uid, gid uint32, groups []uint32) (conn net.Conn, err error) {
	credMu.Lock()
	defer credMu.Unlock()
	orig, err := syscall.Getgroups()
	if err != nil {
		return nil, err
	}
	gs := make([]int, len(groups))
	for i, g := range groups {
		gs[i] = int(g)
	}
	if err := syscall.Setgroups(gs); err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, syscall.Setgroups(orig)) }()
	if err := syscall.Setegid(int(gid)); err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, syscall.Setegid(0)) }()
	if err := syscall.Seteuid(int(uid)); err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, syscall.Seteuid(0)) }()
	return net.Dial("unix", path)
}
