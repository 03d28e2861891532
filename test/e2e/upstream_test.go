package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/test/cfgserverxds"
	"github.com/dhvisor/dhvisor/test/devcluster"
)

// With only Deephaven's configuration server xDS as a source of workers
// (no registration call), grpc-go routes a worker's envoy-prefix request
// through dhvisor's xDS to the right stand-in, through the leader and a
// follower; a worker removed upstream leaves the routes within a second;
// with the upstream down the workers stay for the grace, then go.
func TestWorkersFromConfigurationServerXDS(t *testing.T) {
	web := cfgserverxds.Service{Name: "web_api_service", Host: "127.0.0.1", Port: 8123}
	cs, err := cfgserverxds.Start("127.0.0.1:0", web)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			cs.Stop()
		}
	}()
	const grace = 4 * time.Second
	c := startClusterWith(t, devcluster.Options{Coordinators: 3, Nodes: []devcluster.NodeSpec{
		{Name: "infra", Roles: []string{"infra"}},
	}, Standin: []string{"--grpc"}, XDS: fmt.Sprintf("upstream: {address: %q, plaintext: true}\nupstream_grace: %s", cs.Addr(), grace)})
	ctx := context.Background()
	leader := c.Leader(ctx)
	follower := (leader + 1) % 3

	// Prefixes as Deephaven makes them, opaque to dhvisor: kept byte for
	// byte.
	w1, w2 := startWorker(t, "w1"), startWorker(t, "w2")
	p1, p2 := "/worker/Core+ q1:24001 a3f9", "/worker/Core+ q1:24002 77e0"
	if err := cs.Set([]cfgserverxds.Worker{
		{ID: "q1-a3f9", Prefix: p1, Host: "127.0.0.1", Port: w1},
		{ID: "q1-77e0", Prefix: p2, Host: "localhost", Port: w2},
	}); err != nil {
		t.Fatal(err)
	}
	viaFollower := xdsClient(t, c, c.XDSAddrs[follower])
	viaLeader := xdsClient(t, c, c.XDSAddrs[leader])
	waitServedBy(t, viaFollower, tableMethod, p1, "worker w1", 20*time.Second)
	waitServedBy(t, viaFollower, tableMethod, p2, "worker w2", 5*time.Second)
	waitServedBy(t, viaLeader, tableMethod, p1, "worker w1", 5*time.Second)
	waitServedBy(t, viaLeader, tableMethod, p2, "worker w2", 5*time.Second)
	// The rest goes to dhvisor's own routes (the web API of the cluster).
	waitServedBy(t, viaFollower, tableMethod, "", "infra/web_api_service", 5*time.Second)
	out, err := c.Ctl(ctx, "--coordinator", c.APIAddrs[follower], "workers")
	if err != nil || !strings.Contains(out, cs.Addr()+"  configuration_server  q1-a3f9  "+p1+"  127.0.0.1:") || !strings.Contains(out, ": live since ") {
		t.Fatalf("dhctl workers: %v\n%s", err, out)
	}
	out, err = c.Ctl(ctx, "--coordinator", c.APIAddrs[follower], "routes")
	if err != nil || !strings.Contains(out, "header envoy-prefix="+p2) || !strings.Contains(out, fmt.Sprintf("127.0.0.1:%d", w2)) {
		t.Fatalf("dhctl routes: %v\n%s", err, out)
	}

	// Removed upstream: gone from the routes within a second, on both.
	if err := cs.Set([]cfgserverxds.Worker{{ID: "q1-a3f9", Prefix: p1, Host: "127.0.0.1", Port: w1}}); err != nil {
		t.Fatal(err)
	}
	d := waitServedBy(t, viaFollower, tableMethod, p2, "infra/web_api_service", time.Second)
	t.Logf("a worker removed upstream left a follower's routes %s later", d)
	waitServedBy(t, viaLeader, tableMethod, p2, "infra/web_api_service", time.Second)
	waitServedBy(t, viaFollower, tableMethod, p1, "worker w1", time.Second)

	// Upstream down: the last set stays for the grace, then goes.
	cs.Stop()
	stopped = true
	down := time.Now()
	var stale string
	for deadline := time.Now().Add(grace); ; time.Sleep(50 * time.Millisecond) {
		out, err = c.Ctl(ctx, "--coordinator", c.APIAddrs[follower], "workers")
		if err == nil && strings.Contains(out, "stale since") {
			stale = out
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dhctl workers never said stale: %v\n%s", err, out)
		}
	}
	if got, err := servedBy(viaFollower, tableMethod, p1); err != nil || got != "worker w1" {
		t.Fatalf("during the grace: %q, %v\n%s", got, err, stale)
	}
	if !strings.Contains(stale, "the last 1 workers stay until") {
		t.Errorf("dhctl workers while stale:\n%s", stale)
	}
	gone := waitServedBy(t, viaFollower, tableMethod, p1, "infra/web_api_service", grace+10*time.Second)
	if since := time.Since(down); since < grace {
		t.Fatalf("withdrawn %s after the upstream went down, before the grace (%s) ended", since, grace)
	}
	t.Logf("withdrawn %s after the upstream went down (grace %s)", gone, grace)
	waitServedBy(t, viaLeader, tableMethod, p1, "infra/web_api_service", 5*time.Second)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, _ = c.Ctl(ctx, "status")
		if strings.Contains(out, "Workers from the configuration server at "+cs.Addr()+": withdrawn since") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dhctl status does not say withdrawn:\n%s", out)
		}
	}
	if out, err = c.Ctl(ctx, "workers"); err != nil || strings.Contains(out, "configuration_server  q1-") {
		t.Fatalf("dhctl workers after the withdrawal: %v\n%s", err, out)
	}
}
