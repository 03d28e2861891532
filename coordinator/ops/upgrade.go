package ops

import (
	"cmp"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// Upgrade step actions, beside stop and start.
const (
	ActUpgrade = fsm.ActUpgrade
	ActInstall = "install"
	ActRevert  = "revert" // install the previous package again
)

// Upgrade strategies.
const (
	StrategyFull    = "full"
	StrategyRolling = "rolling"
)

// UpgradeInput is the state an upgrade plan reads.
type UpgradeInput struct {
	Nodes    map[string]*pb.Node
	Desired  map[string]*pb.Desired
	Packages []*pb.Package   // recorded packages
	History  []*pb.Operation // earlier operations, newest first
}

// PlanUpgrade validates an upgrade request and returns its plan.
//
// full (Deephaven's documented procedure): every service stopped, dependants
// first; the package installed on every node at once (max_parallel at a
// time); then every service started in dependency order, each step gated on
// health: configuration_server, authentication_server, the query and merge
// nodes, the rest of the infrastructure node, as the graph orders them.
//
// rolling: node by node (max_parallel at a time), in the order the
// dependency graph first needs each node: stop the node's services, install,
// start them, hold them healthy, then the next.
func PlanUpgrade(req *pb.OpRequest, in UpgradeInput, def Defaults) (*pb.Operation, error) {
	req = normalize(req, def)
	u := req.Upgrade
	if u == nil {
		u = &pb.UpgradeSpec{}
		req.Upgrade = u
	}
	if u.Strategy == "" {
		u.Strategy = StrategyFull
	}
	if u.AutoRevert && u.PreviousSha256 == "" && u.PreviousPath == "" {
		u.PreviousSha256 = lastUpgraded(in.History, in.Packages)
	}
	if err := validateUpgrade(req, in); err != nil {
		return nil, err
	}
	var sel []string
	var skipped []string
	for _, name := range slices.Sorted(maps.Keys(in.Nodes)) {
		n := in.Nodes[name]
		if len(req.Nodes) > 0 && !slices.Contains(req.Nodes, name) {
			continue
		}
		if n.State == "left" {
			skipped = append(skipped, name+": node left the cluster")
			continue
		}
		sel = append(sel, name)
	}
	if len(sel) == 0 {
		return nil, fmt.Errorf("nothing to upgrade: no node is in the cluster")
	}
	sub := func(action string) (*pb.Operation, error) {
		r := proto.Clone(req).(*pb.OpRequest)
		r.Action, r.Upgrade, r.Nodes, r.BatchSize = action, nil, sel, 0
		return Plan(r, in.Nodes, in.Desired, def)
	}
	stop, err := sub(ActStop)
	if err != nil {
		return nil, err
	}
	start, err := sub(ActStart)
	if err != nil {
		return nil, err
	}
	op := &pb.Operation{Request: req, Skipped: append(skipped, start.Skipped...)}
	install := func(nodes []string) *pb.Stage {
		st := &pb.Stage{}
		for _, n := range nodes {
			st.Steps = append(st.Steps, &pb.Step{Node: n, Action: ActInstall, Package: cmp.Or(u.PackageSha256, u.PathSha256), PackagePath: u.Path})
		}
		return st
	}
	switch u.Strategy {
	case StrategyFull:
		op.Stages = append(op.Stages, stop.Stages...)
		for _, batch := range batches(sel, int(u.MaxParallel)) {
			op.Stages = append(op.Stages, install(batch))
		}
		op.Stages = append(op.Stages, start.Stages...)
	case StrategyRolling:
		stops, starts := perNode(stop), perNode(start)
		for _, batch := range batches(nodeOrder(start, sel), max(1, int(u.MaxParallel))) {
			var stopSt, startSt pb.Stage
			for _, n := range batch {
				if len(stops[n]) > 0 {
					stopSt.Steps = append(stopSt.Steps, &pb.Step{Node: n, Action: ActStop, Services: stops[n]})
				}
				if len(starts[n]) > 0 {
					startSt.Steps = append(startSt.Steps, &pb.Step{Node: n, Action: ActStart, Services: starts[n]})
				}
			}
			for _, st := range []*pb.Stage{&stopSt, install(batch), &startSt} {
				if len(st.Steps) > 0 {
					op.Stages = append(op.Stages, st)
				}
			}
		}
	}
	return op, nil
}

func validateUpgrade(req *pb.OpRequest, in UpgradeInput) error {
	u := req.Upgrade
	var errs []string
	add := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	known := map[string]*pb.Package{}
	for _, p := range in.Packages {
		known[p.Sha256] = p
	}
	checkPkg := func(field, sha, pathField, path, pathSha string) {
		switch {
		case sha != "" && path != "":
			add("%s and %s: give one, not both", field, pathField)
		case path != "":
			if !filepath.IsAbs(path) || (!strings.HasSuffix(path, ".rpm") && !strings.HasSuffix(path, ".deb")) {
				add("%s %q: expected the absolute path of a .rpm or .deb on every node", pathField, path)
			}
			if !fsm.ValidSHA256(pathSha) {
				add("%s_sha256 %q: expected the 64 lowercase hex digits of the file's sha256, which the agents check their copy against (dhctl hashes the file; give --sha256 when it is not on the machine dhctl runs on)", pathField, pathSha)
			}
		case pathSha != "":
			add("%s_sha256: only used with %s", pathField, pathField)
		case sha != "" && known[sha] == nil:
			add("%s %s: no such package is uploaded (see `dhctl upgrade packages`)", field, sha)
		}
	}
	if u.PackageSha256 == "" && u.Path == "" {
		add("upgrade.package_sha256: the package to install is required (upload it, or give its path on the nodes)")
	}
	checkPkg("upgrade.package_sha256", u.PackageSha256, "upgrade.path", u.Path, u.PathSha256)
	if u.AutoRevert {
		if u.PreviousSha256 == "" && u.PreviousPath == "" {
			add("upgrade.auto_revert: needs the package the nodes run now, to put it back: pass it with --previous (no earlier upgrade's package is stored)")
		}
		checkPkg("upgrade.previous_sha256", u.PreviousSha256, "upgrade.previous_path", u.PreviousPath, u.PreviousPathSha256)
		if (u.PreviousSha256 != "" && u.PreviousSha256 == u.PackageSha256) || (u.PreviousPath != "" && u.PreviousPath == u.Path) {
			add("upgrade.previous: is the package being installed; a revert needs the one the nodes run now")
		}
		if p := known[u.PreviousSha256]; p != nil && p.Version != "" {
			for _, name := range slices.Sorted(maps.Keys(in.Nodes)) {
				n := in.Nodes[name]
				if (len(req.Nodes) == 0 || slices.Contains(req.Nodes, name)) && n.PackageVersion != "" && n.PackageVersion != p.Name+" "+p.Version {
					add("upgrade.previous: is %s %s, but node %s runs %s: a revert would not put it back", p.Name, p.Version, name, n.PackageVersion)
				}
			}
		}
	} else if u.PreviousSha256 != "" || u.PreviousPath != "" || u.PreviousPathSha256 != "" {
		add("upgrade.previous: only used with auto_revert")
	}
	if u.Strategy != StrategyFull && u.Strategy != StrategyRolling {
		add("upgrade.strategy: %q is not full or rolling", u.Strategy)
	}
	if u.MaxParallel < 0 {
		add("upgrade.max_parallel: must not be negative")
	}
	if len(req.Services) > 0 || len(req.Except) > 0 {
		add("services and except: an upgrade installs on whole nodes and restarts every service there")
	}
	if req.BatchSize != 0 {
		add("batch_size: an upgrade uses upgrade.max_parallel")
	}
	for _, n := range req.Nodes {
		if _, ok := in.Nodes[n]; !ok {
			add("nodes: unknown node %q (known: %s)", n, strings.Join(slices.Sorted(maps.Keys(in.Nodes)), ", "))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(in.Nodes)) {
		if n := in.Nodes[name]; n.State == "dead" && (len(req.Nodes) == 0 || slices.Contains(req.Nodes, name)) {
			add("nodes: %s is dead; an upgrade would leave it behind: bring it back, or leave it out with --node", name)
		}
	}
	if req.OnFailure != "pause" && req.OnFailure != "abort" {
		add("on_failure: %q is not pause or abort", req.OnFailure)
	}
	if req.HealthyDeadlineMs <= 0 || req.ProgressDeadlineMs <= 0 || req.MinHealthyTimeMs < 0 {
		add("min_healthy_time, healthy_deadline and progress_deadline: must be positive")
	} else if req.MinHealthyTimeMs >= req.HealthyDeadlineMs {
		add("min_healthy_time (%v) must be shorter than healthy_deadline (%v)", ms(req.MinHealthyTimeMs), ms(req.HealthyDeadlineMs))
	}
	if len(errs) > 0 {
		sort.Strings(errs)
		return fmt.Errorf("invalid upgrade: %s", strings.Join(errs, "; "))
	}
	return nil
}

// lastUpgraded is the package of the newest upgrade that completed, if it
// is still stored: what the nodes run, unless someone installed by hand.
func lastUpgraded(history []*pb.Operation, pkgs []*pb.Package) string {
	for _, op := range history {
		if u := op.Request.GetUpgrade(); u != nil && op.State == fsm.OpDone && u.PackageSha256 != "" {
			for _, p := range pkgs {
				if p.Sha256 == u.PackageSha256 {
					return p.Sha256
				}
			}
			return ""
		}
	}
	return ""
}

func batches(nodes []string, size int) [][]string {
	if size <= 0 || size > len(nodes) {
		size = len(nodes)
	}
	var out [][]string
	for len(nodes) > 0 {
		n := min(size, len(nodes))
		out = append(out, nodes[:n])
		nodes = nodes[n:]
	}
	return out
}

// perNode flattens a plan into each node's services, in plan order.
func perNode(op *pb.Operation) map[string][]string {
	out := map[string][]string{}
	for _, st := range op.Stages {
		for _, s := range st.Steps {
			out[s.Node] = append(out[s.Node], s.Services...)
		}
	}
	return out
}

// nodeOrder is the nodes in the order the start walk first reaches them
// (the infrastructure node, with configuration_server, first), then any
// node the walk does not reach (no services), by name.
func nodeOrder(start *pb.Operation, sel []string) []string {
	var out []string
	for _, st := range start.Stages {
		for _, s := range st.Steps {
			if !slices.Contains(out, s.Node) {
				out = append(out, s.Node)
			}
		}
	}
	for _, n := range sel {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// RevertStages plans putting the previous package back after a failed
// upgrade, on every node whose install ran (done, or failed half-way):
// full stops everything again, reinstalls, and starts in dependency order;
// rolling undoes the batches it touched, newest first, each stopped,
// reinstalled and started.
func RevertStages(op *pb.Operation) []*pb.Stage {
	u := op.Request.GetUpgrade()
	touched := map[string]string{} // node -> version before
	for _, st := range op.Stages {
		for _, s := range st.Steps {
			if s.Action == ActInstall && (s.State == fsm.StepDone || s.State == fsm.StepFailed) {
				touched[s.Node] = s.VersionBefore
			}
		}
	}
	revert := func(nodes []string) *pb.Stage {
		st := &pb.Stage{}
		for _, n := range nodes {
			if v, ok := touched[n]; ok {
				st.Steps = append(st.Steps, &pb.Step{Node: n, Action: ActRevert, Package: cmp.Or(u.PreviousSha256, u.PreviousPathSha256), PackagePath: u.PreviousPath, ExpectVersion: v})
			}
		}
		return st
	}
	fresh := func(st *pb.Stage, keep func(node string) bool) *pb.Stage {
		out := &pb.Stage{}
		for _, s := range st.Steps {
			if keep(s.Node) {
				out.Steps = append(out.Steps, &pb.Step{Node: s.Node, Action: s.Action, Services: s.Services})
			}
		}
		return out
	}
	all := func(string) bool { return true }
	var out []*pb.Stage
	add := func(st *pb.Stage) {
		if len(st.Steps) > 0 {
			out = append(out, st)
		}
	}
	if u.GetStrategy() == StrategyRolling {
		// The forward plan is batches of stop, install and start stages. A
		// batch opens with its stop, or with its install when its nodes have
		// no services (and so no stop or start stage).
		var batches [][]*pb.Stage
		prev := ""
		for _, st := range op.Stages[:revertEnd(op)] {
			action := st.Steps[0].Action
			if action == ActStop || action == ActInstall && prev != ActStop {
				batches = append(batches, nil)
			}
			batches[len(batches)-1] = append(batches[len(batches)-1], st)
			prev = action
		}
		for i := len(batches) - 1; i >= 0; i-- {
			var nodes []string
			for _, st := range batches[i] {
				for _, s := range st.Steps {
					if _, ok := touched[s.Node]; ok && s.Action == ActInstall {
						nodes = append(nodes, s.Node)
					}
				}
			}
			if len(nodes) == 0 {
				continue
			}
			in := func(n string) bool { return slices.Contains(nodes, n) }
			for _, st := range batches[i] {
				switch st.Steps[0].Action {
				case ActStop, ActStart:
					add(fresh(st, in))
				case ActInstall:
					add(revert(nodes))
				}
			}
		}
		return out
	}
	var installs []*pb.Stage
	for _, st := range op.Stages[:revertEnd(op)] {
		switch st.Steps[0].Action {
		case ActStop:
			add(fresh(st, all))
		case ActInstall:
			installs = append(installs, st)
		}
	}
	for _, st := range installs {
		var nodes []string
		for _, s := range st.Steps {
			nodes = append(nodes, s.Node)
		}
		add(revert(nodes))
	}
	for _, st := range op.Stages[:revertEnd(op)] {
		if st.Steps[0].Action == ActStart {
			add(fresh(st, all))
		}
	}
	return out
}

// revertEnd is where an operation's forward stages end.
func revertEnd(op *pb.Operation) int {
	if op.Reverting {
		return int(op.RevertFrom)
	}
	return len(op.Stages)
}
