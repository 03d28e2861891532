package api

import (
	"context"
	"net"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/internal/extraroutes"
	"github.com/dhvisor/dhvisor/internal/properties"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// hostLookup bounds the DNS lookups of the leader's own names.
const hostLookup = 3 * time.Second

// LocalHosts are the names of this replica's host that [host=...] scopes
// match: properties.LocalHosts unless Server.Hosts says otherwise.
func (s *Server) LocalHosts(ctx context.Context) []string {
	if s.Hosts != nil {
		return s.Hosts(ctx)
	}
	ctx, cancel := context.WithTimeout(ctx, hostLookup)
	defer cancel()
	return properties.LocalHosts(ctx)
}

// LoadExtraRoutes implements pb.CoordinatorServer. The leader evaluates the
// files as configuration_server on its own host (dhcoord runs on the infra
// node, beside Deephaven's configuration server, which evaluates the same
// properties there) and commits the outcome: every replica serves those
// routes, and a later leader on another host does not evaluate them again.
func (s *Server) LoadExtraRoutes(ctx context.Context, req *pb.LoadExtraRoutesRequest) (*pb.ExtraRoutesResponse, error) {
	if !s.Raft.IsLeader() {
		return forward(s, ctx, func(ctx context.Context, c pb.CoordinatorClient) (*pb.ExtraRoutesResponse, error) {
			return c.LoadExtraRoutes(ctx, req)
		})
	}
	if len(req.Files) == 0 {
		return nil, status.Error(codes.InvalidArgument, "files: at least the file to load")
	}
	source := req.Source
	if source == "" || len(source) > 500 {
		source = "API load of " + req.Files[0].Name
	}
	doc, err := extraroutes.New(source, req.Files, s.Raft.ID(), s.LocalHosts(ctx), nil)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "refused, nothing changed: %v", err)
	}
	doc.Warnings = extraroutes.Elsewhere(req.Files, doc.Routes, s.peerHosts())
	if req.DryRun {
		return &pb.ExtraRoutesResponse{AnsweredBy: s.Raft.ID(), ExtraRoutes: doc}, nil
	}
	return s.CommitExtraRoutes(ctx, principal(ctx), doc)
}

// CommitExtraRoutes replaces the extra routes with doc as who.
func (s *Server) CommitExtraRoutes(ctx context.Context, who string, doc *pb.ExtraRoutes) (*pb.ExtraRoutesResponse, error) {
	res, err := s.commit(ctx, who, &pb.Command{Cmd: &pb.Command_ExtraRoutesLoad{ExtraRoutesLoad: doc}})
	if err != nil {
		return nil, err
	}
	s.Raft.Announce()
	loaded, _ := res.(*pb.ExtraRoutes)
	return &pb.ExtraRoutesResponse{AnsweredBy: s.Raft.ID(), ExtraRoutes: loaded}, nil
}

// ExtraRoutes implements pb.CoordinatorServer: the set this replica serves.
func (s *Server) ExtraRoutes(_ context.Context, req *pb.ExtraRoutesRequest) (*pb.ExtraRoutesResponse, error) {
	resp := &pb.ExtraRoutesResponse{AnsweredBy: s.Raft.ID(), ExtraRoutes: &pb.ExtraRoutes{}}
	if cur := s.FSM.ExtraRoutes(); cur != nil {
		// The state's set is shared: the answer gets its own copy.
		resp.ExtraRoutes = proto.Clone(cur).(*pb.ExtraRoutes)
	}
	if !req.WithFiles {
		for _, f := range resp.ExtraRoutes.Files {
			f.Content = nil
		}
	}
	return resp, nil
}

// peerHosts are the other coordinators' hosts by id, with the names this
// replica knows them by: the id (the node name, normally the hostname) and
// the hosts of their raft and API addresses.
func (s *Server) peerHosts() map[string][]string {
	servers, err := s.Raft.Servers()
	if err != nil {
		return nil
	}
	out := map[string][]string{}
	for _, srv := range servers {
		id := string(srv.ID)
		if id == s.Raft.ID() {
			continue
		}
		addrs := []string{string(srv.Address)}
		if p := s.FSM.Peer(id); p != nil {
			addrs = append(addrs, p.ApiAddr)
		}
		names := []string{strings.ToLower(id)}
		for _, a := range addrs {
			if h, _, err := net.SplitHostPort(a); err == nil && !slices.Contains(names, strings.ToLower(h)) {
				names = append(names, strings.ToLower(h))
			}
		}
		out[id] = names
	}
	return out
}
