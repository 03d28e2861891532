// Package ops is the coordinator's operations engine: it turns a request
// (restart all, up, down, restart one service, everything on one node) into
// a plan, a walk of the cluster's one dependency graph, and runs it on the
// leader, step by step, each step gated on health and recorded in raft so a
// new leader resumes where the old one stopped.
package ops

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/internal/graph"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// Actions a plan applies.
const (
	ActRestart = "restart"
	ActStart   = "start"
	ActStop    = "stop"
)

// Defaults for the health gate, as in Nomad's update stanza.
type Defaults struct {
	MinHealthyTime   time.Duration
	HealthyDeadline  time.Duration
	ProgressDeadline time.Duration
}

// DefaultDefaults are used where neither the request nor the coordinator's
// configuration says otherwise.
var DefaultDefaults = Defaults{MinHealthyTime: 10 * time.Second, HealthyDeadline: 5 * time.Minute, ProgressDeadline: 10 * time.Minute}

// instance is one service on one node: "node/service".
type instance struct{ node, svc string }

func (i instance) String() string { return i.node + "/" + i.svc }

// Plan validates req against the cluster's nodes and returns the operation
// it would run (without id or state). The walk is grouped by node, the way
// Deephaven's documented procedures read: whenever every remaining service
// of a node depends only on what is done or on that node itself, the node
// goes whole; otherwise the services other nodes wait for go first. For a
// classic cluster that yields configuration_server, then
// authentication_server, then the query and merge nodes, then the rest of the
// infrastructure node (the controller needs the dispatchers): the documented
// order, derived from depends_on rather than written down.
func Plan(req *pb.OpRequest, nodes map[string]*pb.Node, desired map[string]*pb.Desired, def Defaults) (*pb.Operation, error) {
	req = normalize(req, def)
	if err := validateRequest(req, nodes); err != nil {
		return nil, err
	}
	live, skipped := liveNodes(nodes, req)
	g, local := instanceGraph(live)
	stages, err := nodeGroupedWalk(g, local)
	if err != nil {
		return nil, err
	}
	selected, moreSkipped := selection(req, live, desired)
	skipped = append(skipped, moreSkipped...)

	op := &pb.Operation{Request: req, Skipped: skipped}
	for _, st := range stages {
		var steps []*pb.Step
		for _, grp := range st {
			var svcs []string
			for _, in := range grp {
				if selected[in] {
					svcs = append(svcs, in.svc)
				}
			}
			if len(svcs) > 0 {
				steps = append(steps, &pb.Step{Node: grp[0].node, Services: svcs, Action: req.Action})
			}
		}
		for len(steps) > 0 {
			n := len(steps)
			if req.BatchSize > 0 && int(req.BatchSize) < n {
				n = int(req.BatchSize)
			}
			op.Stages = append(op.Stages, &pb.Stage{Steps: steps[:n]})
			steps = steps[n:]
		}
	}
	if req.Action == ActStop {
		// Stopping walks the same graph backwards: dependants first.
		slices.Reverse(op.Stages)
		for _, st := range op.Stages {
			for _, s := range st.Steps {
				slices.Reverse(s.Services)
			}
		}
	}
	if len(op.Stages) == 0 {
		return nil, fmt.Errorf("nothing to %s: no running node has the services asked for", req.Action)
	}
	return op, nil
}

func normalize(req *pb.OpRequest, def Defaults) *pb.OpRequest {
	r := &pb.OpRequest{
		Action: req.Action, Nodes: req.Nodes, Except: req.Except, BatchSize: req.BatchSize,
		MinHealthyTimeMs: req.MinHealthyTimeMs, HealthyDeadlineMs: req.HealthyDeadlineMs,
		ProgressDeadlineMs: req.ProgressDeadlineMs, OnFailure: req.OnFailure, Label: req.Label,
	}
	if req.Upgrade != nil {
		r.Upgrade = proto.Clone(req.Upgrade).(*pb.UpgradeSpec)
	}
	for _, s := range req.Services {
		if s != "all" {
			r.Services = append(r.Services, s)
		}
	}
	setMs := func(v *int64, d time.Duration) {
		if *v == 0 {
			*v = d.Milliseconds()
		}
	}
	setMs(&r.MinHealthyTimeMs, def.MinHealthyTime)
	setMs(&r.HealthyDeadlineMs, def.HealthyDeadline)
	setMs(&r.ProgressDeadlineMs, def.ProgressDeadline)
	if r.OnFailure == "" {
		r.OnFailure = "pause"
	}
	return r
}

