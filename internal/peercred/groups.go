package peercred

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/peer"
)

// GroupsOf asks the kernel for the supplementary groups of the process
// that connected c, as they were when it connected (SO_PEERGROUPS, Linux
// 4.13). Unlike the Groups: line of /proc/<pid>/status, this cannot be
// read off another process that reused the pid, nor changed afterwards.
func GroupsOf(c net.Conn) ([]uint32, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, ErrNoCred
	}
	if _, isUnix := c.LocalAddr().(*net.UnixAddr); !isUnix {
		return nil, ErrNoCred
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var groups []uint32
	var serr error
	if err := raw.Control(func(fd uintptr) { groups, serr = peerGroups(int(fd)) }); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("SO_PEERGROUPS: %w", serr)
	}
	return groups, nil
}

// peerGroups reads SO_PEERGROUPS, growing the buffer to what the kernel
// says it needs (it answers ERANGE with the size). x/sys/unix has no
// helper: GetsockoptString would cut the gids at their first zero byte.
func peerGroups(fd int) ([]uint32, error) {
	n := 32
	for {
		buf := make([]uint32, n)
		size := uint32(len(buf) * 4)
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case e == unix.ERANGE && int(size/4) > n:
			n = int(size / 4)
		case e != 0:
			return nil, e
		default:
			return buf[:size/4], nil
		}
	}
}

// GroupsFromContext gives the supplementary groups of the caller of a
// gRPC call that came in through TransportCredentials.
func GroupsFromContext(ctx context.Context) ([]uint32, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, ErrNoCred
	}
	ai, ok := p.AuthInfo.(AuthInfo)
	if !ok {
		return nil, ErrNoCred
	}
	return ai.Groups, nil
}
