// Package agents is how a coordinator reaches node agents: their gRPC API
// over mutual TLS, one connection per agent, kept for reuse.
package agents

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/dhvisor/dhvisor/coordinator/ops"
	"github.com/dhvisor/dhvisor/internal/conncache"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// Pool dials agents by node name.
type Pool struct {
	// addr resolves a node's agent API address (from gossip).
	addr  func(node string) (string, error)
	conns *conncache.Cache
}

// NewPool returns a pool that presents cfg's client certificate.
func NewPool(cfg *tls.Config, addr func(node string) (string, error)) *Pool {
	return &Pool{addr: addr, conns: conncache.New(credentials.NewTLS(cfg))}
}

func (p *Pool) client(node string) (pb.AgentClient, error) {
	addr, err := p.addr(node)
	if err != nil {
		return nil, &ops.Unavailable{Err: err}
	}
	c, err := p.conns.Get(addr)
	if errors.Is(err, conncache.ErrClosed) {
		return nil, &ops.Unavailable{Err: err}
	}
	if err != nil {
		return nil, fmt.Errorf("agent of %s at %s: %w", node, addr, err)
	}
	return pb.NewAgentClient(c), nil
}

// Control implements ops.Agents.
func (p *Pool) Control(ctx context.Context, node string, req *pb.ControlRequest, progress func(*pb.Progress)) error {
	c, err := p.client(node)
	if err != nil {
		return err
	}
	stream, err := c.Control(ctx, req)
	if err != nil {
		return classify(node, err)
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return classify(node, err)
		}
		progress(msg)
	}
}

// Status implements ops.Agents.
func (p *Pool) Status(ctx context.Context, node string) (*pb.StatusResponse, error) {
	c, err := p.client(node)
	if err != nil {
		return nil, err
	}
	resp, err := c.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return nil, classify(node, err)
	}
	return resp, nil
}

// Install implements ops.Agents. The agent's progress messages before the
// result (fetching, installing) are passed over: a step's record holds
// its outcome.
func (p *Pool) Install(ctx context.Context, node string, req *pb.InstallRequest) (*pb.InstallResult, error) {
	c, err := p.client(node)
	if err != nil {
		return nil, err
	}
	stream, err := c.Install(ctx, req)
	if err != nil {
		return nil, classify(node, err)
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, &ops.Unavailable{Err: fmt.Errorf("%s: the install step ended without a result", node)}
		}
		if err != nil {
			return nil, classify(node, err)
		}
		if msg.Result != nil {
			return msg.Result, nil
		}
	}
}

// classify marks transport failures (agent down, restarting, unreachable) as
// ops.Unavailable, which the engine retries; the agent's own refusals are
// returned as they are.
func classify(node string, err error) error {
	if status.Code(err) == codes.Unavailable {
		return &ops.Unavailable{Err: fmt.Errorf("%s: %s", node, status.Convert(err).Message())}
	}
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("%s: %s", node, st.Message())
	}
	return err
}

// Close closes every connection.
func (p *Pool) Close() { p.conns.Close() }