// validateRequest names the field and what was expected for every mistake.
func validateRequest(req *pb.OpRequest, nodes map[string]*pb.Node) error {
	var errs []string
	switch req.Action {
	case ActRestart, ActStart, ActStop:
	default:
		errs = append(errs, fmt.Sprintf("action: %q is not one of restart, start, stop", req.Action))
	}
	if req.OnFailure != "pause" && req.OnFailure != "abort" {
		errs = append(errs, fmt.Sprintf("on_failure: %q is not pause or abort", req.OnFailure))
	}
	if req.BatchSize < 0 {
		errs = append(errs, "batch_size: must not be negative")
	}
	if req.MinHealthyTimeMs < 0 {
		errs = append(errs, "min_healthy_time: must not be negative")
	}
	if req.HealthyDeadlineMs <= 0 || req.ProgressDeadlineMs <= 0 {
		errs = append(errs, "healthy_deadline and progress_deadline: must be positive")
	}
	if req.HealthyDeadlineMs > 0 && req.MinHealthyTimeMs >= req.HealthyDeadlineMs {
		errs = append(errs, fmt.Sprintf("min_healthy_time (%v) must be shorter than healthy_deadline (%v)", ms(req.MinHealthyTimeMs), ms(req.HealthyDeadlineMs)))
	}
	known := map[string]bool{}
	for _, n := range nodes {
		for _, s := range n.Services {
			known[s.Name] = true
		}
	}
	for _, n := range req.Nodes {
		if _, ok := nodes[n]; !ok {
			errs = append(errs, fmt.Sprintf("nodes: unknown node %q (known: %s)", n, strings.Join(slices.Sorted(maps.Keys(nodes)), ", ")))
		}
	}
	for field, list := range map[string][]string{"services": req.Services, "except": req.Except} {
		for _, s := range list {
			if !known[s] {
				errs = append(errs, fmt.Sprintf("%s: no node runs a service %q (known: %s)", field, s, strings.Join(slices.Sorted(maps.Keys(known)), ", ")))
			}
		}
	}
	if len(errs) > 0 {
		sort.Strings(errs)
		return fmt.Errorf("invalid request: %s", strings.Join(errs, "; "))
	}
	return nil
}

func ms(v int64) time.Duration { return time.Duration(v) * time.Millisecond }

// liveNodes are the nodes a plan can act on; the others are listed as skipped
// when the request would have touched them.
func liveNodes(nodes map[string]*pb.Node, req *pb.OpRequest) (map[string]*pb.Node, []string) {
	live := map[string]*pb.Node{}
	var skipped []string
	for _, name := range slices.Sorted(maps.Keys(nodes)) {
		n := nodes[name]
		if n.State == "dead" || n.State == "left" {
			if len(req.Nodes) == 0 || slices.Contains(req.Nodes, name) {
				skipped = append(skipped, fmt.Sprintf("%s: node is %s", name, n.State))
			}
			continue
		}
		live[name] = n
	}
	return live, skipped
}

// instanceGraph is the cluster-wide dependency graph over service instances.
// A dependency the node runs itself is that local instance; one it does not
// is every instance of it in the cluster (authentication_server on a query
// node's list means the one on the infrastructure node).
func instanceGraph(nodes map[string]*pb.Node) (*graph.Graph, map[string]instance) {
	where := map[string][]string{} // service -> nodes running it
	for _, name := range slices.Sorted(maps.Keys(nodes)) {
		for _, s := range nodes[name].Services {
			where[s.Name] = append(where[s.Name], name)
		}
	}
	g := graph.New()
	inst := map[string]instance{}
	for _, name := range slices.Sorted(maps.Keys(nodes)) {
		n := nodes[name]
		has := map[string]bool{}
		for _, s := range n.Services {
			has[s.Name] = true
		}
		for _, s := range n.Services {
			in := instance{name, s.Name}
			inst[in.String()] = in
			var deps []string
			for _, d := range s.DependsOn {
				if has[d] {
					deps = append(deps, instance{name, d}.String())
					continue
				}
				for _, other := range where[d] {
					deps = append(deps, instance{other, d}.String())
				}
			}
			g.Add(in.String(), deps...)
		}
	}
	return g, inst
}

