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
		return nil, fmt.Errorf("raft.bind %s: %w", bind, err)
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
	s := &tlsStream{lis: lis, advertise: adv, server: server, client: client, conns: make(chan net.Conn), done: make(chan struct{})}
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
		return c, nil
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
	return d.DialContext(ctx, "tcp", string(addr))
}
