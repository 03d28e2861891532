// Package api is the coordinator's cluster API. Every replica answers reads
// from its own state; a write reaching a follower is forwarded to the
// leader with the caller's identity, so the audit log names the operator and
// not the replica that passed the call on.
package api

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/coordinator/ops"
	"github.com/dhvisor/dhvisor/coordinator/pkgstore"
	"github.com/dhvisor/dhvisor/coordinator/raftnode"
	"github.com/dhvisor/dhvisor/internal/conncache"
	"github.com/dhvisor/dhvisor/internal/gossip"
	"github.com/dhvisor/dhvisor/internal/tlsutil"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// Metadata keys. The principal key is trusted only from a coordinator
// certificate (a forwarded call); the user key is what dhctl reports of the
// operating-system user behind an operator certificate, for the audit log.
const (
	mdPrincipal = "x-dhvisor-principal"
	// mdApplied is the leader's log index of a write, for the follower that
	// forwarded it.
	mdApplied = "x-dhvisor-applied-index"
	MDUser    = "x-dhvisor-user"
)

// Server implements pb.CoordinatorServer.
type Server struct {
	pb.UnimplementedCoordinatorServer
	FSM      *fsm.FSM
	Raft     *raftnode.Node
	Gossip   *gossip.Gossip // nil when the coordinator does not gossip
	Defaults ops.Defaults
	// LeaderCreds dial the leader's API to forward writes.
	LeaderCreds credentials.TransportCredentials
	// RouteTable is the route table this replica serves Envoy; nil when it
	// serves no xDS.
	RouteTable func() *pb.RoutesResponse
	// Store holds this replica's copies of upgrade packages.
	Store *pkgstore.Store
	// Hosts are this host's names for [host=...] scopes; nil:
	// properties.LocalHosts (tests name other hosts).
	Hosts func(context.Context) []string

	connsOnce sync.Once
	conns     *conncache.Cache
	// registering serializes registrations of one dispatcher's set on the
	// leader, so that each diff is made from the revision before it.
	registering keyedMutex
}

// Close closes the forwarding connections.
func (s *Server) Close() { s.leaderConns().Close() }

func (s *Server) leaderConns() *conncache.Cache {
	s.connsOnce.Do(func() { s.conns = conncache.New(s.LeaderCreds) })
	return s.conns
}

// ---- reads ----

// Status implements pb.CoordinatorServer.
func (s *Server) Status(ctx context.Context, req *pb.StatusRequest) (*pb.StatusResponse, error) {
	cl := &agentpb.ClusterResponse{LocalNode: s.Raft.ID(), GossipEnabled: s.Gossip != nil}
	if s.Gossip != nil {
		var known []string
		for _, v := range s.Gossip.View() {
			if v.Meta.Kind == gossip.KindCoordinator {
				continue
			}
			known = append(known, v.Name)
			if req.Node == "" || req.Node == v.Name {
				cl.Nodes = append(cl.Nodes, v.Proto())
			}
		}
		if req.Node != "" && len(cl.Nodes) == 0 {
			return nil, status.Errorf(codes.NotFound, "node: unknown node %q (known: %s)", req.Node, strings.Join(known, ", "))
		}
	}
	peers, err := s.Peers(ctx, nil)
	if err != nil {
		return nil, err
	}
	resp := &pb.StatusResponse{Cluster: cl, Coordinators: peers, Upstream: s.FSM.Upstream()}
	if op, ok := s.FSM.Active(); ok {
		resp.Active = op
	}
	return resp, nil
}

// Nodes implements pb.CoordinatorServer: the nodes as recorded in raft.
func (s *Server) Nodes(context.Context, *pb.NodesRequest) (*pb.NodesResponse, error) {
	nodes := s.FSM.Nodes()
	resp := &pb.NodesResponse{}
	for _, name := range slices.Sorted(maps.Keys(nodes)) {
		resp.Nodes = append(resp.Nodes, nodes[name])
	}
	return resp, nil
}

