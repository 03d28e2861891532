// Package api is the agent's gRPC API, served on its local unix socket for
// dhctl and, with mutual TLS, on TCP for coordinators and remote operators.
package api

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dhvisor/dhvisor/agent/install"
	"github.com/dhvisor/dhvisor/agent/runtime"
	"github.com/dhvisor/dhvisor/agent/supervise"
	"github.com/dhvisor/dhvisor/agent/workers"
	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/gossip"
	"github.com/dhvisor/dhvisor/internal/portowner"
	"github.com/dhvisor/dhvisor/internal/version"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// Reloader re-reads the agent's configuration.
type Reloader func(ctx context.Context) (supervise.ReloadResult, error)

// Server implements the Agent service.
type Server struct {
	pb.UnimplementedAgentServer
	mgr     *supervise.Manager
	reload  Reloader
	gossip  *gossip.Gossip // nil when the node runs alone
	apiAddr string         // the TCP API address peers dial; "" without one
	started time.Time
	// Workers passes dispatchers' worker sets on; nil on a node that
	// cannot reach the coordinators (no tls files).
	Workers *workers.Registry
	// Installer installs packages for upgrades; PackageVersion is what it
	// last found installed ("NAME VERSION").
	Installer      *install.Installer
	PackageVersion func() string
}

// NewServer returns the API over mgr and, when the node gossips, g. apiAddr
// is the address the node publishes for its TCP API ("" when it has none).
func NewServer(mgr *supervise.Manager, reload Reloader, g *gossip.Gossip, apiAddr string) *Server {
	return &Server{mgr: mgr, reload: reload, gossip: g, apiAddr: apiAddr, started: time.Now()}
}

// ListenUnix opens the local socket: mode 0660, owned by root and group so
// that the Deephaven admins can run dhctl without sudo and nobody else can.
// A socket that still answers means another process (an agent, most
// likely) serves it: refuse, naming it.
func ListenUnix(path, group string) (net.Listener, error) {
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
		return nil, portowner.Explain(err, path)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, err
	}
	if group != "" && os.Geteuid() == 0 {
		if g, err := user.LookupGroup(group); err == nil {
			gid, _ := strconv.Atoi(g.Gid)
			_ = os.Chown(path, 0, gid)
		}
	}
	return l, nil
}

// Status implements pb.AgentServer.
func (s *Server) Status(_ context.Context, req *pb.StatusRequest) (*pb.StatusResponse, error) {
	sts, err := s.mgr.Status(req.Services)
	if err != nil {
		return nil, toStatus(err)
	}
	node := s.mgr.Node()
	resp := &pb.StatusResponse{
		Node:               node.Agent.Node,
		AgentVersion:       version.Version,
		AgentStartedUnixMs: s.started.UnixMilli(),
		ConfigFile:         node.File,
		Roles:              node.Agent.Roles,
	}
	if err := s.mgr.StateError(); err != nil {
		resp.StateError = err.Error()
	}
	for _, st := range sts {
		ps := ToProto(st)
		if svc := node.Services[st.Name]; svc != nil {
			ps.Groups, ps.Mode, ps.OnBoot = svc.Groups, svc.Mode, svc.OnBoot
		}
		if svc := node.Services[st.Name]; svc != nil && svc.Envoy != nil {
			ps.Envoy = &pb.EnvoyUpstream{PortName: svc.Envoy.Port, Port: int32(svc.Ports[svc.Envoy.Port]), Tls: svc.Envoy.TLS, Http2: svc.Envoy.HTTP2,
				Routes: svc.Envoy.Routes, DefaultRoute: svc.Envoy.Default}
		}
		resp.Services = append(resp.Services, ps)
	}
	return resp, nil
}

