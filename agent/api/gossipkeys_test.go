package api

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/internal/gossip"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// GossipKeys names keys by fingerprint in every answer and error, and
// takes an installed key by its fingerprint for use and remove.
func TestGossipKeysNeverAnswersAKey(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	id1, id2 := keyID(t, k1), keyID(t, k2)
	file := filepath.Join(t.TempDir(), "gossip.key")
	if err := os.WriteFile(file, []byte(k1+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g, err := gossip.New(gossip.Config{NodeName: "n1", BindAddr: "127.0.0.1", BindPort: 0, KeyFile: file})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer g.Shutdown()
	s := NewServer(nil, nil, g, "")
	secrets := func(t *testing.T, what string, b []byte) {
		t.Helper()
		for _, k := range []string{k1, k2} {
			raw, _ := base64.StdEncoding.DecodeString(k)
			if strings.Contains(string(b), k) || strings.Contains(string(b), string(raw)) || strings.Contains(string(b), k[:16]) {
				t.Errorf("%s holds a key: %q", what, b)
			}
		}
	}
	steps := []struct {
		name string
		req  *pb.GossipKeysRequest
		ids  []string // the answer; nil with code
		code codes.Code
	}{
		{"list", &pb.GossipKeysRequest{}, []string{id1}, codes.OK},
		{"install", &pb.GossipKeysRequest{Op: pb.GossipKeysRequest_OP_INSTALL, Key: k2}, []string{id1, id2}, codes.OK},
		{"install by id", &pb.GossipKeysRequest{Op: pb.GossipKeysRequest_OP_INSTALL, KeyId: id2}, nil, codes.InvalidArgument},
		{"use by id, upper case", &pb.GossipKeysRequest{Op: pb.GossipKeysRequest_OP_USE, KeyId: strings.ToUpper(id2)}, []string{id2, id1}, codes.OK},
		{"remove an id not installed", &pb.GossipKeysRequest{Op: pb.GossipKeysRequest_OP_REMOVE, KeyId: "00000000"}, nil, codes.NotFound},
		{"a key as key_id", &pb.GossipKeysRequest{Op: pb.GossipKeysRequest_OP_REMOVE, KeyId: k1}, nil, codes.InvalidArgument},
		{"both", &pb.GossipKeysRequest{Op: pb.GossipKeysRequest_OP_REMOVE, Key: k1, KeyId: id1}, nil, codes.InvalidArgument},
		{"list with a key", &pb.GossipKeysRequest{Key: k1}, nil, codes.InvalidArgument},
		{"remove the primary", &pb.GossipKeysRequest{Op: pb.GossipKeysRequest_OP_REMOVE, KeyId: id2}, nil, codes.InvalidArgument},
		{"unknown op", &pb.GossipKeysRequest{Op: 9, Key: k1}, nil, codes.InvalidArgument},
		{"remove by id", &pb.GossipKeysRequest{Op: pb.GossipKeysRequest_OP_REMOVE, KeyId: id1}, []string{id2}, codes.OK},
	}
	for _, st := range steps {
		resp, err := s.GossipKeys(context.Background(), st.req)
		if status.Code(err) != st.code {
			t.Fatalf("%s: %v, want %v", st.name, err, st.code)
		}
		if err != nil {
			secrets(t, st.name+": the error", []byte(err.Error()))
			continue
		}
		b, _ := proto.Marshal(resp)
		secrets(t, st.name+": the answer", b)
		if strings.Join(resp.KeyIds, " ") != strings.Join(st.ids, " ") {
			t.Errorf("%s: key ids %v, want %v", st.name, resp.KeyIds, st.ids)
		}
	}
}

func newKey(t *testing.T) string {
	k, err := gossip.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func keyID(t *testing.T, k string) string {
	id, err := gossip.KeyID(k)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