// Peers implements pb.CoordinatorServer.
func (s *Server) Peers(context.Context, *pb.PeersRequest) (*pb.PeersResponse, error) {
	servers, err := s.Raft.Servers()
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "raft configuration: %v", err)
	}
	leader, _ := s.Raft.Leader()
	resp := &pb.PeersResponse{AnsweredBy: s.Raft.ID(), Leader: leader, CommitIndex: s.Raft.Raft.CommitIndex(), AppliedIndex: s.Raft.Raft.AppliedIndex()}
	for _, srv := range servers {
		p := &pb.Peer{Id: string(srv.ID), RaftAddr: string(srv.Address)}
		if known := s.FSM.Peer(p.Id); known != nil {
			p.ApiAddr, p.XdsAddr = known.ApiAddr, known.XdsAddr
		}
		resp.Peers = append(resp.Peers, &pb.PeerStatus{Peer: p, Voter: srv.Suffrage == raft.Voter, Leader: p.Id == leader})
	}
	sort.Slice(resp.Peers, func(i, j int) bool { return resp.Peers[i].Peer.Id < resp.Peers[j].Peer.Id })
	return resp, nil
}

// ListOps implements pb.CoordinatorServer.
func (s *Server) ListOps(_ context.Context, req *pb.ListOpsRequest) (*pb.ListOpsResponse, error) {
	limit := int(req.Limit)
	if limit <= 0 {
		limit = 20
	}
	return &pb.ListOpsResponse{Ops: s.FSM.Ops(limit)}, nil
}

// GetOp implements pb.CoordinatorServer.
func (s *Server) GetOp(_ context.Context, req *pb.GetOpRequest) (*pb.Operation, error) {
	return s.op(req.Id)
}

func (s *Server) op(id string) (*pb.Operation, error) {
	if id == "" {
		newest := s.FSM.Ops(1)
		if len(newest) == 0 {
			return nil, status.Error(codes.NotFound, "no operation has run yet")
		}
		return newest[0], nil
	}
	op, ok := s.FSM.Op(id)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "id: no operation %q (see `dhctl ops list`)", id)
	}
	return op, nil
}

// WatchOp implements pb.CoordinatorServer.
func (s *Server) WatchOp(req *pb.GetOpRequest, stream grpc.ServerStreamingServer[pb.Operation]) error {
	id := req.Id
	var last *pb.Operation
	for {
		changed := s.FSM.Changed()
		op, err := s.op(id)
		if err != nil {
			return err
		}
		id = op.Id
		if last == nil || !proto.Equal(last, op) {
			if err := stream.Send(op); err != nil {
				return err
			}
			last = op
		}
		if fsm.Ended(op.State) {
			return nil
		}
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-changed:
		}
	}
}

// Audit implements pb.CoordinatorServer.
func (s *Server) Audit(_ context.Context, req *pb.AuditRequest) (*pb.AuditResponse, error) {
	limit := int(req.Limit)
	if limit <= 0 {
		limit = 50
	}
	return &pb.AuditResponse{Entries: s.FSM.Audit(limit)}, nil
}

// Plan implements pb.CoordinatorServer.
func (s *Server) Plan(_ context.Context, req *pb.OpRequest) (*pb.Operation, error) {
	var op *pb.Operation
	var err error
	if req.Action == ops.ActUpgrade {
		op, err = ops.PlanUpgrade(req, ops.UpgradeInput{Nodes: s.FSM.Nodes(), Desired: s.FSM.Desired(), Packages: s.FSM.Packages(), History: s.FSM.Ops(0)}, s.Defaults)
	} else {
		op, err = ops.Plan(req, s.FSM.Nodes(), s.FSM.Desired(), s.Defaults)
	}
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return op, nil
}

// ---- writes ----

