package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/coordinator/pkgstore"
	"github.com/dhvisor/dhvisor/internal/pkgsig"
	"github.com/dhvisor/dhvisor/internal/tlsutil"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// UploadPackage implements pb.CoordinatorServer. The replica that takes the
// upload copies the package to every other coordinator and records it once
// a majority holds it: whichever replica leads later, and any single one
// that dies, a holder remains for the agents to fetch from.
func (s *Server) UploadPackage(stream grpc.ClientStreamingServer[pb.PackageChunk, pb.Package]) error {
	hdr, err := s.receive(stream)
	if err != nil {
		return err
	}
	if err := s.checkSigned(hdr); err != nil {
		return err
	}
	ctx := stream.Context()
	servers, err := s.Raft.Servers()
	if err != nil {
		return status.Errorf(codes.Unavailable, "raft configuration: %v", err)
	}
	holders, failures := s.replicate(ctx, servers, hdr)
	holders = append(holders, s.Raft.ID())
	slices.Sort(holders)
	if need := len(servers)/2 + 1; len(holders) < need {
		return status.Errorf(codes.Unavailable, "the package reached %d of %d coordinators (%s), a majority (%d) must hold it: %s",
			len(holders), len(servers), strings.Join(holders, ", "), need, strings.Join(failures, "; "))
	}
	rec := &pb.Package{Sha256: hdr.Sha256, Size: hdr.Size, FileName: hdr.FileName, Replicas: holders, Signature: hdr.Signature}
	got, err := s.recordPackage(ctx, rec)
	if err != nil {
		return err
	}
	return stream.SendAndClose(got)
}

// ReplicatePackage implements pb.CoordinatorServer: the copy another
// coordinator sends after an upload.
func (s *Server) ReplicatePackage(stream grpc.ClientStreamingServer[pb.PackageChunk, pb.Package]) error {
	if id, _ := tlsutil.PeerIdentity(stream.Context()); id.Role != tlsutil.RoleCoordinator {
		return status.Error(codes.PermissionDenied, "only coordinators replicate packages; upload with UploadPackage")
	}
	hdr, err := s.receive(stream)
	if err != nil {
		return err
	}
	return stream.SendAndClose(&pb.Package{Sha256: hdr.Sha256, Size: hdr.Size, FileName: hdr.FileName, Replicas: []string{s.Raft.ID()}})
}

// receive stores the package a stream carries: a header, then the bytes.
func (s *Server) receive(stream grpc.ClientStreamingServer[pb.PackageChunk, pb.Package]) (*pb.Package, error) {
	if s.Store == nil {
		return nil, status.Error(codes.FailedPrecondition, "this coordinator keeps no packages")
	}
	first, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	hdr := first.GetHeader()
	if hdr == nil {
		return nil, status.Error(codes.InvalidArgument, "header: the first message must say what follows (sha256, size, file_name)")
	}
	if err := pkgstore.Valid(hdr.Sha256, hdr.Size); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := validFileName(hdr.FileName); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := s.Store.Write(hdr.Sha256, hdr.Size, pb.NewPackageReader(first.Data, stream.Recv)); err != nil {
		if errors.Is(err, pkgstore.ErrMismatch) {
			return nil, status.Error(codes.DataLoss, err.Error())
		}
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return hdr, nil
}

// checkSigned refuses, when the cluster requires signed packages, an
// upload that carries no OpenPGP signature: an .rpm without one in its
// signature header, a .deb without a detached one. Whether the signature
// is good is for the agents to say, against their keyrings; this refuses
// early what none of them would install. A refused package leaves the
// store at once, unless a recorded upload holds the same bytes.
func (s *Server) checkSigned(hdr *pb.Package) error {
	if !s.RequireSignature {
		return nil
	}
	refuse := func(format string, args ...any) error {
		// Unrecorded, it would go with the store's next prune anyway.
		if s.FSM.Package(hdr.Sha256) == nil {
			_ = s.Store.Remove(hdr.Sha256)
		}
		return status.Errorf(codes.FailedPrecondition, "%s: "+format+"; the cluster requires signed packages (coordinator.yaml packages.require_signature)", append([]any{hdr.FileName}, args...)...)
	}
	if strings.HasSuffix(hdr.FileName, ".deb") {
		if len(hdr.Signature) == 0 {
			return refuse("no detached signature was uploaded with it (dhctl sends %s.sig or %s.asc from beside the file)", hdr.FileName, hdr.FileName)
		}
		if err := pkgsig.CheckSignature(hdr.Signature); err != nil {
			return refuse("signature: %v", err)
		}
		return nil
	}
	if len(hdr.Signature) > 0 {
		return refuse("an .rpm carries its own signature; a detached one is not used")
	}
	f, err := s.Store.Open(hdr.Sha256)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	signed, err := pkgsig.RPMSigned(f)
	f.Close()
	switch {
	case err != nil:
		return refuse("%v", err)
	case !signed:
		return refuse("the .rpm is not signed (rpmsign --addsign)")
	}
	return nil
}

func validFileName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) > 255 {
		return fmt.Errorf("file_name %q: expected a plain file name such as illumon-db-1.20240517.344-1-1.rpm", name)
	}
	if !strings.HasSuffix(name, ".rpm") && !strings.HasSuffix(name, ".deb") {
		return fmt.Errorf("file_name %q: expected a .rpm or .deb package", name)
	}
	return nil
}