// ToProto converts a service status for the wire.
func ToProto(st supervise.Status) *pb.ServiceStatus {
	out := &pb.ServiceStatus{
		Name:             st.Name,
		State:            string(st.State),
		Monitored:        st.Monitored,
		DesiredRunning:   st.DesiredRunning,
		Pid:              int32(st.PID),
		Restarts:         int32(st.Restarts),
		CpuPercent:       st.CPUPercent,
		MemoryBytes:      st.RSSBytes,
		Message:          st.Message,
		User:             st.User,
		StateSinceUnixMs: st.Since.UnixMilli(),
		LastOpToken:      st.LastOpToken,
		DependsOn:        st.DependsOn,
	}
	if !st.StartedAt.IsZero() && st.PID != 0 {
		out.StartedUnixMs = st.StartedAt.UnixMilli()
	}
	if c := st.Container; c != nil {
		out.Container = &pb.ContainerInfo{Id: c.ID, Name: c.Name, Image: c.Image}
	}
	for _, p := range st.Ports {
		out.Ports = append(out.Ports, int32(p))
	}
	if st.LastCheck.Name != "" {
		out.LastCheck = &pb.CheckResult{Name: st.LastCheck.Name, Ok: st.LastCheck.OK, Message: st.LastCheck.Message, AtUnixMs: st.LastCheck.At.UnixMilli(), DurationUs: st.LastCheck.Duration.Microseconds()}
	}
	if e := st.LastExit; e != nil {
		out.LastExit = &pb.ExitInfo{Code: int32(e.Code), Signal: e.Signal, AtUnixMs: e.At.UnixMilli()}
	}
	return out
}

var actions = map[pb.Action]supervise.Action{
	pb.Action_ACTION_START:     supervise.Start,
	pb.Action_ACTION_STOP:      supervise.Stop,
	pb.Action_ACTION_RESTART:   supervise.Restart,
	pb.Action_ACTION_MONITOR:   supervise.Monitor,
	pb.Action_ACTION_UNMONITOR: supervise.Unmonitor,
}

// Control implements pb.AgentServer.
func (s *Server) Control(req *pb.ControlRequest, stream grpc.ServerStreamingServer[pb.Progress]) error {
	act, ok := actions[req.Action]
	if !ok {
		return status.Errorf(codes.InvalidArgument, "action: %v is not one of start, stop, restart, monitor, unmonitor", req.Action)
	}
	if len(req.Services) == 0 {
		return status.Error(codes.InvalidArgument, "services: name at least one service, or all")
	}
	if len(req.OpToken) > maxOpToken {
		return status.Errorf(codes.InvalidArgument, "op_token: %d bytes, at most %d (it is kept in the state file)", len(req.OpToken), maxOpToken)
	}
	return s.run(stream, req.Block, req.TimeoutMs, func(ctx context.Context, p func(supervise.Progress)) error {
		if req.OpToken != "" {
			return s.mgr.ControlStep(ctx, req.OpToken, time.Duration(req.TimeoutMs)*time.Millisecond, act, req.Services, req.Block, p)
		}
		return s.mgr.Control(ctx, act, req.Services, req.Block, p)
	})
}

// maxOpToken bounds an operation step's token: one is stored per service.
const maxOpToken = 256

// Up implements pb.AgentServer.
func (s *Server) Up(req *pb.OrderRequest, stream grpc.ServerStreamingServer[pb.Progress]) error {
	return s.run(stream, req.Block, req.TimeoutMs, func(ctx context.Context, p func(supervise.Progress)) error {
		return s.mgr.Up(ctx, req.Block, p)
	})
}

// Down implements pb.AgentServer.
func (s *Server) Down(req *pb.OrderRequest, stream grpc.ServerStreamingServer[pb.Progress]) error {
	return s.run(stream, req.Block, req.TimeoutMs, func(ctx context.Context, p func(supervise.Progress)) error {
		return s.mgr.Down(ctx, req.Block, p)
	})
}