// StartOp implements pb.CoordinatorServer.
func (s *Server) StartOp(ctx context.Context, req *pb.OpRequest) (*pb.Operation, error) {
	if !s.Raft.IsLeader() {
		return forward(s, ctx, func(ctx context.Context, c pb.CoordinatorClient) (*pb.Operation, error) { return c.StartOp(ctx, req) })
	}
	op, err := s.Plan(ctx, req)
	if err != nil {
		return nil, err
	}
	return s.commitOp(ctx, &pb.Command{Cmd: &pb.Command_OpCreate{OpCreate: op}})
}

// ControlOp implements pb.CoordinatorServer.
func (s *Server) ControlOp(ctx context.Context, req *pb.ControlOpRequest) (*pb.Operation, error) {
	if !s.Raft.IsLeader() {
		return forward(s, ctx, func(ctx context.Context, c pb.CoordinatorClient) (*pb.Operation, error) { return c.ControlOp(ctx, req) })
	}
	op, err := s.op(req.Id)
	if err != nil {
		return nil, err
	}
	u := &pb.OpUpdate{OpId: op.Id}
	switch req.Op {
	case pb.ControlOpRequest_OP_PAUSE:
		u.State, u.Message = fsm.OpPaused, "paused by an operator: running steps finish, no new stage starts"
	case pb.ControlOpRequest_OP_RESUME:
		u.State, u.RetryFailed = fsm.OpRunning, true
	case pb.ControlOpRequest_OP_ABORT:
		u.State, u.Message = fsm.OpAborted, "aborted by an operator: running steps finish, nothing else is done"
	default:
		return nil, status.Errorf(codes.InvalidArgument, "op: %v is not pause, resume or abort", req.Op)
	}
	return s.commitOp(ctx, &pb.Command{Cmd: &pb.Command_OpUpdate{OpUpdate: u}})
}

func (s *Server) commitOp(ctx context.Context, cmd *pb.Command) (*pb.Operation, error) {
	res, err := s.commit(ctx, principal(ctx), cmd)
	if err != nil {
		return nil, err
	}
	op, _ := res.(*pb.Operation)
	return op, nil
}

// commit proposes cmd as the caller, turning the FSM's refusals into
// FailedPrecondition.
func (s *Server) commit(ctx context.Context, who string, cmd *pb.Command) (any, error) {
	res, err := s.propose(ctx, who, cmd)
	return res, refusal(err)
}

// refusal turns the FSM's refusal of a command into FailedPrecondition,
// with the FSM's reason; other errors pass.
func refusal(err error) error {
	if errors.Is(err, fsm.ErrRejected) {
		return status.Error(codes.FailedPrecondition, strings.TrimPrefix(err.Error(), fsm.ErrRejected.Error()+": "))
	}
	return err
}

// propose proposes cmd as the caller and returns what Apply returned; a
// refusal is the FSM's own error, wrapping fsm.ErrRejected.
func (s *Server) propose(ctx context.Context, who string, cmd *pb.Command) (any, error) {
	cmd.Who = who
	cmd.AtUnixMs = time.Now().UnixMilli()
	data, err := fsm.Encode(cmd)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	res, index, err := s.Raft.Apply(ctx, data)
	if err != nil {
		if errors.Is(err, raftnode.ErrNotLeader) {
			return nil, status.Errorf(codes.Unavailable, "leadership changed; retry: %v", err)
		}
		return nil, status.Errorf(codes.Unavailable, "raft: %v", err)
	}
	// A follower that forwarded the call waits until it has applied this
	// entry too (see forward). Outside a gRPC call there is no one to tell.
	_ = grpc.SetHeader(ctx, metadata.Pairs(mdApplied, strconv.FormatUint(index, 10)))
	if rerr, ok := res.(error); ok {
		return nil, rerr
	}
	return res, nil
}