// nodeGroupedWalk returns stages of per-node groups of instances; each
// group's instances are in the node's local dependency order.
func nodeGroupedWalk(g *graph.Graph, inst map[string]instance) ([][][]instance, error) {
	levels, err := g.Levels()
	if err != nil {
		return nil, err
	}
	rank := map[string]int{} // position in a topological order, for sorting
	for _, lv := range levels {
		for _, id := range lv {
			rank[id] = len(rank)
		}
	}
	remaining := map[string]bool{}
	for id := range inst {
		remaining[id] = true
	}
	done := map[string]bool{}
	depsMet := func(id string, sameNode string) bool {
		for _, d := range g.DependsOn(id) {
			if !done[d] && (sameNode == "" || inst[d].node != sameNode) {
				return false
			}
		}
		return true
	}
	var stages [][][]instance
	for len(remaining) > 0 {
		byNode := map[string][]string{}
		for id := range remaining {
			byNode[inst[id].node] = append(byNode[inst[id].node], id)
		}
		var stage []string
		for _, node := range slices.Sorted(maps.Keys(byNode)) {
			whole := true
			for _, id := range byNode[node] {
				whole = whole && depsMet(id, node)
			}
			if whole {
				stage = append(stage, byNode[node]...)
			}
		}
		if len(stage) == 0 {
			var ready, wanted []string
			for id := range remaining {
				if depsMet(id, "") {
					ready = append(ready, id)
					if waitedOnElsewhere(g, inst, remaining, id) {
						wanted = append(wanted, id)
					}
				}
			}
			stage = wanted
			if len(stage) == 0 {
				stage = ready
			}
		}
		for _, id := range stage {
			delete(remaining, id)
			done[id] = true
		}
		stages = append(stages, groupByNode(stage, inst, rank))
	}
	return stages, nil
}

// waitedOnElsewhere reports whether a remaining instance on another node
// depends on id directly.
func waitedOnElsewhere(g *graph.Graph, inst map[string]instance, remaining map[string]bool, id string) bool {
	for other := range remaining {
		if inst[other].node == inst[id].node {
			continue
		}
		if slices.Contains(g.DependsOn(other), id) {
			return true
		}
	}
	return false
}

func groupByNode(ids []string, inst map[string]instance, rank map[string]int) [][]instance {
	by := map[string][]instance{}
	for _, id := range ids {
		by[inst[id].node] = append(by[inst[id].node], inst[id])
	}
	var out [][]instance
	for _, node := range slices.Sorted(maps.Keys(by)) {
		grp := by[node]
		sort.Slice(grp, func(i, j int) bool { return rank[grp[i].String()] < rank[grp[j].String()] })
		out = append(out, grp)
	}
	return out
}

// selection is the set of instances the request acts on.
func selection(req *pb.OpRequest, nodes map[string]*pb.Node, desired map[string]*pb.Desired) (map[instance]bool, []string) {
	sel := map[instance]bool{}
	var skipped []string
	for _, name := range slices.Sorted(maps.Keys(nodes)) {
		if len(req.Nodes) > 0 && !slices.Contains(req.Nodes, name) {
			continue
		}
		for _, s := range nodes[name].Services {
			if len(req.Services) > 0 && !slices.Contains(req.Services, s.Name) {
				continue
			}
			if slices.Contains(req.Except, s.Name) {
				continue
			}
			in := instance{name, s.Name}
			// A service an operator stopped stays stopped unless asked for by
			// name: `restart all` must not bring back what someone took down.
			if d := desired[in.String()]; d != nil && d.Stopped && req.Action != ActStop && len(req.Services) == 0 {
				skipped = append(skipped, fmt.Sprintf("%s: stopped by %s; name it to start it", in, d.By))
				continue
			}
			sel[in] = true
		}
	}
	return sel, skipped
}
