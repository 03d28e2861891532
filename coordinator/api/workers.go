package api

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/internal/tlsutil"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// RegisterWorkers implements pb.CoordinatorServer. An agent registers for
// its own node only (its certificate names it); the leader stores a changed
// set whole and only renews the lease of an unchanged one, which is a small
// raft entry however many workers the set holds.
func (s *Server) RegisterWorkers(ctx context.Context, req *agentpb.RegisterWorkersRequest) (*agentpb.RegisterWorkersResponse, error) {
	id, _ := tlsutil.PeerIdentity(ctx)
	if id.Role == tlsutil.RoleAgent {
		if req.Node != "" && req.Node != id.Name {
			return nil, status.Errorf(codes.PermissionDenied, "node: agent %s may register workers for its own node only, not %q", id.Name, req.Node)
		}
		req.Node = id.Name
	}
	if req.Node == "" {
		return nil, status.Error(codes.InvalidArgument, "node: required")
	}
	if err := req.Normalize(); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	// Envoy takes only addresses as endpoints; agents resolve names on the
	// workers' node before they pass a set on.
	for i, w := range req.Workers {
		if w.Host != "" && net.ParseIP(w.Host) == nil {
			return nil, status.Errorf(codes.InvalidArgument, "workers[%d].host: %q is not an IP address (register through the node's agent, which resolves names)", i, w.Host)
		}
	}
	if !s.Raft.IsLeader() {
		return forward(s, ctx, func(ctx context.Context, c pb.CoordinatorClient) (*agentpb.RegisterWorkersResponse, error) {
			return c.RegisterWorkers(ctx, req)
		})
	}
	expires := time.Now().Add(time.Duration(req.LeaseTtlMs) * time.Millisecond).UnixMilli()
	changed, err := s.StoreWorkers(ctx, principal(ctx), &pb.WorkerSet{Node: req.Node, Dispatcher: req.Dispatcher, Workers: req.Workers, LeaseExpiresUnixMs: expires, DispatcherPid: req.DispatcherPid})
	if err != nil {
		return nil, refusal(err)
	}
	return &agentpb.RegisterWorkersResponse{Workers: int32(len(req.Workers)), LeaseExpiresUnixMs: expires, Coordinator: s.Raft.ID(), Changed: changed}, nil
}

// StoreWorkers makes ws (workers sorted by name) the set of its dispatcher
// on its node, on the leader, as who: a changed set whole or as the diff
// from the stored one, an unchanged one as a renewal of its lease, which
// is a small raft entry however many workers the set holds. It says
// whether the workers changed. Registrations and the configuration server
// import (coordinator/upstream) both store their sets here.
func (s *Server) StoreWorkers(ctx context.Context, who string, ws *pb.WorkerSet) (changed bool, err error) {
	unlock := s.registering.lock(fsm.WorkerKey(ws.Node, ws.Dispatcher))
	defer unlock()
	whole := &pb.Command{Cmd: &pb.Command_WorkerSet{WorkerSet: ws}}
	cur := s.FSM.WorkerSet(ws.Node, ws.Dispatcher)
	var cmd *pb.Command
	if cur == nil || len(ws.Workers) == 0 || cur.Upstream != ws.Upstream {
		// (a set of the other source is refused whole, with why)
		cmd = whole
	} else {
		// Most registrations change a worker or two of a set that may
		// hold thousands, or none: the raft entry carries only those.
		upsert, remove := fsm.DiffWorkers(cur.Workers, ws.Workers)
		if len(upsert) == 0 && len(remove) == 0 && cur.DispatcherPid == ws.DispatcherPid {
			cmd = &pb.Command{Cmd: &pb.Command_WorkerRenew{WorkerRenew: &pb.WorkerLease{Node: ws.Node, Dispatcher: ws.Dispatcher, LeaseExpiresUnixMs: ws.LeaseExpiresUnixMs}}}
		} else {
			cmd = &pb.Command{Cmd: &pb.Command_WorkerDiff{WorkerDiff: &pb.WorkerDiff{
				Node: ws.Node, Dispatcher: ws.Dispatcher, BaseRevision: cur.Revision, Upsert: upsert, Remove: remove,
				LeaseExpiresUnixMs: ws.LeaseExpiresUnixMs, DispatcherPid: ws.DispatcherPid, Upstream: ws.Upstream,
			}}}
		}
	}
	changed = cmd.GetWorkerRenew() == nil
	_, err = s.propose(ctx, who, cmd)
	if errors.Is(err, fsm.ErrStaleDiff) {
		// Changed by a leader before this one: the whole set is right
		// whatever the set holds now.
		_, err = s.propose(ctx, who, whole)
	}
	if err != nil {
		return false, err
	}
	if changed {
		s.Raft.Announce()
	}
	return changed, nil
}