// Join implements pb.CoordinatorServer: adds a voter (or, for a voter
// already there, records its API address).
func (s *Server) Join(ctx context.Context, req *pb.JoinRequest) (*pb.PeersResponse, error) {
	if !s.Raft.IsLeader() {
		return forward(s, ctx, func(ctx context.Context, c pb.CoordinatorClient) (*pb.PeersResponse, error) { return c.Join(ctx, req) })
	}
	if req.Id == "" || req.RaftAddr == "" {
		return nil, status.Error(codes.InvalidArgument, "id and raft_addr: both required")
	}
	if err := s.Raft.Raft.AddVoter(raft.ServerID(req.Id), raft.ServerAddress(req.RaftAddr), 0, 30*time.Second).Error(); err != nil {
		return nil, status.Errorf(codes.Unavailable, "add voter %s at %s: %v", req.Id, req.RaftAddr, err)
	}
	if _, err := s.commit(ctx, principal(ctx), &pb.Command{Cmd: &pb.Command_PeerUpsert{PeerUpsert: &pb.Peer{Id: req.Id, RaftAddr: req.RaftAddr, ApiAddr: req.ApiAddr, XdsAddr: req.XdsAddr}}}); err != nil {
		return nil, err
	}
	return s.Peers(ctx, nil)
}

// Remove implements pb.CoordinatorServer.
func (s *Server) Remove(ctx context.Context, req *pb.RemoveRequest) (*pb.PeersResponse, error) {
	if !s.Raft.IsLeader() {
		return forward(s, ctx, func(ctx context.Context, c pb.CoordinatorClient) (*pb.PeersResponse, error) {
			return c.Remove(ctx, req)
		})
	}
	servers, err := s.Raft.Servers()
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "raft configuration: %v", err)
	}
	var ids []string
	found := false
	for _, srv := range servers {
		ids = append(ids, string(srv.ID))
		found = found || string(srv.ID) == req.Id
	}
	if !found {
		return nil, status.Errorf(codes.NotFound, "id: %q is not a coordinator (peers: %s)", req.Id, strings.Join(ids, ", "))
	}
	if req.Id == s.Raft.ID() {
		return nil, status.Errorf(codes.FailedPrecondition, "id: %q is the leader; `dhctl coordinator transfer` first, then remove it", req.Id)
	}
	if err := s.Raft.Raft.RemoveServer(raft.ServerID(req.Id), 0, 30*time.Second).Error(); err != nil {
		return nil, status.Errorf(codes.Unavailable, "remove %s: %v", req.Id, err)
	}
	if _, err := s.commit(ctx, principal(ctx), &pb.Command{Cmd: &pb.Command_PeerRemove{PeerRemove: req.Id}}); err != nil {
		return nil, err
	}
	return s.Peers(ctx, nil)
}

// Transfer implements pb.CoordinatorServer: hands leadership to another
// voter, before a planned restart of the leader.
func (s *Server) Transfer(ctx context.Context, req *pb.TransferRequest) (*pb.PeersResponse, error) {
	if !s.Raft.IsLeader() {
		return forward(s, ctx, func(ctx context.Context, c pb.CoordinatorClient) (*pb.PeersResponse, error) {
			return c.Transfer(ctx, req)
		})
	}
	var f raft.Future
	if req.Id == "" {
		f = s.Raft.Raft.LeadershipTransfer()
	} else {
		servers, err := s.Raft.Servers()
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "raft configuration: %v", err)
		}
		var addr raft.ServerAddress
		for _, srv := range servers {
			if string(srv.ID) == req.Id {
				addr = srv.Address
			}
		}
		if addr == "" {
			return nil, status.Errorf(codes.NotFound, "id: %q is not a coordinator", req.Id)
		}
		f = s.Raft.Raft.LeadershipTransferToServer(raft.ServerID(req.Id), addr)
	}
	if err := f.Error(); err != nil {
		return nil, status.Errorf(codes.Unavailable, "leadership transfer: %v", err)
	}
	return s.Peers(ctx, nil)
}

