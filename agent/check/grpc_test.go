package check

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// startHealthServer serves the standard health service: the server as a
// whole and "db" are SERVING, "cache" is NOT_SERVING.
func startHealthServer(t *testing.T, opts ...grpc.ServerOption) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	hs.SetServingStatus("db", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("cache", healthpb.HealthCheckResponse_NOT_SERVING)
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, hs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return l.Addr().String()
}

// testCert borrows httptest's self-signed certificate (valid for 127.0.0.1)
// and writes it as a CA file.
func testCert(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	return srv.TLS.Certificates[0], writeCA(t, srv)
}

func TestGRPC(t *testing.T) {
	plain := startHealthServer(t)
	cert, ca := testCert(t)
	secure := startHealthServer(t, grpc.Creds(credentials.NewServerTLSFromCert(&cert)))
	nothing := closedAddr(t)
	silent := listen(t)

	tests := []struct {
		name    string
		opts    GRPCOptions
		timeout time.Duration
		want    expect
	}{
		{name: "server SERVING", opts: GRPCOptions{Addr: plain}},
		{name: "service SERVING", opts: GRPCOptions{Addr: plain, Service: "db"}},
		{name: "NOT_SERVING", opts: GRPCOptions{Addr: plain, Service: "cache"},
			want: expect{msg: "grpc " + plain + ` service "cache": status NOT_SERVING, want SERVING`}},
		{name: "unknown service", opts: GRPCOptions{Addr: plain, Service: "nope"},
			want: expect{msg: "grpc " + plain + ` service "nope": NotFound: unknown service`}},
		{name: "nothing listening", opts: GRPCOptions{Addr: nothing},
			want: expect{msg: "grpc " + nothing + ": connection refused"}},
		{name: "server never answers", opts: GRPCOptions{Addr: silent}, timeout: 300 * time.Millisecond,
			want: expect{msg: "grpc " + silent + ": timed out"}},
		{name: "TLS skip verify", opts: GRPCOptions{Addr: secure, Service: "db", TLS: true, InsecureSkipVerify: true}},
		{name: "TLS with CA file", opts: GRPCOptions{Addr: secure, TLS: true, CAFile: ca}},
		{name: "TLS verify fails", opts: GRPCOptions{Addr: secure, TLS: true},
			want: expect{msg: "grpc " + secure + ": Unavailable: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"}},
		{name: "plaintext to TLS server", opts: GRPCOptions{Addr: secure}, timeout: time.Second,
			// EOF or "connection reset by peer", depending on when the TLS
			// server's close reaches the client.
			want: expect{contains: "grpc " + secure + ": Unavailable: error reading server preface: "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewGRPC(tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer Close(p)
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 5 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			start := time.Now()
			err = p.Probe(ctx)
			if elapsed := time.Since(start); elapsed > timeout+time.Second {
				t.Errorf("probe took %v with a %v timeout", elapsed, timeout)
			}
			tt.want.check(t, err)
		})
	}
}

func TestNewGRPCInvalid(t *testing.T) {
	tests := []struct {
		name string
		opts GRPCOptions
	}{
		{name: "no address", opts: GRPCOptions{}},
		{name: "no port", opts: GRPCOptions{Addr: "127.0.0.1"}},
		{name: "TLS options without TLS", opts: GRPCOptions{Addr: "127.0.0.1:1", InsecureSkipVerify: true}},
		{name: "missing CA file", opts: GRPCOptions{Addr: "127.0.0.1:1", TLS: true, CAFile: "/nonexistent/ca.pem"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if p, err := NewGRPC(tt.opts); err == nil {
				t.Errorf("NewGRPC(%+v) = %v, want error", tt.opts, p)
			}
		})
	}
}
