// Package conncache keeps one gRPC client connection per address, for
// clients that talk to a changing set of peers (the leader, the agents, the
// coordinators) and must not dial again for every call.
package conncache

import (
	"errors"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// ErrClosed is returned by Get after Close.
var ErrClosed = errors.New("connections closed (shutting down)")

// Cache holds the connections; the zero value is not usable, see New.
type Cache struct {
	creds credentials.TransportCredentials

	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool
}

// New returns a cache dialling with creds.
func New(creds credentials.TransportCredentials) *Cache {
	return &Cache{creds: creds, conns: map[string]*grpc.ClientConn{}}
}

// Get returns the connection to addr, creating it (lazily connected) the
// first time.
func (c *Cache) Get(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if conn, ok := c.conns[addr]; ok {
		return conn, nil
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(c.creds))
	if err != nil {
		return nil, err
	}
	c.conns[addr] = conn
	return conn, nil
}

// Close closes every connection; later Gets fail.
func (c *Cache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		conn.Close()
	}
	c.conns, c.closed = nil, true
}
