// Package portowner names the process that holds an address a daemon
// could not listen on, from what Linux's /proc tells: the listening
// socket's inode in /proc/net/{tcp,tcp6,udp,udp6,unix}, then the process
// whose /proc/PID/fd links to it. "address already in use" alone sends an
// operator hunting with ss and lsof; on a Deephaven node the usual holder
// is one of Deephaven's own JVMs, and the message should say which.
//
// It is best-effort: without root, another user's descriptors cannot be
// read, and the message then says whose socket it is and that its process
// could not be seen.
package portowner

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Owner is a process holding the socket.
type Owner struct {
	PID  int
	Comm string // /proc/PID/comm
	// Name is the Deephaven process name (-Dprocess.name=) of a JVM, else
	// Comm: java alone does not say which service holds the port.
	Name    string
	Cmdline string
	UID     int
	User    string // UID's name, or the number when it has none
}

// InUseError is an address already in use, with who holds it.
type InUseError struct {
	Addr   string
	Owners []Owner
	// SocketUIDs are the users owning the sockets found, for when their
	// processes could not be seen.
	SocketUIDs []int
	// Hidden counts processes whose descriptors could not be read.
	Hidden int
	Err    error
}

func (e *InUseError) Unwrap() error { return e.Err }

func (e *InUseError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen %s: address in use", e.Addr)
	switch {
	case len(e.Owners) > 0:
		for i, o := range e.Owners {
			if i > 0 {
				b.WriteString(";")
			}
			fmt.Fprintf(&b, " by pid %d (%s, user %s)", o.PID, o.Name, o.User)
			if o.Cmdline != "" && o.Cmdline != o.Name {
				fmt.Fprintf(&b, ": %s", o.Cmdline)
			}
		}
	case len(e.SocketUIDs) > 0:
		var users []string
		for _, uid := range e.SocketUIDs {
			users = append(users, userName(uid))
		}
		fmt.Fprintf(&b, " by a socket of user %s, but its process is not visible", strings.Join(users, ", "))
		if e.Hidden > 0 {
			fmt.Fprintf(&b, " (%d processes' descriptors could not be read: run as root to name it)", e.Hidden)
		}
	default:
		b.WriteString(", but /proc shows no socket holding it (it may be in another network namespace, or just released)")
	}
	return b.String()
}

// maxCmdline keeps a JVM's command line (often kilobytes of -D and
// classpath) from drowning the message.
const maxCmdline = 200

// inUse reports whether err is EADDRINUSE, wrapped or (memberlist formats
// its listener errors with %v) only in its text.
func inUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), syscall.EADDRINUSE.Error())
}

// Explain returns err as it is unless it says addr is already in use; then
// an *InUseError naming the processes that hold addr (host:port, or a unix
// socket's path), which still matches errors.Is(err, syscall.EADDRINUSE)
// when err did.
func Explain(err error, addr string) error {
	if err == nil || !inUse(err) {
		return err
	}
	return find(procRoot, addr, protocolsOf(err, addr), err)
}

// InUse is the *InUseError for a unix socket path found answering: another
// process listens there, and removing its socket would steal its clients.
func InUse(path string) error {
	return find(procRoot, path, []string{"unix"}, syscall.EADDRINUSE)
}

const procRoot = "/proc"

// protocolsOf is the /proc/net tables to search: the failed listener's
// when err says, else TCP and UDP (memberlist binds both on one port).
func protocolsOf(err error, addr string) []string {
	if strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "@") {
		return []string{"unix"}
	}
	var op *net.OpError
	if errors.As(err, &op) {
		switch {
		case strings.HasPrefix(op.Net, "tcp"):
			return []string{"tcp"}
		case strings.HasPrefix(op.Net, "udp"):
			return []string{"udp"}
		case strings.HasPrefix(op.Net, "unix"):
			return []string{"unix"}
		}
	}
	return []string{"tcp", "udp"}
}