// RegisterSelf records this replica's addresses in the replicated state, so
// followers can forward writes to it once it leads: directly on the leader,
// else through the leader's Join.
func (s *Server) RegisterSelf(ctx context.Context, self *pb.Peer) error {
	if s.Raft.IsLeader() {
		_, err := s.commit(ctx, "coordinator:"+self.Id, &pb.Command{Cmd: &pb.Command_PeerUpsert{PeerUpsert: self}})
		return err
	}
	_, err := forward(s, ctx, func(ctx context.Context, c pb.CoordinatorClient) (*pb.PeersResponse, error) {
		return c.Join(ctx, &pb.JoinRequest{Id: self.Id, RaftAddr: self.RaftAddr, ApiAddr: self.ApiAddr, XdsAddr: self.XdsAddr})
	})
	return err
}

// ---- forwarding ----

// forward sends a write to the leader over mutual TLS, carrying the
// caller's identity.
func forward[T any](s *Server, ctx context.Context, call func(context.Context, pb.CoordinatorClient) (T, error)) (T, error) {
	var zero T
	leader, _ := s.Raft.Leader()
	if leader == "" {
		return zero, status.Error(codes.Unavailable, "no raft leader at the moment (an election is under way, or a majority of coordinators is down); retry")
	}
	peer := s.FSM.Peer(leader)
	if peer == nil || peer.ApiAddr == "" {
		return zero, status.Errorf(codes.Unavailable, "the leader %s has not published its API address yet; retry", leader)
	}
	conn, err := s.leaderConns().Get(peer.ApiAddr)
	if err != nil {
		return zero, status.Errorf(codes.Unavailable, "leader %s at %s: %v", leader, peer.ApiAddr, err)
	}
	// A call of the replica's own (RegisterSelf) has no caller to vouch for:
	// the leader then sees this replica's certificate.
	if _, ok := tlsutil.PeerIdentity(ctx); ok {
		ctx = metadata.AppendToOutgoingContext(ctx, mdPrincipal, principal(ctx))
	}
	var header metadata.MD
	res, err := call(ctx, pb.NewCoordinatorClient(headerConn{conn, &header}))
	if err != nil {
		return zero, err
	}
	// The caller's next read comes to us: it must find what it just wrote
	// (the operation it started or paused, the package it uploaded), which
	// we apply a moment after the leader did.
	var index uint64
	for _, v := range header.Get(mdApplied) {
		if i, err := strconv.ParseUint(v, 10, 64); err == nil {
			index = max(index, i)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.FSM.WaitApplied(wctx, index); err != nil {
		return zero, status.Errorf(codes.Unavailable, "the write is committed, but coordinator %s has not applied it yet; retry the read: %v", s.Raft.ID(), err)
	}
	return res, nil
}

// peerClient is the API of the coordinator at addr.
func (s *Server) peerClient(addr string) (pb.CoordinatorClient, error) {
	c, err := s.leaderConns().Get(addr)
	if err != nil {
		return nil, err
	}
	return pb.NewCoordinatorClient(c), nil
}

// headerConn is a connection whose calls record the response headers.
type headerConn struct {
	*grpc.ClientConn
	header *metadata.MD
}

func (c headerConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.ClientConn.Invoke(ctx, method, args, reply, append(opts, grpc.Header(c.header))...)
}

// principal is who a call comes from, for the audit log: the certificate's
// role and name, the operating-system user dhctl reported, and for a
// forwarded call the principal the forwarding coordinator vouches for.
func principal(ctx context.Context) string {
	id, ok := tlsutil.PeerIdentity(ctx)
	if !ok {
		return "unknown"
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if id.Role == tlsutil.RoleCoordinator {
		if v := md.Get(mdPrincipal); len(v) > 0 {
			return v[0]
		}
	}
	who := id.String()
	if v := md.Get(MDUser); len(v) > 0 && v[0] != "" && v[0] != id.Name {
		who += fmt.Sprintf(" (user %s)", v[0])
	}
	return who
}
