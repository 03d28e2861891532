package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// agentCluster is the five real dhagents of the crash test or the soak.
type agentCluster struct {
	dir   string // every node's directory is below it (see sweepServices)
	nodes []*agentNode
}

// startAgents writes every node's configuration and starts the agents.
// Their teardown is registered with the bench before the first one starts,
// so that an error or ctrl-C at any point still stops whatever runs.
func (b *bench) startAgents(ctx context.Context, c *agentCluster) error {
	key, err := newGossipKey()
	if err != nil {
		return err
	}
	var seeds []string
	for _, n := range c.nodes {
		seeds = append(seeds, n.bind)
	}
	for _, n := range c.nodes {
		// Every node gets the same seed list, its own address included,
		// as a cluster's configuration management would write it.
		if err := n.writeConfig(b.bin("dh-standin"), seeds, key); err != nil {
			return err
		}
	}
	b.onClose(func() { c.stop() })
	for _, n := range c.nodes {
		if err := n.start(ctx, b.bin("dhagent")); err != nil {
			return err
		}
	}
	return nil
}

// stop stops every agent at once (each stop is bounded), then sweeps up
// any service left behind.
func (c *agentCluster) stop() {
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); n.stop() }()
	}
	wg.Wait()
	if left := sweepServices(c.dir); len(left) > 0 {
		fmt.Printf("  cleanup: killed services the agents left running: %s\n", strings.Join(left, ", "))
	}
}

// localTruth is each node's own word on its service.
type localTruth struct {
	pid      int32
	restarts int32
}

// converged waits until every node's Cluster view shows every node alive
// with its service OK, exactly as that node's own supervisor reports it
// (same pid, same restart count): the cluster is at rest and agrees.
func (c *agentCluster) converged(ctx context.Context, timeout time.Duration) (map[string]localTruth, error) {
	var why string
	var truth map[string]localTruth
	err := pollUntil(ctx, 10*time.Millisecond, timeout, func() (bool, error) {
		truth = map[string]localTruth{}
		for _, n := range c.nodes {
			if !n.running() {
				return false, fmt.Errorf("%s: dhagent exited", n.name)
			}
			st, err := n.local(ctx)
			if err != nil {
				why = err.Error()
				return false, err
			}
			if st.State != "OK" || st.Pid == 0 {
				why = fmt.Sprintf("%s's own status: %s %s", n.name, st.State, st.Message)
				return false, nil
			}
			truth[n.name] = localTruth{st.Pid, st.Restarts}
		}
		for _, obs := range c.nodes {
			r, err := obs.cluster(ctx, "", time.Second)
			if err != nil {
				why = err.Error()
				return false, err
			}
			if w := disagreement(r, truth); w != "" {
				why = obs.name + " sees " + w
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("cluster did not converge within %s: %s: %w", timeout, why, err)
	}
	return truth, nil
}

// disagreement says how a view differs from the nodes' own truth, or "".
func disagreement(r *pb.ClusterResponse, truth map[string]localTruth) string {
	seen := 0
	for _, ni := range r.Nodes {
		t, ok := truth[ni.Name]
		if !ok {
			continue
		}
		seen++
		if ni.State != "alive" {
			return ni.Name + " " + ni.State
		}
		s := findService(ni)
		if s == nil || s.State != "OK" || s.Pid != t.pid || s.Restarts != t.restarts {
			return fmt.Sprintf("%s's service as %v (own status: pid %d, %d restarts)", ni.Name, s, t.pid, t.restarts)
		}
	}
	if seen != len(truth) {
		return fmt.Sprintf("%d of %d nodes", seen, len(truth))
	}
	return ""
}

func findService(ni *pb.NodeInfo) *pb.NodeService {
	for _, s := range ni.Services {
		if s.Name == svcName {
			return s
		}
	}
	return nil
}
