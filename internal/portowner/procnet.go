package portowner

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Socket is one socket of a /proc/net table.
type Socket struct {
	Local netip.AddrPort // tcp and udp
	State uint8          // tcp: 0x0A is LISTEN
	Path  string         // unix: the bound path ("@name" abstract)
	// Listening: a unix socket accepting connections.
	Listening bool
	UID       int // -1 for unix sockets, whose table does not say
	Inode     uint64
}

// tcpListen is TCP_LISTEN in /proc/net/tcp's st column.
const tcpListen = 0x0A

// soAcceptCon is __SO_ACCEPTCON in /proc/net/unix's Flags column.
const soAcceptCon = 1 << 16

// holds says whether the socket keeps its port from being bound again: a
// listening TCP socket (dhvisor's listeners set SO_REUSEADDR, so sockets
// in other states do not), or any UDP socket.
func (s Socket) holds(proto string) bool {
	return proto == "udp" || s.State == tcpListen
}

// ParseInet reads /proc/net/{tcp,tcp6,udp,udp6}: a header line, then one
// socket a line, addresses as the kernel prints them (each 32-bit word of
// the address in host byte order, the port big-endian). A line it cannot
// read is skipped and the first such is returned as the error, with the
// sockets it could read.
func ParseInet(data []byte) ([]Socket, error) {
	var out []Socket
	var first error
	for i, line := range bytes.Split(data, []byte("\n")) {
		f := strings.Fields(string(line))
		if i == 0 || len(f) == 0 {
			continue
		}
		s, err := parseInetLine(f)
		if err != nil {
			if first == nil {
				first = fmt.Errorf("line %d: %w", i+1, err)
			}
			continue
		}
		out = append(out, s)
	}
	return out, first
}

func parseInetLine(f []string) (Socket, error) {
	if len(f) < 10 {
		return Socket{}, fmt.Errorf("%d fields, expected at least 10 (sl local rem st queues tr retrnsmt uid timeout inode)", len(f))
	}
	local, err := parseHexAddrPort(f[1])
	if err != nil {
		return Socket{}, fmt.Errorf("local_address %q: %w", f[1], err)
	}
	st, err := strconv.ParseUint(f[3], 16, 8)
	if err != nil {
		return Socket{}, fmt.Errorf("st %q: not a hex byte", f[3])
	}
	uid, err := strconv.ParseUint(f[7], 10, 31)
	if err != nil {
		return Socket{}, fmt.Errorf("uid %q: not a user id", f[7])
	}
	ino, err := strconv.ParseUint(f[9], 10, 64)
	if err != nil {
		return Socket{}, fmt.Errorf("inode %q: not a number", f[9])
	}
	return Socket{Local: local, State: uint8(st), UID: int(uid), Inode: ino}, nil
}

// parseHexAddrPort reads "0100007F:1F90" or the 32-digit IPv6 form.
func parseHexAddrPort(s string) (netip.AddrPort, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("expected ADDR:PORT in hex")
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil || len(p) != 4 {
		return netip.AddrPort{}, fmt.Errorf("port %q is not 4 hex digits", p)
	}
	raw, err := hex.DecodeString(h)
	if err != nil || len(raw) != 4 && len(raw) != 16 {
		return netip.AddrPort{}, fmt.Errorf("address %q is not 8 or 32 hex digits", h)
	}
	// Each word was printed as a host-order integer: turn it back into the
	// bytes it was in memory, which are the address in network order.
	ip := make([]byte, len(raw))
	for w := 0; w < len(raw); w += 4 {
		binary.NativeEndian.PutUint32(ip[w:], binary.BigEndian.Uint32(raw[w:]))
	}
	addr, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// ParseUnix reads /proc/net/unix: a header line, then "Num RefCount
// Protocol Flags Type St Inode [Path]" a line. Lines it cannot read are
// skipped.
func ParseUnix(data []byte) []Socket {
	var out []Socket
	for i, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 8 {
			continue // the header, or a socket bound to no path
		}
		flags, err := strconv.ParseUint(f[3], 16, 32)
		if err != nil {
			continue
		}
		ino, err := strconv.ParseUint(f[6], 10, 64)
		if err != nil {
			continue
		}
		// The path is the rest of the line: it may hold blanks.
		rest := line
		for range 7 {
			rest = strings.TrimLeft(rest, " ")
			j := strings.IndexByte(rest, ' ')
			if j < 0 {
				rest = ""
				break
			}
			rest = rest[j:]
		}
		path := strings.TrimLeft(rest, " ")
		if path == "" {
			continue
		}
		out = append(out, Socket{Path: path, Listening: flags&soAcceptCon != 0, UID: -1, Inode: ino})
	}
	return out
}