// replicate copies a stored package to every other coordinator of servers,
// at once, and returns those that hold it and why the others do not.
func (s *Server) replicate(ctx context.Context, servers []raft.Server, p *pb.Package) (holders, failures []string) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, srv := range servers {
		id := string(srv.ID)
		if id == s.Raft.ID() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.replicateTo(ctx, id, p)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failures = append(failures, fmt.Sprintf("%s: %v", id, err))
				return
			}
			holders = append(holders, id)
		}()
	}
	wg.Wait()
	return holders, failures
}

func (s *Server) replicateTo(ctx context.Context, id string, p *pb.Package) error {
	peer := s.FSM.Peer(id)
	if peer == nil || peer.ApiAddr == "" {
		return errors.New("its API address is not known yet")
	}
	c, err := s.peerClient(peer.ApiAddr)
	if err != nil {
		return err
	}
	f, err := s.Store.Open(p.Sha256)
	if err != nil {
		return err
	}
	defer f.Close()
	stream, err := c.ReplicatePackage(ctx)
	if err != nil {
		return err
	}
	if err := pb.SendPackage(stream.Send, f, p); err != nil {
		return err
	}
	_, err = stream.CloseAndRecv()
	return err
}

// FetchPackage implements pb.CoordinatorServer: agents fetch a package, or
// the rest of one from offset.
func (s *Server) FetchPackage(req *pb.FetchPackageRequest, stream grpc.ServerStreamingServer[pb.PackageChunk]) error {
	rec := s.FSM.Package(req.Sha256)
	if rec == nil {
		return status.Errorf(codes.NotFound, "sha256: no package %q is recorded (see `dhctl upgrade packages`)", req.Sha256)
	}
	if req.Offset < 0 || req.Offset > rec.Size {
		return status.Errorf(codes.InvalidArgument, "offset %d: expected 0 to %d", req.Offset, rec.Size)
	}
	if s.Store == nil || !s.Store.Has(rec.Sha256, rec.Size) {
		return status.Errorf(codes.NotFound, "coordinator %s does not hold package %s (held by %s)", s.Raft.ID(), fsm.ShortSHA(rec.Sha256), strings.Join(rec.Replicas, ", "))
	}
	f, err := s.Store.Open(rec.Sha256)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	defer f.Close()
	if _, err := f.Seek(req.Offset, io.SeekStart); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	return pb.SendPackage(stream.Send, f, nil)
}

// Packages implements pb.CoordinatorServer.
func (s *Server) Packages(context.Context, *pb.PackagesRequest) (*pb.PackagesResponse, error) {
	return &pb.PackagesResponse{Packages: s.FSM.Packages()}, nil
}

// RecordPackage implements pb.CoordinatorServer: only a coordinator that
// took an upload records it (it knows who holds the bytes).
func (s *Server) RecordPackage(ctx context.Context, req *pb.Package) (*pb.Package, error) {
	if id, _ := tlsutil.PeerIdentity(ctx); id.Role != tlsutil.RoleCoordinator {
		return nil, status.Error(codes.PermissionDenied, "only coordinators record packages; upload one with UploadPackage (dhctl upgrade start)")
	}
	return s.recordPackage(ctx, req)
}

func (s *Server) recordPackage(ctx context.Context, req *pb.Package) (*pb.Package, error) {
	if !s.Raft.IsLeader() {
		return forward(s, ctx, func(ctx context.Context, c pb.CoordinatorClient) (*pb.Package, error) {
			return c.RecordPackage(ctx, req)
		})
	}
	res, err := s.commit(ctx, principal(ctx), &pb.Command{Cmd: &pb.Command_PackageAdd{PackageAdd: req}})
	if err != nil {
		return nil, err
	}
	p, _ := res.(*pb.Package)
	return p, nil
}
