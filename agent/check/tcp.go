package check

import (
	"context"
	"net"
)

type tcpProbe struct {
	addr string
}

// NewTCP returns a probe that succeeds when a TCP connection to addr
// (host:port) can be established. The connection is closed at once.
func NewTCP(addr string) Probe {
	return tcpProbe{addr: addr}
}

func (p tcpProbe) Probe(ctx context.Context) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return fail("tcp "+p.addr, err)
	}
	// The connection was accepted, which is all this probe asks.
	c.Close()
	return nil
}
