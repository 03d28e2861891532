package ctl

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/dhvisor/dhvisor/proto/agentpb"
	coordpb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// coordinatorStatus prints the cluster as a coordinator replica sees it,
// with the replicas and the operation in progress. handled is false when no
// coordinator can be asked: the local agent's gossip view is shown instead.
func (o *options) coordinatorStatus(ctx context.Context, node string, asJSON bool) (handled bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, closeConn, found, err := o.coordClient(ctx)
	if !found {
		return false, nil
	}
	if err != nil {
		if _, serr := os.Stat(o.socket); serr == nil {
			fmt.Fprintf(o.errOut, "dhctl: %v\ndhctl: showing the local agent's view instead\n", err)
			return false, nil
		}
		return true, err
	}
	defer closeConn()
	resp, err := c.Status(ctx, &coordpb.StatusRequest{Node: node})
	if err != nil {
		return true, rpcError(err)
	}
	return true, o.show(resp, asJSON, func(w io.Writer, color bool) {
		renderCluster(w, resp.Cluster, time.Now(), color)
		fmt.Fprintln(w)
		var reps []string
		for _, p := range resp.Coordinators.GetPeers() {
			r := p.Peer.Id
			if p.Leader {
				r += " (leader)"
			}
			reps = append(reps, r)
		}
		leader := ""
		if resp.Coordinators.GetLeader() == "" {
			leader = " (no leader: an election is under way)"
		}
		fmt.Fprintf(w, "Coordinators: %s%s; answered by %s\n", strings.Join(reps, ", "), leader, resp.Coordinators.GetAnsweredBy())
		if resp.Upstream != nil {
			fmt.Fprintln(w, upstreamSummary(resp.Upstream, time.Now()))
		}
		if op := resp.Active; op != nil {
			done, all := stepCounts(op)
			fmt.Fprintf(w, "Operation %s (%s): %s, %d/%d steps; `dhctl ops show %s`\n", op.Id, op.Title(), op.State, done, all, op.Id)
		}
	}, clusterNotOK(resp.Cluster), "services or nodes not OK")
}

// clusterStatus prints every node's services as gossip shows them.
func (o *options) clusterStatus(ctx context.Context, c pb.AgentClient, node string, asJSON bool) error {
	resp, err := c.Cluster(ctx, &pb.ClusterRequest{Node: node})
	if err != nil {
		return rpcError(err)
	}
	return o.show(resp, asJSON, func(w io.Writer, color bool) { renderCluster(w, resp, time.Now(), color) },
		clusterNotOK(resp), "services or nodes not OK")
}

func clusterNotOK(resp *pb.ClusterResponse) int {
	n := 0
	for _, node := range resp.Nodes {
		if node.State == "left" || node.Kind == "coordinator" {
			continue // an operator took it out: not a fault
		}
		if node.State != "alive" {
			n++
			continue
		}
		for _, s := range node.Services {
			if s.State != "OK" {
				n++
			}
		}
	}
	return n
}

func ago(now time.Time, ms int64) string {
	if ms == 0 {
		return "-"
	}
	d := now.Sub(time.UnixMilli(ms))
	if d < 10*time.Second {
		return fmt.Sprintf("%.1fs", max(d.Seconds(), 0))
	}
	return humanDuration(d)
}

