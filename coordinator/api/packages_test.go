package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/coordinator/pkgstore"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// serve runs s's API on loopback (without TLS: no caller identity) and
// returns a client.
func serve(t *testing.T, s *Server) pb.CoordinatorClient {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterCoordinatorServer(gs, s)
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewCoordinatorClient(conn)
}

func upload(c pb.CoordinatorClient, hdr *pb.Package, data []byte) (*pb.Package, error) {
	stream, err := c.UploadPackage(context.Background())
	if err != nil {
		return nil, err
	}
	if err := pb.SendPackage(stream.Send, bytes.NewReader(data), hdr); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return stream.CloseAndRecv()
}

func fetch(c pb.CoordinatorClient, sha string, offset int64) ([]byte, error) {
	stream, err := c.FetchPackage(context.Background(), &pb.FetchPackageRequest{Sha256: sha, Offset: offset})
	if err != nil {
		return nil, err
	}
	return io.ReadAll(pb.NewPackageReader(nil, stream.Recv))
}

// An upload is stored, verified and recorded (one replica: a majority on
// its own); agents fetch it whole or from an offset; bad uploads and
// fetches are refused with what was wrong.
func TestUploadAndFetch(t *testing.T) {
	state := fsm.New()
	store, err := pkgstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := serve(t, &Server{FSM: state, Raft: singleReplica(t, state), Store: store})
	data := bytes.Repeat([]byte("illumon-db "), 100000) // over 4 chunks
	h := sha256.Sum256(data)
	sha := hex.EncodeToString(h[:])
	hdr := &pb.Package{Sha256: sha, Size: int64(len(data)), FileName: "illumon-db_2.0.deb"}

	for _, tt := range []struct {
		name string
		hdr  *pb.Package
		data []byte
		code codes.Code
		want string
	}{
		{"not a package", &pb.Package{Sha256: sha, Size: hdr.Size, FileName: "notes.txt"}, data, codes.InvalidArgument, "expected a .rpm or .deb"},
		{"path", &pb.Package{Sha256: sha, Size: hdr.Size, FileName: "../x.deb"}, data, codes.InvalidArgument, "plain file name"},
		{"bad sha", &pb.Package{Sha256: "abc", Size: hdr.Size, FileName: "x.deb"}, data, codes.InvalidArgument, "64 lowercase hex"},
		{"truncated", hdr, data[:1000], codes.DataLoss, "1000 bytes received"},
		{"other bytes", hdr, bytes.Repeat([]byte("x"), len(data)), codes.DataLoss, "sha256 is"},
	} {
		_, err := upload(c, tt.hdr, tt.data)
		if status.Code(err) != tt.code || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %v with %q", tt.name, err, tt.code, tt.want)
		}
	}
	if state.Package(sha) != nil {
		t.Fatal("a refused upload was recorded")
	}
	got, err := upload(c, hdr, data)
	if err != nil {
		t.Fatal(err)
	}
	if got.Sha256 != sha || strings.Join(got.Replicas, ",") != "c1" || got.UploadedBy != "unknown" {
		t.Errorf("recorded %v", got)
	}
	list, err := c.Packages(context.Background(), &pb.PackagesRequest{})
	if err != nil || len(list.Packages) != 1 {
		t.Fatalf("packages: %v %v", list, err)
	}
	for _, off := range []int64{0, 1, 300000, int64(len(data))} {
		b, err := fetch(c, sha, off)
		if err != nil || !bytes.Equal(b, data[off:]) {
			t.Errorf("fetch from %d: %d bytes, %v", off, len(b), err)
		}
	}
	if _, err := fetch(c, sha, int64(len(data))+1); status.Code(err) != codes.InvalidArgument {
		t.Errorf("fetch past the end: %v", err)
	}
	if _, err := fetch(c, strings.Repeat("0", 64), 0); status.Code(err) != codes.NotFound {
		t.Errorf("fetch of an unknown package: %v", err)
	}
	// Only coordinators record packages (with the holders they know of).
	if _, err := c.RecordPackage(context.Background(), &pb.Package{Sha256: strings.Repeat("1", 64), Size: 1, FileName: "x.deb", Replicas: []string{"c1"}}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("an operator recorded a package: %v", err)
	}
	stream, err := c.ReplicatePackage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&pb.PackageChunk{Header: hdr})
	if _, err := stream.CloseAndRecv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("an operator replicated a package: %v", err)
	}
}

// rpmHead is the start of an .rpm whose signature header lists tags.
func rpmHead(tags ...uint32) []byte {
	b := make([]byte, 96)
	copy(b, []byte{0xed, 0xab, 0xee, 0xdb})
	b = append(b, 0x8e, 0xad, 0xe8, 0x01, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(tags)))
	b = binary.BigEndian.AppendUint32(b, 0)
	for _, tag := range tags {
		b = binary.BigEndian.AppendUint32(b, tag)
		b = append(b, make([]byte, 12)...)
	}
	return append(b, "payload"...)
}

// With packages.require_signature, an upload carrying no signature is
// refused and its bytes leave the store; signed ones are recorded, a
// .deb's signature with it.
func TestUploadRequiresSignature(t *testing.T) {
	state := fsm.New()
	dir := t.TempDir()
	store, err := pkgstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	c := serve(t, &Server{FSM: state, Raft: singleReplica(t, state), Store: store, RequireSignature: true})
	key, err := openpgp.NewEntity("signer", "", "signer@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	deb := []byte("!<arch>\ndebian-binary")
	var sig bytes.Buffer
	if err := openpgp.ArmoredDetachSign(&sig, key, bytes.NewReader(deb), nil); err != nil {
		t.Fatal(err)
	}
	sum := func(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }
	unsignedRPM, signedRPM := rpmHead(269, 1004), rpmHead(269, 268, 1004)
	for _, tt := range []struct {
		name string
		hdr  *pb.Package
		data []byte
		want string // "" recorded
	}{
		{"unsigned .deb", &pb.Package{FileName: "illumon-db_2.0.deb"}, deb, "no detached signature was uploaded with it"},
		{"junk signature", &pb.Package{FileName: "illumon-db_2.0.deb", Signature: []byte("trust me")}, deb, "signature: not an OpenPGP signature"},
		{"unsigned .rpm", &pb.Package{FileName: "illumon-db-2.0-1.noarch.rpm"}, unsignedRPM, "the .rpm is not signed (rpmsign --addsign)"},
		{"not an .rpm", &pb.Package{FileName: "illumon-db-2.0-1.noarch.rpm"}, deb, "too short to be an .rpm"},
		{"signed .deb", &pb.Package{FileName: "illumon-db_2.0.deb", Signature: sig.Bytes()}, deb, ""},
		{"signed .rpm", &pb.Package{FileName: "illumon-db-2.0-1.noarch.rpm"}, signedRPM, ""},
	} {
		hdr := tt.hdr
		hdr.Sha256, hdr.Size = sum(tt.data), int64(len(tt.data))
		got, err := upload(c, hdr, tt.data)
		if tt.want != "" {
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "packages.require_signature") {
				t.Errorf("%s: %v, want a refusal with %q", tt.name, err, tt.want)
			}
			if state.Package(hdr.Sha256) != nil || store.Has(hdr.Sha256, hdr.Size) {
				t.Errorf("%s: a refused upload is kept", tt.name)
			}
			continue
		}
		if err != nil || !bytes.Equal(got.Signature, hdr.Signature) || !bytes.Equal(state.Package(hdr.Sha256).GetSignature(), hdr.Signature) {
			t.Errorf("%s: %v %v", tt.name, got, err)
		}
	}
}
