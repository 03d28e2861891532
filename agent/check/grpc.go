package check

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// GRPCOptions configures a probe using the standard gRPC health service
// (grpc.health.v1.Health/Check).
type GRPCOptions struct {
	// Addr is host:port.
	Addr string
	// Service is the name asked about; empty asks about the server as a
	// whole.
	Service string
	// TLS enables transport security; InsecureSkipVerify and CAFile
	// require it.
	TLS                bool
	InsecureSkipVerify bool
	CAFile             string
}

type grpcProbe struct {
	addr   string
	target string
	req    *healthpb.HealthCheckRequest
	creds  credentials.TransportCredentials
}

// NewGRPC returns a probe that succeeds when the health service reports
// SERVING for opts.Service.
//
// Each probe dials a new connection and closes it afterwards. A long-lived
// connection would reconnect with exponential backoff (up to two minutes)
// after an outage, so a restarted service could keep failing its probe well
// after it was up again; a fresh dial also tests what a new client sees.
func NewGRPC(opts GRPCOptions) (Probe, error) {
	if _, _, err := net.SplitHostPort(opts.Addr); err != nil {
		return nil, fmt.Errorf("grpc probe: %w", err)
	}
	creds := insecure.NewCredentials()
	if opts.TLS {
		cfg, err := tlsConfig(opts.InsecureSkipVerify, opts.CAFile, "")
		if err != nil {
			return nil, fmt.Errorf("grpc probe: %w", err)
		}
		creds = credentials.NewTLS(cfg)
	} else if opts.InsecureSkipVerify || opts.CAFile != "" {
		return nil, errors.New("grpc probe: TLS options given without TLS")
	}
	target := "grpc " + opts.Addr
	if opts.Service != "" {
		target += " service " + strconv.Quote(opts.Service)
	}
	return &grpcProbe{
		addr:   opts.Addr,
		target: target,
		req:    &healthpb.HealthCheckRequest{Service: opts.Service},
		creds:  creds,
	}, nil
}

func (p *grpcProbe) Probe(ctx context.Context) error {
	// gRPC dials in its own goroutine and reports connection failures as a
	// long "connection error: desc = ..." status; keeping the dialer's own
	// error allows the short form "connection refused".
	var (
		mu      sync.Mutex
		dialErr error
	)
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			mu.Lock()
			dialErr = err
			mu.Unlock()
		}
		return c, err
	}
	// passthrough hands Addr to the dialer unresolved, avoiding the DNS
	// resolver's background goroutine for a connection this short-lived.
	conn, err := grpc.NewClient("passthrough:///"+p.addr,
		grpc.WithTransportCredentials(p.creds),
		grpc.WithContextDialer(dial),
	)
	if err != nil {
		return fail(p.target, err)
	}
	defer conn.Close()

	resp, err := healthpb.NewHealthClient(conn).Check(ctx, p.req)
	if err == nil {
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fail(p.target, fmt.Errorf("status %s, want SERVING", resp.GetStatus()))
		}
		return nil
	}
	if ctx.Err() != nil {
		return fail(p.target, ctx.Err())
	}
	mu.Lock()
	defer mu.Unlock()
	if dialErr != nil {
		return fail(p.target, dialErr)
	}
	st := status.Convert(err)
	msg := st.Message()
	// Transport failures arrive as `connection error: desc = "transport:
	// ..."`; only the quoted part says anything.
	if desc, ok := strings.CutPrefix(msg, "connection error: desc = "); ok {
		if unquoted, err := strconv.Unquote(desc); err == nil {
			msg = strings.TrimPrefix(unquoted, "transport: ")
		}
	}
	return &failure{msg: p.target + ": " + st.Code().String() + ": " + msg, cause: err}
}
