// Package peercred identifies the process at the other end of a unix
// socket by what the kernel says about it (SO_PEERCRED), never by anything
// the caller sends. It gives gRPC servers the caller's pid, uid, gid and
// supplementary groups on every call, and a plain net.Conn's for other protocols.
package peercred

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/dhvisor/dhvisor/internal/portowner"
)

// Cred is the kernel's account of a peer process, taken when it connected.
type Cred struct {
	PID int32
	UID uint32
	GID uint32
}

// Root reports whether the peer runs as uid 0.
func (c Cred) Root() bool { return c.UID == 0 }

func (c Cred) String() string { return fmt.Sprintf("pid %d uid %d gid %d", c.PID, c.UID, c.GID) }

// ErrNoCred is returned for a connection that is not a local unix socket,
// or a call that did not come over one.
var ErrNoCred = errors.New("caller not identified: not a unix socket connection")

// Of asks the kernel for the credentials of the process that connected c.
func Of(c net.Conn) (Cred, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return Cred{}, ErrNoCred
	}
	if _, isUnix := c.LocalAddr().(*net.UnixAddr); !isUnix {
		return Cred{}, ErrNoCred
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return Cred{}, err
	}
	var uc *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		uc, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, err
	}
	if serr != nil {
		return Cred{}, fmt.Errorf("SO_PEERCRED: %w", serr)
	}
	return Cred{PID: uc.Pid, UID: uc.Uid, GID: uc.Gid}, nil
}

// AuthInfo carries a peer's Cred through gRPC's peer.Peer.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Cred Cred
	// Groups are the peer's supplementary groups (nil on a kernel
	// before 4.13, which does not tell them).
	Groups []uint32
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "peercred" }

// FromContext gives the Cred of the caller of a gRPC call that came in
// through TransportCredentials.
func FromContext(ctx context.Context) (Cred, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Cred{}, ErrNoCred
	}
	ai, ok := p.AuthInfo.(AuthInfo)
	if !ok {
		return Cred{}, ErrNoCred
	}
	return ai.Cred, nil
}

// TransportCredentials is for a gRPC server on a unix socket: the
// handshake reads the peer's credentials from the kernel once per
// connection, and refuses a connection that has none.
func TransportCredentials() credentials.TransportCredentials { return transport{} }

type transport struct{}

func (transport) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (transport) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cred, err := Of(c)
	if err != nil {
		return nil, nil, err
	}
	groups, err := GroupsOf(c)
	if err != nil && !errors.Is(err, unix.ENOPROTOOPT) {
		return nil, nil, err
	}
	// A local socket cannot be read on the wire: as private as TLS for
	// grpc's checks of per-call credentials.
	return c, AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, Cred: cred, Groups: groups}, nil
}

func (transport) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (t transport) Clone() credentials.TransportCredentials { return t }

func (transport) OverrideServerName(string) error { return nil }

// Listen opens a unix socket at path with mode (its directory made 0755
// if missing). A socket there that still answers means another daemon
// serves it: refused, naming that process; a stale one is replaced.
func Listen(path string, mode os.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, portowner.InUse(path)
	}
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
