package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

	newKey, code := nodes[0].dhctl("gossip", "keys", "generate")
	newKey = strings.TrimSpace(newKey)
	if code != 0 || len(newKey) != 44 {
		t.Fatalf("generate: %q exit %d", newKey, code)
	}
	keyFile := func(n *node) string {
		b, _ := os.ReadFile(filepath.Join(n.dir, "gossip.key"))
		return string(b)
	}
	steps := []struct {
		args []string
		want string // key file content on every node afterwards
	}{
		{[]string{"install", newKey}, oldKey + "\n" + newKey + "\n"},
		{[]string{"use", newKey}, newKey + "\n" + oldKey + "\n"},
		{[]string{"remove", oldKey}, newKey + "\n"},
	}
	for _, st := range steps {
		out, code := nodes[0].dhctl(append([]string{"gossip", "keys"}, st.args...)...)
		if code != 0 {
			t.Fatalf("gossip keys %s: exit %d\n%s", st.args[0], code, out)
		}
		for _, n := range nodes {
			n.eventually(10*time.Second, "key file after "+st.args[0]+" on "+n.nodeName, func() bool { return keyFile(n) == st.want })
		}
		if !bothAlive() {
			t.Fatalf("cluster split after %s", st.args[0])
		}
	}
	// Every node reports holding only the new key, as `dhctl nodes` shows.
	raw2, _ := base64.StdEncoding.DecodeString(newKey)
	sum := sha256.Sum256(raw2)
	newID := hex.EncodeToString(sum[:4])
	nodes[0].eventually(10*time.Second, "dhctl nodes shows only the new key on both nodes", func() bool {
		out, _ := nodes[0].dhctl("nodes")
		return strings.Count(out, newID) == 2 && !strings.Contains(out, ",")
	})
	out, code := nodes[1].dhctl("gossip", "keys", "list")
	if code != 0 || !strings.Contains(out, newKey) || strings.Contains(out, oldKey) || !strings.Contains(out, "(primary)") {
		t.Errorf("list on k2: exit %d\n%s", code, out)
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
