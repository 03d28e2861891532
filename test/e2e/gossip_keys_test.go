package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// TestGossipKeyRotationWithDhctl: two agents on loopback share an encrypted
// gossip pool; a key is rotated from one node with dhctl and both nodes'
// key files follow, with the cluster staying whole throughout.
func TestGossipKeyRotationWithDhctl(t *testing.T) {
	t.Parallel()
	ports := freePorts(t, 4)
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	oldKey := base64.StdEncoding.EncodeToString(raw)
	var nodes []*node
	for i := range 2 {
		n := newNodeNoStart(t, "")
		n.nodeName = fmt.Sprintf("k%d", i+1)
		keyFile := filepath.Join(n.dir, "gossip.key")
		if err := os.WriteFile(keyFile, []byte(oldKey+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		n.writeConfig(fmt.Sprintf(`gossip:
  bind: 127.0.0.1:%d
  seeds: [127.0.0.1:%d, 127.0.0.1:%d]
  key_file: gossip.key
services:
  svc: {ports: {http: %d}}
`, ports[i], ports[0], ports[1], ports[2+i]))
		n.startAgent()
		nodes = append(nodes, n)
	}
	bothAlive := func() bool {
		for _, n := range nodes {
			v := n.cluster()
			if len(v) != 2 || v["k1"].State != "alive" || v["k2"].State != "alive" {
				return false
			}
		}
		return true
	}
	nodes[0].eventually(10*time.Second, "both nodes see each other", bothAlive)

	newFile := filepath.Join(nodes[0].dir, "new.key")
	if out, code := nodes[0].dhctl("gossip", "keys", "generate", "--key-file", newFile); code != 0 {
		t.Fatalf("generate: exit %d\n%s", code, out)
	}
	b, _ := os.ReadFile(newFile)
	newKey := strings.TrimSpace(string(b))
	oldFile := filepath.Join(nodes[0].dir, "old.key")
	if err := os.WriteFile(oldFile, []byte(oldKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	id := func(key string) string {
		raw, _ := base64.StdEncoding.DecodeString(key)
		sum := sha256.Sum256(raw)
		return hex.EncodeToString(sum[:4])
	}
	oldID, newID := id(oldKey), id(newKey)
	keyFile := func(n *node) string {
		b, _ := os.ReadFile(filepath.Join(n.dir, "gossip.key"))
		return string(b)
	}
	// A key goes in on stdin or in a file; use and remove name it by id
	// too. No output ever shows a key.
	withStdin := func(cmd *exec.Cmd, in string) *exec.Cmd { cmd.Stdin = strings.NewReader(in); return cmd }
	steps := []struct {
		what string
		cmd  *exec.Cmd
		want string // key file content on every node afterwards
	}{
		{"install from stdin", withStdin(nodes[0].dhctlCmd("gossip", "keys", "install"), newKey+"\n"), oldKey + "\n" + newKey + "\n"},
		{"use by id", nodes[0].dhctlCmd("gossip", "keys", "use", newID), newKey + "\n" + oldKey + "\n"},
		{"remove from a key file", nodes[0].dhctlCmd("gossip", "keys", "remove", "--key-file", oldFile), newKey + "\n"},
	}
	for _, st := range steps {
		out, code := nodes[0].run(st.cmd)
		if code != 0 {
			t.Fatalf("gossip keys %s: exit %d\n%s", st.what, code, out)
		}
		if strings.Contains(out, newKey) || strings.Contains(out, oldKey) {
			t.Errorf("gossip keys %s printed a key:\n%s", st.what, out)
		}
		for _, n := range nodes {
			n.eventually(10*time.Second, "key file after "+st.what+" on "+n.nodeName, func() bool { return keyFile(n) == st.want })
		}
		if !bothAlive() {
			t.Fatalf("cluster split after %s", st.what)
		}
	}
	// Every node reports holding only the new key, as `dhctl nodes` shows.
	nodes[0].eventually(10*time.Second, "dhctl nodes shows only the new key on both nodes", func() bool {
		out, _ := nodes[0].dhctl("nodes")
		return strings.Count(out, newID) == 2 && !strings.Contains(out, ",")
	})
	out, code := nodes[1].dhctl("gossip", "keys", "list")
	if code != 0 || out != newID+"  (primary)\n" || strings.Contains(out, oldID) {
		t.Errorf("list on k2: exit %d\n%s", code, out)
	}
	// Nothing the agent answers holds a key, old or new.
	c, done := nodes[1].client()
	defer done()
	var answers [][]byte
	for _, call := range []func() (proto.Message, error){
		func() (proto.Message, error) { return c.GossipKeys(nodes[1].ctx(), &pb.GossipKeysRequest{}) },
		func() (proto.Message, error) { return c.Cluster(nodes[1].ctx(), &pb.ClusterRequest{}) },
		func() (proto.Message, error) { return c.Status(nodes[1].ctx(), &pb.StatusRequest{}) },
	} {
		m, err := call()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := proto.Marshal(m)
		answers = append(answers, b)
	}
	for i, b := range answers {
		for _, k := range []string{oldKey, newKey} {
			raw, _ := base64.StdEncoding.DecodeString(k)
			if bytes.Contains(b, []byte(k)) || bytes.Contains(b, raw) {
				t.Errorf("answer %d holds a gossip key", i)
			}
		}
	}
	// The cluster still carries news after the rotation.
	if out, code := nodes[0].dhctl("stop", "svc", "--block"); code != 0 {
		t.Fatalf("stop: exit %d\n%s", code, out)
	}
	nodes[1].eventually(10*time.Second, "k1's stop seen on k2", func() bool {
		v := nodes[1].cluster()
		return v["k1"] != nil && len(v["k1"].Services) == 1 && v["k1"].Services[0].State == "Stopped"
	})
}
