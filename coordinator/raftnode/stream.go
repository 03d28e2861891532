package raftnode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/dhvisor/dhvisor/internal/portowner"
	"github.com/dhvisor/dhvisor/internal/tlsutil"
)

// handshakeTimeout bounds a TLS handshake, so a peer that connects and says
// nothing (or speaks plain TCP) cannot hold a goroutine.
const handshakeTimeout = 5 * time.Second

// tlsStream is raft's StreamLayer over mutual TLS. Handshakes happen before
// Accept returns, each in its own goroutine, so one slow or hostile client
// never delays the others.
type tlsStream struct {
	lis       net.Listener
	advertise net.Addr
	server    *tls.Config
	client    *tls.Config
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup

	// open holds every connection handed to raft, accepted or dialed:
	// raft's transport does not close them on shutdown, and its reader
	// goroutines would outlive the replica.
	mu   sync.Mutex
	open map[*trackedConn]struct{}
}

type trackedConn struct {
	net.Conn
	s *tlsStream
}

func (c *trackedConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.open, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}

// track registers c, or closes it if the stream is already closed.
func (s *tlsStream) track(c net.Conn) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open == nil {
		c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, s: s}
	s.open[tc] = struct{}{}
	return tc, nil
}

func listenTLS(bind, advertise string, files tlsutil.Files) (*tlsStream, error) {
	server, err := tlsutil.ServerConfig(files, tlsutil.RoleCoordinator)
	if err != nil {
		return nil, err
	}
	client, err := tlsutil.ClientConfig(files, tlsutil.RoleCoordinator)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("raft.listen: %w", portowner.Explain(err, bind))
	}
	adv, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil || adv.IP == nil || adv.IP.IsUnspecified() {
		// A wildcard bind with no advertise: dial-able only as the port the
		// kernel chose, on the address given.
		adv = lis.Addr().(*net.TCPAddr)
	}
	if adv.Port == 0 {
		adv.Port = lis.Addr().(*net.TCPAddr).Port
	}
	s := &tlsStream{lis: lis, advertise: adv, server: server, client: client, conns: make(chan net.Conn), done: make(chan struct{}), open: map[*trackedConn]struct{}{}}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

func (s *tlsStream) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.lis.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			tc := tls.Server(c, s.server)
			ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
			defer cancel()
			if err := tc.HandshakeContext(ctx); err != nil {
				c.Close()
				return
			}
			select {
			case s.conns <- tc:
			case <-s.done:
				tc.Close()
			}
		}()
	}
}

// Accept implements net.Listener.
func (s *tlsStream) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return s.track(c)
	case <-s.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (s *tlsStream) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.done)
		err = s.lis.Close()
		s.wg.Wait()
		s.mu.Lock()
		open := s.open
		s.open = nil
		s.mu.Unlock()
		for c := range open {
			c.Conn.Close()
		}
	})
	return err
}

// Addr implements net.Listener: the advertised address, which raft hands to
// peers.
func (s *tlsStream) Addr() net.Addr { return s.advertise }

// Dial implements raft.StreamLayer.
func (s *tlsStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: s.client}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", string(addr))
	if err != nil {
		return nil, err
	}
	return s.track(c)
}