func find(root, addr string, protos []string, cause error) *InUseError {
	e := &InUseError{Addr: addr, Err: cause}
	inodes := map[uint64]bool{}
	for _, proto := range protos {
		for _, s := range holders(root, proto, addr) {
			inodes[s.Inode] = true
			if s.UID >= 0 && !slices.Contains(e.SocketUIDs, s.UID) {
				e.SocketUIDs = append(e.SocketUIDs, s.UID)
			}
		}
	}
	if len(inodes) == 0 {
		return e
	}
	e.Owners, e.Hidden = owners(root, inodes)
	return e
}

// holders are the sockets of proto's tables that hold addr.
func holders(root, proto, addr string) []Socket {
	if proto == "unix" {
		data, err := os.ReadFile(filepath.Join(root, "net", "unix"))
		if err != nil {
			return nil
		}
		var out []Socket
		for _, s := range ParseUnix(data) {
			if s.Path == addr {
				out = append(out, s)
			}
		}
		return out
	}
	want, err := netip.ParseAddrPort(addr)
	if err != nil {
		// A host name: only the port is known for sure.
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return nil
		}
		ip := netip.IPv4Unspecified()
		if host == "localhost" {
			ip = netip.MustParseAddr("127.0.0.1")
		}
		want = netip.AddrPortFrom(ip, uint16(p))
	}
	var out []Socket
	for _, table := range []string{proto, proto + "6"} {
		data, err := os.ReadFile(filepath.Join(root, "net", table))
		if err != nil {
			continue
		}
		socks, _ := ParseInet(data)
		for _, s := range socks {
			if s.Local.Port() == want.Port() && s.holds(proto) && overlaps(s.Local.Addr(), want.Addr()) {
				out = append(out, s)
			}
		}
	}
	return out
}

// overlaps says whether a socket bound to a keeps b from being bound: the
// same address, or either one every address.
func overlaps(a, b netip.Addr) bool {
	a, b = a.Unmap(), b.Unmap()
	return a == b || a.IsUnspecified() || b.IsUnspecified()
}

// owners finds the processes with a descriptor on one of inodes, and how
// many processes' descriptors could not be read.
func owners(root string, inodes map[uint64]bool) ([]Owner, int) {
	procs, err := os.ReadDir(root)
	if err != nil {
		return nil, 0
	}
	var out []Owner
	hidden := 0
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid <= 0 {
			continue
		}
		fdDir := filepath.Join(root, p.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			if errors.Is(err, os.ErrPermission) {
				hidden++
			}
			continue
		}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil {
				continue
			}
			if ino, ok := socketInode(link); ok && inodes[ino] {
				out = append(out, describe(root, pid))
				break
			}
		}
	}
	return out, hidden
}

// socketInode reads a descriptor link "socket:[12345]".
func socketInode(link string) (uint64, bool) {
	s, ok := strings.CutPrefix(link, "socket:[")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, "]")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}

func describe(root string, pid int) Owner {
	dir := filepath.Join(root, strconv.Itoa(pid))
	o := Owner{PID: pid, UID: -1}
	if b, err := os.ReadFile(filepath.Join(dir, "comm")); err == nil {
		o.Comm = strings.TrimSpace(string(b))
	}
	o.Name = o.Comm
	if b, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		for _, a := range args {
			if n, ok := strings.CutPrefix(a, "-Dprocess.name="); ok && n != "" {
				o.Name = n
			}
		}
		o.Cmdline = strings.Join(args, " ")
		if len(o.Cmdline) > maxCmdline {
			o.Cmdline = o.Cmdline[:maxCmdline] + "..."
		}
	}
	// /proc/PID belongs to the process's effective user.
	if st, err := os.Stat(dir); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			o.UID = int(sys.Uid)
		}
	}
	o.User = userName(o.UID)
	return o
}

func userName(uid int) string {
	if uid < 0 {
		return "unknown"
	}
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return strconv.Itoa(uid)
}