func renderCluster(w io.Writer, resp *pb.ClusterResponse, now time.Time, color bool) {
	alive, svcs, ok := 0, 0, 0
	var nodes []*pb.NodeInfo
	var coords []string
	for _, n := range resp.Nodes {
		// Coordinators gossip to see health but supervise nothing: a line
		// of their own, not a node with an empty service table.
		if n.Kind == "coordinator" {
			coords = append(coords, n.Name+" "+n.State)
			continue
		}
		nodes = append(nodes, n)
		if n.State == "alive" {
			alive++
		}
		for _, s := range n.Services {
			svcs++
			if s.State == "OK" {
				ok++
			}
		}
	}
	fmt.Fprintf(w, "Cluster: %d nodes (%d alive), %d/%d services OK, seen from %s\n", len(nodes), alive, ok, svcs, resp.LocalNode)
	if len(coords) > 0 {
		fmt.Fprintf(w, "Coordinators in gossip: %s\n", strings.Join(coords, ", "))
	}
	for _, n := range nodes {
		fmt.Fprintln(w)
		var facts []string
		if len(n.Roles) > 0 {
			facts = append(facts, "roles "+strings.Join(n.Roles, ","))
		}
		if n.DeephavenVersion != "" {
			facts = append(facts, "Deephaven "+n.DeephavenVersion)
		}
		if n.PackageVersion != "" {
			facts = append(facts, "package "+n.PackageVersion)
		}
		if n.DhvisorVersion != "" {
			facts = append(facts, "dhvisor "+n.DhvisorVersion)
		}
		if n.Name == resp.LocalNode {
			facts = append(facts, "this node")
		} else {
			facts = append(facts, "learned "+ago(now, n.LearnedUnixMs)+" ago")
		}
		state := n.State
		if color {
			state = nodeColor(n.State) + state + "\x1b[0m"
		}
		fmt.Fprintf(w, "%s  %s for %s  (%s)\n", n.Name, state, ago(now, n.StateSinceUnixMs), strings.Join(facts, ", "))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  SERVICE\tSTATE\tPID\tRESTARTS\tFOR\tMESSAGE")
		for _, s := range n.Services {
			st := s.State
			if s.LastKnownState != "" {
				st += " (was " + s.LastKnownState + ")"
			}
			if color {
				st = stateColor(s.State) + st + "\x1b[0m"
			}
			pid := "-"
			if s.Pid != 0 {
				pid = fmt.Sprint(s.Pid)
			}
			msg := s.Message
			if s.Container != "" && msg == "" {
				msg = "container " + s.Container
				if s.StartedUnixMs > 0 {
					msg += ", up " + ago(now, s.StartedUnixMs)
				}
			}
			if len(msg) > 70 {
				msg = msg[:67] + "..."
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\t%s\n", s.Name, st, pid, s.Restarts, ago(now, s.SinceUnixMs), msg)
		}
		tw.Flush()
	}
}

func nodeColor(state string) string {
	switch state {
	case "alive":
		return "\x1b[32m"
	case "suspect", "left":
		return "\x1b[33m"
	}
	return "\x1b[31m"
}

func (o *options) nodesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "nodes",
		Short: "List the cluster's nodes: state, roles, versions, address",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd.Context(), 10*time.Second, func(ctx context.Context, c pb.AgentClient) error {
				resp, err := c.Cluster(ctx, &pb.ClusterRequest{})
				if err != nil {
					return rpcError(err)
				}
				now := time.Now()
				tw := tabwriter.NewWriter(o.out, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "NODE\tSTATE\tFOR\tROLES\tSERVICES OK\tDEEPHAVEN\tPACKAGE\tDHVISOR\tADDRESS\tGOSSIP KEYS")
				down := 0
				for _, n := range resp.Nodes {
					ok := 0
					for _, s := range n.Services {
						if s.State == "OK" {
							ok++
						}
					}
					if n.State != "alive" && n.State != "left" {
						down++
					}
					name, roles := n.Name, strings.Join(n.Roles, ",")
					if n.Kind == "coordinator" {
						roles = "(coordinator)"
					}
					if name == resp.LocalNode {
						name += " *"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\n", name, n.State, ago(now, n.StateSinceUnixMs), roles, ok, len(n.Services), dash(n.DeephavenVersion), dash(n.PackageVersion), dash(n.DhvisorVersion), dash(n.Addr), dash(strings.Join(n.KeyIds, ",")))
				}
				tw.Flush()
				if down > 0 {
					return &exitError{code: ExitNotOK, err: fmt.Errorf("%d nodes not alive", down)}
				}
				return nil
			})
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