// Workers implements pb.CoordinatorServer.
func (s *Server) Workers(_ context.Context, req *pb.WorkersRequest) (*pb.WorkersResponse, error) {
	resp := &pb.WorkersResponse{AnsweredBy: s.Raft.ID(), Upstream: s.FSM.Upstream()}
	for _, ws := range s.FSM.WorkerSets() {
		if req.Node != "" && req.Node != ws.Node {
			continue
		}
		// The state's sets are shared: the answer gets its own copy.
		ws = proto.Clone(ws).(*pb.WorkerSet)
		// A worker without a host is on its dispatcher's node: show where.
		if n := s.FSM.Node(ws.Node); n != nil && n.Host != "" {
			for _, w := range ws.Workers {
				if w.Host == "" {
					w.Host = n.Host
				}
			}
		}
		resp.Sets = append(resp.Sets, ws)
	}
	return resp, nil
}

// Routes implements pb.CoordinatorServer.
func (s *Server) Routes(context.Context, *pb.RoutesRequest) (*pb.RoutesResponse, error) {
	if s.RouteTable == nil {
		return nil, status.Error(codes.Unavailable, "this coordinator serves no xDS")
	}
	resp := s.RouteTable()
	resp.AnsweredBy = s.Raft.ID()
	return resp, nil
}

// agentMethods are what an agent's certificate may call: registering its
// node's workers, and reading the coordinators' addresses (an Envoy node's
// agent renders Envoy's bootstrap from them). Everything else is for
// operators and coordinators.
var agentMethods = map[string]bool{
	pb.Coordinator_RegisterWorkers_FullMethodName: true,
	pb.Coordinator_Peers_FullMethodName:           true,
}

// Authorize is a unary interceptor that keeps agents to agentMethods (the
// TLS handshake has already refused every other role and foreign CA).
func Authorize(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if id, ok := tlsutil.PeerIdentity(ctx); ok && id.Role == tlsutil.RoleAgent && !agentMethods[info.FullMethod] {
		return nil, status.Errorf(codes.PermissionDenied, "%s: an agent certificate may only register its node's workers and read the coordinators' addresses", info.FullMethod)
	}
	return handler(ctx, req)
}

// AuthorizeStream is Authorize for streaming calls: agents may only fetch
// packages.
func AuthorizeStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if id, ok := tlsutil.PeerIdentity(ss.Context()); ok && id.Role == tlsutil.RoleAgent && info.FullMethod != pb.Coordinator_FetchPackage_FullMethodName {
		return status.Errorf(codes.PermissionDenied, "%s: an agent certificate may only register its node's workers and fetch packages", info.FullMethod)
	}
	return handler(srv, ss)
}

// keyedMutex is a mutex per key.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyedLock
}

type keyedLock struct {
	sync.Mutex
	users int
}

// lock locks key and returns its unlock; a key nobody holds is forgotten.
func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedLock{}
	}
	l := k.locks[key]
	if l == nil {
		l = &keyedLock{}
		k.locks[key] = l
	}
	l.users++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.users--; l.users == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}
