package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/test/devcluster"
	"github.com/dhvisor/dhvisor/test/envoyfixture"
	"github.com/dhvisor/dhvisor/test/need"
)

// TestEnvoyNode runs an Envoy node in a cluster with a coordinator: the
// agent renders the bootstrap from the coordinator's xDS address, runs the
// (stand-in) Envoy container on it, restarts it when it is killed, and
// dhctl shows and drives it.
func TestEnvoyNode(t *testing.T) {
	need.Docker(t)
	const image = "dhv-envoy-e2e:v1"
	ctx := context.Background()
	if err := envoyfixture.BuildImage(ctx, envoyfixture.DefaultHost, image); err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 2)
	listen, admin := ports[0], ports[1]
	name := fmt.Sprintf("dhv-e2e-envoy-%d", os.Getpid())
	t.Cleanup(func() { _, _ = envoyfixture.Docker(context.Background(), envoyfixture.DefaultHost, "rm", "-f", name) })
	args := "['" + strings.Join(envoyfixture.Args(listen, admin), "', '") + "']"
	extra := fmt.Sprintf(`envoy:
  container: %s
  image: %s
  args: %s
  listen_port: %d
  admin_port: %d
  render: {listener_plaintext: true}
  ready: {interval: 200ms, timeout: 200ms}
`, name, image, args, listen, admin)
	c := startCluster(t, 1, []devcluster.NodeSpec{{Name: "edge", Roles: []string{"envoy"}, Extra: extra}}, 0)
	edge := c.Agents[0]
	dhctl := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return c.Ctl(ctx, append([]string{"--socket", filepath.Join(edge.Dir, "agent.sock")}, args...)...)
	}

	// The bootstrap names the coordinator's xDS address, and the container
	// runs on exactly that file.
	boot := filepath.Join(edge.Dir, "state", "envoy", "envoy.yaml")
	b, err := os.ReadFile(boot)
	if err != nil {
		t.Fatal(err)
	}
	_, xdsPort, _ := strings.Cut(c.XDSAddrs[0], ":")
	if !strings.Contains(string(b), "port_value: "+xdsPort) || !strings.Contains(string(b), "initial_fetch_timeout: 0s") {
		t.Fatalf("bootstrap does not name the coordinator's xDS address %s:\n%s", c.XDSAddrs[0], b)
	}
	sum := sha256.Sum256(b)
	if got, err := envoyfixture.FileDigest(admin, "/etc/envoy/envoy.yaml"); err != nil || got != hex.EncodeToString(sum[:]) {
		t.Fatalf("the container's bootstrap: %s %v, want the rendered file", got, err)
	}
	cert, _ := os.ReadFile(filepath.Join(c.TLS, "agent-edge.pem"))
	certSum := sha256.Sum256(cert)
	if got, err := envoyfixture.FileDigest(admin, "/etc/envoy/xds/cert.pem"); err != nil || got != hex.EncodeToString(certSum[:]) {
		t.Fatalf("the container's xDS certificate: %s %v, want the agent's", got, err)
	}

	out, err := dhctl("envoy", "status")
	if err != nil || !strings.Contains(out, "OK") || !strings.Contains(out, name) || !strings.Contains(out, image) || !strings.Contains(out, "restarts   0") {
		t.Fatalf("dhctl envoy status: %v\n%s", err, out)
	}

	if _, err := envoyfixture.Docker(ctx, envoyfixture.DefaultHost, "kill", name); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err = dhctl("envoy", "status")
		if err == nil && strings.Contains(out, "restarts   1") && envoyfixture.Ready(admin) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not restarted and counted: %v\n%s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(out, "killed by SIGKILL") {
		t.Errorf("last exit not shown:\n%s", out)
	}
	// The whole cluster sees it, through the coordinator.
	deadline = time.Now().Add(20 * time.Second)
	for {
		out, err = dhctl("status")
		if err == nil && strings.Contains(out, "envoy") && strings.Contains(out, "container ") && strings.Contains(out, image) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dhctl status does not show the Envoy container: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	out, err = dhctl("envoy", "logs", "--tail", "50")
	if err != nil || !strings.Contains(out, "standin envoy") {
		t.Fatalf("dhctl envoy logs: %v\n%s", err, out)
	}
	out, err = dhctl("envoy", "restart", "--block")
	if err != nil || !strings.Contains(out, "running and healthy") {
		t.Fatalf("dhctl envoy restart: %v\n%s", err, out)
	}
	if out, err = dhctl("envoy", "status"); err != nil || !strings.Contains(out, "restarts   1") {
		t.Fatalf("an operator's restart is not counted as a failure: %v\n%s", err, out)
	}
}