func (s *Server) run(stream grpc.ServerStreamingServer[pb.Progress], block bool, timeoutMs int64, f func(context.Context, func(supervise.Progress)) error) error {
	if timeoutMs < 0 {
		return status.Error(codes.InvalidArgument, "timeout_ms: must not be negative")
	}
	ctx := stream.Context()
	if block {
		timeout := 10 * time.Minute
		if timeoutMs > 0 {
			timeout = time.Duration(timeoutMs) * time.Millisecond
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	progress := make(chan supervise.Progress, 64)
	done := make(chan error, 1)
	go func() {
		done <- f(ctx, func(p supervise.Progress) {
			select {
			case progress <- p:
			case <-ctx.Done():
			}
		})
	}()
	for {
		select {
		case p := <-progress:
			if err := send(stream, p); err != nil {
				return err
			}
		case err := <-done:
			// Progress sent just before the end must not be lost.
			for {
				select {
				case p := <-progress:
					if serr := send(stream, p); serr != nil {
						return serr
					}
				default:
					return toStatus(err)
				}
			}
		}
	}
}

func send(stream grpc.ServerStreamingServer[pb.Progress], p supervise.Progress) error {
	return stream.Send(&pb.Progress{Service: p.Service, State: string(p.State), Message: p.Message, Done: p.Done, Failed: p.Failed})
}

// Reload implements pb.AgentServer.
func (s *Server) Reload(ctx context.Context, _ *pb.ReloadRequest) (*pb.ReloadResponse, error) {
	res, err := s.reload(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.ReloadResponse{Added: res.Added, Removed: res.Removed, Changed: res.Changed, RestartNeeded: res.RestartNeeded}, nil
}

func toStatus(err error) error {
	if err == nil {
		return nil
	}
	var unknown *supervise.UnknownServiceError
	var cfg config.Errors
	switch {
	case errors.As(err, &unknown):
		return status.Error(codes.NotFound, err.Error())
	case errors.As(err, &cfg):
		return status.Error(codes.InvalidArgument, "configuration refused, the running configuration stays:\n"+err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.FailedPrecondition, err.Error())
}

// Cluster implements pb.AgentServer: every node as gossip sees it, or this
// node alone when it does not gossip.
func (s *Server) Cluster(_ context.Context, req *pb.ClusterRequest) (*pb.ClusterResponse, error) {
	node := s.mgr.Node()
	resp := &pb.ClusterResponse{LocalNode: node.Agent.Node, GossipEnabled: s.gossip != nil}
	if s.gossip == nil {
		now := time.Now()
		resp.Nodes = []*pb.NodeInfo{gossip.NodeView{
			Name: node.Agent.Node, State: gossip.NodeAlive, StateSince: s.started, Learned: now,
			Meta:     gossip.NodeMeta{Roles: node.Agent.Roles, APIAddr: s.apiAddr, DhvisorVersion: version.Version, PackageVersion: s.packageVersion()},
			Services: Compact(s.mgr.Snapshot()),
		}.Proto()}
	} else {
		for _, v := range s.gossip.View() {
			resp.Nodes = append(resp.Nodes, v.Proto())
		}
	}
	if req.Node != "" {
		var known []string
		for _, n := range resp.Nodes {
			if n.Name == req.Node {
				resp.Nodes = []*pb.NodeInfo{n}
				return resp, nil
			}
			known = append(known, n.Name)
		}
		return nil, status.Errorf(codes.NotFound, "node: unknown node %q (known: %s)", req.Node, strings.Join(known, ", "))
	}
	return resp, nil
}

// Compact is the gossiped form of the node's service states.
func Compact(sts []supervise.Status) []gossip.ServiceHealth {
	out := make([]gossip.ServiceHealth, len(sts))
	for i, s := range sts {
		out[i] = gossip.ServiceHealth{Name: s.Name, State: string(s.State), PID: int32(s.PID), Restarts: int32(s.Restarts), Since: s.Since, Message: s.Message}
		if s.PID != 0 {
			out[i].Started = s.StartedAt
		}
		if c := s.Container; c != nil {
			out[i].Container = runtime.ShortID(c.ID) + " " + c.Image
		}
	}
	return out
}

// GossipKeys implements pb.AgentServer. Changes reach every node: the key
// manager gossips them.
func (s *Server) GossipKeys(_ context.Context, req *pb.GossipKeysRequest) (*pb.GossipKeysResponse, error) {
	if s.gossip == nil {
		return nil, status.Error(codes.FailedPrecondition, "this node does not gossip (no gossip.bind in its agent.yaml)")
	}
	k := s.gossip.Keys()
	var err error
	switch req.Op {
	case pb.GossipKeysRequest_OP_LIST:
	case pb.GossipKeysRequest_OP_INSTALL:
		err = k.Install(req.Key)
	case pb.GossipKeysRequest_OP_USE:
		err = k.Use(req.Key)
	case pb.GossipKeysRequest_OP_REMOVE:
		err = k.Remove(req.Key)
	default:
		return nil, status.Errorf(codes.InvalidArgument, "op: %v is not list, install, use or remove", req.Op)
	}
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	resp := &pb.GossipKeysResponse{Keys: k.List()}
	for _, key := range resp.Keys {
		id, _ := gossip.KeyID(key)
		resp.KeyIds = append(resp.KeyIds, id)
	}
	return resp, nil
}

// RegisterWorkers implements pb.AgentServer.
func (s *Server) RegisterWorkers(ctx context.Context, req *pb.RegisterWorkersRequest) (*pb.RegisterWorkersResponse, error) {
	if s.Workers == nil {
		return nil, status.Error(codes.FailedPrecondition, "this agent cannot reach the coordinators: its agent.yaml has no tls files (an agent certificate)")
	}
	if req.Node != "" && req.Node != s.mgr.Node().Agent.Node {
		return nil, status.Errorf(codes.InvalidArgument, "node: %q is not this node (%s)", req.Node, s.mgr.Node().Agent.Node)
	}
	return s.Workers.Register(ctx, req)
}

// Logs implements pb.AgentServer.
func (s *Server) Logs(req *pb.LogsRequest, stream grpc.ServerStreamingServer[pb.LogChunk]) error {
	if req.Service == "" || req.Service == "all" {
		return status.Error(codes.InvalidArgument, "service: name one service")
	}
	if req.Tail < 0 {
		return status.Errorf(codes.InvalidArgument, "tail: %d lines; expected 0 or more (or all)", req.Tail)
	}
	tail := int(req.Tail)
	if req.All {
		tail = -1
	}
	err := s.mgr.Logs(stream.Context(), req.Service, tail, req.Follow, chunkWriter{stream})
	if stream.Context().Err() != nil {
		return nil // the caller stopped following
	}
	return toStatus(err)
}

// chunkWriter sends what is written as log chunks.
type chunkWriter struct {
	stream grpc.ServerStreamingServer[pb.LogChunk]
}

func (w chunkWriter) Write(b []byte) (int, error) {
	if err := w.stream.Send(&pb.LogChunk{Data: bytes.Clone(b)}); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (s *Server) packageVersion() string {
	if s.PackageVersion == nil {
		return ""
	}
	return s.PackageVersion()
}

// Install implements pb.AgentServer: one install step of an upgrade. The
// step goes on if the caller goes away; the last message has the result.
func (s *Server) Install(req *pb.InstallRequest, stream grpc.ServerStreamingServer[pb.InstallProgress]) error {
	if s.Installer == nil {
		return status.Error(codes.FailedPrecondition, "this agent installs no packages")
	}
	// Progress comes from the install's goroutine; Install returns only
	// once it sends no more, so the result is the last message.
	var sendErr error
	res, err := s.Installer.Install(stream.Context(), req, func(p *pb.InstallProgress) {
		if sendErr == nil {
			sendErr = stream.Send(p)
		}
	})
	var re *install.RequestError
	switch {
	case errors.As(err, &re):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, install.ErrShuttingDown):
		return status.Error(codes.Unavailable, err.Error())
	case err != nil:
		return toStatus(err)
	}
	phase := "done"
	if res.Failed {
		phase = "failed"
	}
	return stream.Send(&pb.InstallProgress{Phase: phase, Message: res.Message, Result: res})
}
