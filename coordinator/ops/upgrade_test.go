package ops

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

const (
	shaV1 = "1111111111111111111111111111111111111111111111111111111111111111"
	shaV2 = "2222222222222222222222222222222222222222222222222222222222222222"
)

var testDefaults = Defaults{MinHealthyTime: time.Millisecond, HealthyDeadline: 5 * time.Second, ProgressDeadline: 10 * time.Second}

func upgradeInput(t *testing.T) UpgradeInput {
	nodes := classicCluster(t)
	for _, n := range nodes {
		n.PackageVersion = "illumon-db 1.0"
	}
	return UpgradeInput{Nodes: nodes, Packages: []*pb.Package{
		{Sha256: shaV1, Size: 10, FileName: "illumon-db_1.0.deb", Replicas: []string{"c1"}, Name: "illumon-db", Version: "1.0"},
		{Sha256: shaV2, Size: 10, FileName: "illumon-db_2.0.deb", Replicas: []string{"c1"}},
	}}
}

// renderActions prints a plan one stage per line: "action node:svc,svc node".
func renderActions(op *pb.Operation) string {
	var lines []string
	for _, st := range op.Stages {
		parts := []string{st.Steps[0].Action}
		for _, s := range st.Steps {
			p := s.Node
			if len(s.Services) > 0 {
				p += ":" + strings.Join(s.Services, ",")
			}
			parts = append(parts, p)
		}
		lines = append(lines, strings.Join(parts, " "))
	}
	return strings.Join(lines, "\n")
}

func TestPlanUpgradeFull(t *testing.T) {
	in := upgradeInput(t)
	op, err := PlanUpgrade(&pb.OpRequest{Action: ActUpgrade, Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2}}, in, testDefaults)
	if err != nil {
		t.Fatal(err)
	}
	stop, _ := Plan(&pb.OpRequest{Action: ActStop}, in.Nodes, nil, testDefaults)
	start, _ := Plan(&pb.OpRequest{Action: ActStart}, in.Nodes, nil, testDefaults)
	want := renderActions(stop) + "\ninstall infra merge-1 query-1 query-2\n" + renderActions(start)
	if got := renderActions(op); got != want {
		t.Fatalf("full plan:\n%s\nwant:\n%s", got, want)
	}
	// Deephaven's documented order, from the graph: configuration_server,
	// authentication_server, the query and merge nodes, the infra node.
	lines := strings.Split(renderActions(start), "\n")
	if !strings.HasPrefix(lines[0], "start infra:configuration_server") || !strings.HasPrefix(lines[1], "start infra:authentication_server") ||
		!strings.Contains(lines[2], "query-1:") || !strings.Contains(lines[3], "infra:") {
		t.Errorf("start order:\n%s", renderActions(start))
	}
	for _, st := range op.Stages {
		for _, s := range st.Steps {
			if s.Action == ActInstall && s.Package != shaV2 {
				t.Errorf("install step without the package: %v", s)
			}
		}
	}
	two, err := PlanUpgrade(&pb.OpRequest{Action: ActUpgrade, Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2, MaxParallel: 3}}, in, testDefaults)
	if err != nil {
		t.Fatal(err)
	}
	if got := renderActions(two); !strings.Contains(got, "\ninstall infra merge-1 query-1\ninstall query-2\n") {
		t.Errorf("max_parallel 3 installs:\n%s", got)
	}
}

func TestPlanUpgradeRolling(t *testing.T) {
	in := upgradeInput(t)
	op, err := PlanUpgrade(&pb.OpRequest{Action: ActUpgrade, Upgrade: &pb.UpgradeSpec{Path: "/srv/illumon-db_2.0.deb", Strategy: StrategyRolling}}, in, testDefaults)
	if err != nil {
		t.Fatal(err)
	}
	got := renderActions(op)
	lines := strings.Split(got, "\n")
	// The infrastructure node first (the graph needs configuration_server
	// first), then the others; each stopped, installed, started.
	wantNodes := []string{"infra", "merge-1", "query-1", "query-2"}
	if len(lines) != 12 {
		t.Fatalf("rolling plan:\n%s", got)
	}
	for i, n := range wantNodes {
		if !strings.HasPrefix(lines[3*i], "stop "+n+":") || lines[3*i+1] != "install "+n || !strings.HasPrefix(lines[3*i+2], "start "+n+":") {
			t.Errorf("batch %d is not %s:\n%s", i, n, got)
		}
	}
	if !strings.HasPrefix(lines[2], "start infra:configuration_server,authentication_server") || !strings.HasSuffix(lines[0], "authentication_server,configuration_server") {
		t.Errorf("a node's services start in dependency order and stop in reverse:\n%s", got)
	}
	if op.Stages[1].Steps[0].PackagePath != "/srv/illumon-db_2.0.deb" {
		t.Errorf("install step: %v", op.Stages[1].Steps[0])
	}
	two, err := PlanUpgrade(&pb.OpRequest{Action: ActUpgrade, Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2, Strategy: StrategyRolling, MaxParallel: 2}}, in, testDefaults)
	if err != nil {
		t.Fatal(err)
	}
	if got := renderActions(two); len(two.Stages) != 6 || !strings.Contains(got, "\ninstall infra merge-1\n") || !strings.Contains(got, "\ninstall query-1 query-2\n") {
		t.Errorf("rolling by 2:\n%s", got)
	}
}

func TestPlanUpgradeRefuses(t *testing.T) {
	tests := []struct {
		name string
		req  *pb.OpRequest
		mod  func(*UpgradeInput)
		want string
	}{
		{"no package", &pb.OpRequest{}, nil, "upgrade.package_sha256: the package to install is required"},
		{"unknown package", &pb.OpRequest{Upgrade: &pb.UpgradeSpec{PackageSha256: strings.Repeat("3", 64)}}, nil, "no such package is uploaded"},
		{"both", &pb.OpRequest{Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2, Path: "/x.rpm"}}, nil, "give one, not both"},
		{"relative path", &pb.OpRequest{Upgrade: &pb.UpgradeSpec{Path: "x.rpm"}}, nil, "absolute path of a .rpm or .deb"},
		{"strategy", &pb.OpRequest{Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2, Strategy: "canary"}}, nil, `"canary" is not full or rolling`},
		{"auto-revert without previous", &pb.OpRequest{Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2, AutoRevert: true}}, nil, "needs the package the nodes run now"},
		{"previous is the new one", &pb.OpRequest{Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2, AutoRevert: true, PreviousSha256: shaV2}}, nil, "is the package being installed"},
		{"previous of another version", &pb.OpRequest{Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2, AutoRevert: true, PreviousSha256: shaV1}},
			func(in *UpgradeInput) { in.Nodes["query-2"].PackageVersion = "illumon-db 0.9" }, "node query-2 runs illumon-db 0.9"},
		{"previous without auto-revert", &pb.OpRequest{Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2, PreviousSha256: shaV1}}, nil, "only used with auto_revert"},
		{"dead node", &pb.OpRequest{Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2}}, func(in *UpgradeInput) { in.Nodes["query-1"].State = "dead" }, "query-1 is dead"},
		{"services", &pb.OpRequest{Services: []string{"db_tdcp"}, Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2}}, nil, "an upgrade installs on whole nodes"},
		{"max parallel", &pb.OpRequest{Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2, MaxParallel: -1}}, nil, "max_parallel: must not be negative"},
		{"unknown node", &pb.OpRequest{Nodes: []string{"nope"}, Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2}}, nil, `unknown node "nope"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := upgradeInput(t)
			if tt.mod != nil {
				tt.mod(&in)
			}
			tt.req.Action = ActUpgrade
			_, err := PlanUpgrade(tt.req, in, testDefaults)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
	// The previous package defaults to the last completed upgrade's.
	in := upgradeInput(t)
	in.History = []*pb.Operation{{State: fsm.OpDone, Request: &pb.OpRequest{Action: ActUpgrade, Upgrade: &pb.UpgradeSpec{PackageSha256: shaV1}}}}
	op, err := PlanUpgrade(&pb.OpRequest{Action: ActUpgrade, Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2, AutoRevert: true}}, in, testDefaults)
	if err != nil || op.Request.Upgrade.PreviousSha256 != shaV1 {
		t.Fatalf("default previous: %v, %v", err, op.GetRequest().GetUpgrade())
	}
}

// A rolling revert undoes each batch once, newest first, also batches of
// nodes without services (no start stage closes them).
func TestRevertStagesRolling(t *testing.T) {
	in := upgradeInput(t)
	for _, n := range []string{"bare-1", "bare-2"} {
		in.Nodes[n] = &pb.Node{Name: n, State: "alive", PackageVersion: "illumon-db 1.0"}
	}
	op, err := PlanUpgrade(&pb.OpRequest{Action: ActUpgrade, Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2, Strategy: StrategyRolling, AutoRevert: true, PreviousSha256: shaV1}}, in, testDefaults)
	if err != nil {
		t.Fatal(err)
	}
	// Every install ran, the last (bare-2's, the nodes without services
	// come last) failed.
	for _, st := range op.Stages {
		for _, s := range st.Steps {
			s.State, s.VersionBefore = fsm.StepDone, "1.0"
			if s.Node == "bare-2" {
				s.State = fsm.StepFailed
			}
		}
	}
	want := "revert bare-2\nrevert bare-1\n" +
		"stop query-2:db_query_server,db_merge_server,tailer1,log_aggregator_service,db_tdcp\nrevert query-2\nstart query-2:db_tdcp,log_aggregator_service,tailer1,db_merge_server,db_query_server"
	if got := renderActions(&pb.Operation{Stages: RevertStages(op)}); !strings.HasPrefix(got, want) || strings.Count(got, "revert ") != 6 {
		t.Errorf("revert plan:\n%s\nwant 6 reverts, starting:\n%s", got, want)
	}
}

// startUpgrade records the packages and a coordinator holding them, then
// creates the upgrade op; every node runs 1.0.
func (h *harness) startUpgrade(u *pb.UpgradeSpec) *pb.Operation {
	h.t.Helper()
	return h.startUpgradeWith(&pb.OpRequest{Upgrade: u})
}

// startUpgradeWith is startUpgrade with more of the request than the
// upgrade's spec.
func (h *harness) startUpgradeWith(req *pb.OpRequest) *pb.Operation {
	h.t.Helper()
	for _, cmd := range []*pb.Command{
		{Cmd: &pb.Command_PeerUpsert{PeerUpsert: &pb.Peer{Id: "c1", ApiAddr: "127.0.0.1:1"}}},
		{Cmd: &pb.Command_PackageAdd{PackageAdd: &pb.Package{Sha256: shaV1, Size: 10, FileName: "illumon-db_1.0.deb", Replicas: []string{"c1"}}}},
		{Cmd: &pb.Command_PackageAdd{PackageAdd: &pb.Package{Sha256: shaV2, Size: 10, FileName: "illumon-db_2.0.deb", Replicas: []string{"c1"}}}},
	} {
		if _, err := h.apply(cmd); err != nil {
			h.t.Fatal(err)
		}
	}
	h.agents.pkgVersions[shaV1], h.agents.pkgVersions[shaV2] = "1.0", "2.0"
	for _, n := range []string{"infra", "query-1", "query-2", "merge-1"} {
		h.agents.versions[n] = "1.0"
	}
	req.Action, req.Label = ActUpgrade, "upgrade"
	return h.create(PlanUpgrade(req, UpgradeInput{Nodes: classicCluster(h.t), Packages: h.fsm.Packages()}, testDefaults))
}

func TestEngineUpgradeFull(t *testing.T) {
	h := newHarness(t)
	op := h.lead(h.startUpgrade(&pb.UpgradeSpec{PackageSha256: shaV2}).Id, nil)
	if op.State != fsm.OpDone || op.Message != "upgraded infra,merge-1,query-1,query-2: 1.0 -> 2.0" {
		t.Fatalf("upgrade %s: %s", op.State, op.Message)
	}
	if got := h.agents.installsDone(); strings.Join(slices.Sorted(slices.Values(got)), " ") != "infra=2.0 merge-1=2.0 query-1=2.0 query-2=2.0" {
		t.Errorf("installs: %s", got)
	}
	h.agents.mu.Lock()
	prefetched := slices.Sorted(slices.Values(h.agents.prefetched))
	h.agents.mu.Unlock()
	if strings.Join(prefetched, " ") != "infra merge-1 query-1 query-2" {
		t.Errorf("prefetched on %v, want every node once", prefetched)
	}
	// Every instance stopped once and started once.
	if got := len(h.agents.actedOn()); got != 44 {
		t.Errorf("acted %d times, want 44 (22 stops, 22 starts)", got)
	}
	if p := h.fsm.Package(shaV2); p.Name != "illumon-db" || p.Version != "2.0" {
		t.Errorf("the package's name and version were not learned: %v", p)
	}
	// What an operator stopped is not recorded by an upgrade's stops.
	if d := h.fsm.Desired(); len(d) != 0 {
		t.Errorf("desired state after the upgrade: %v", d)
	}
}

// A rolling upgrade whose install fails on the third node, with
// auto-revert: the previous package goes back on that node and the two done
// before it, newest first; the fourth is never touched; the upgrade fails
// with the node and the tool's output.
func TestEngineUpgradeRollingAutoRevert(t *testing.T) {
	h := newHarness(t)
	h.agents.failInstall["query-1"] = "2.0"
	op := h.lead(h.startUpgrade(&pb.UpgradeSpec{PackageSha256: shaV2, Strategy: StrategyRolling, AutoRevert: true, PreviousSha256: shaV1}).Id, nil)
	if op.State != fsm.OpFailed || !op.Reverting {
		t.Fatalf("upgrade %s (reverting %v): %s", op.State, op.Reverting, op.Message)
	}
	for _, want := range []string{"install on query-1: dpkg exited with status 1", "postinst: cannot configure illumon-db 2.0", "reverted", "infra (1.0)", "merge-1 (1.0)", "query-1 (1.0)"} {
		if !strings.Contains(op.Message, want) {
			t.Errorf("message lacks %q: %s", want, op.Message)
		}
	}
	if got := strings.Join(h.agents.installsDone(), " "); got != "infra=2.0 merge-1=2.0 query-1=1.0 merge-1=1.0 infra=1.0" {
		t.Errorf("installs: %s", got)
	}
	for n, v := range h.agents.versions {
		if v != "1.0" {
			t.Errorf("%s ends on %s", n, v)
		}
	}
	skipped := 0
	for _, st := range op.Stages[:op.RevertFrom] {
		for _, s := range st.Steps {
			if s.State == fsm.StepSkipped {
				skipped++
				if s.Node != "query-1" && s.Node != "query-2" {
					t.Errorf("skipped a step on %s", s.Node)
				}
			}
		}
	}
	if skipped != 4 { // query-1's start; query-2's stop, install, start
		t.Errorf("%d steps skipped, want 4", skipped)
	}
}

// The leader lost while an install's answer is on its way: the new leader
// sends the step again, and the agent does not install twice.
func TestEngineUpgradeResumesAfterLeaderLoss(t *testing.T) {
	h := newHarness(t)
	release := make(chan struct{})
	h.agents.blockInstall["query-2"] = release
	op := h.startUpgrade(&pb.UpgradeSpec{PackageSha256: shaV2, Strategy: StrategyRolling})
	lost := make(chan struct{})
	go func() {
		for {
			if len(h.agents.installsDone()) == 4 {
				close(lost)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	if mid := h.lead(op.Id, lost); mid.State != fsm.OpRunning {
		t.Fatalf("after leadership loss: %s", mid.State)
	}
	close(release)
	done := h.lead(op.Id, nil)
	if done.State != fsm.OpDone {
		t.Fatalf("upgrade %s: %s", done.State, done.Message)
	}
	if got := strings.Join(h.agents.installsDone(), " "); got != "infra=2.0 merge-1=2.0 query-1=2.0 query-2=2.0" {
		t.Errorf("installs: %s", got)
	}
	s := done.Stages[10].Steps[0]
	if s.Action != ActInstall || s.Attempts != 2 || !strings.Contains(s.Message, "installed earlier in this step") {
		t.Errorf("resumed install step: %v", s)
	}
}

// deadHealth reports one node dead once kill is called.
type deadHealth struct {
	okHealth
	node string
	mu   sync.Mutex
	dead bool
	subs []chan struct{}
}

func (h *deadHealth) NodeState(n string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dead && n == h.node {
		return "dead"
	}
	return "alive"
}

func (h *deadHealth) Subscribe() (<-chan struct{}, func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch := make(chan struct{}, 1)
	h.subs = append(h.subs, ch)
	return ch, func() {}
}

func (h *deadHealth) kill() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dead = true
	for _, ch := range h.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// A node that dies during its install pauses the upgrade (no revert: that
// would need the node too).
func TestEngineUpgradeNodeDiesPauses(t *testing.T) {
	h := newHarness(t)
	dh := &deadHealth{node: "query-1"}
	h.eng.Health = dh
	h.agents.blockInstall["query-1"] = make(chan struct{}) // never answers
	op := h.startUpgrade(&pb.UpgradeSpec{PackageSha256: shaV2, AutoRevert: true, PreviousSha256: shaV1})
	go func() {
		for {
			if o, _ := h.fsm.Op(op.Id); o.Stages[4].Steps[0].Action == ActInstall && o.Stages[4].Steps[2].State == fsm.StepRunning {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		dh.kill()
	}()
	got := h.lead(op.Id, nil)
	if got.State != fsm.OpPaused || !strings.Contains(got.Message, "node query-1 is dead") || !strings.Contains(got.Message, "dhctl upgrade resume") || got.Reverting {
		t.Fatalf("got %s (reverting %v): %s", got.State, got.Reverting, got.Message)
	}
}

// Without auto-revert a failed install pauses the upgrade (on_failure
// pause) with the node and the tool's output; the nodes after it wait.
func TestEngineUpgradeFailurePauses(t *testing.T) {
	h := newHarness(t)
	h.agents.failInstall["merge-1"] = "2.0"
	op := h.lead(h.startUpgrade(&pb.UpgradeSpec{PackageSha256: shaV2, Strategy: StrategyRolling}).Id, nil)
	if op.State != fsm.OpPaused || op.Reverting {
		t.Fatalf("upgrade %s (reverting %v): %s", op.State, op.Reverting, op.Message)
	}
	for _, want := range []string{"install on merge-1: dpkg exited with status 1", "postinst: cannot configure illumon-db 2.0", "`dhctl upgrade resume " + op.Id + "`"} {
		if !strings.Contains(op.Message, want) {
			t.Errorf("message lacks %q: %s", want, op.Message)
		}
	}
	if got := strings.Join(h.agents.installsDone(), " "); got != "infra=2.0" {
		t.Errorf("installs: %s", got)
	}
	var failed *pb.Step
	for _, st := range op.Stages {
		for _, s := range st.Steps {
			if s.State == fsm.StepFailed {
				failed = s
			}
		}
	}
	if failed == nil || failed.Node != "merge-1" || !strings.Contains(failed.Output, "postinst") || failed.VersionAfter != "2.0 (half-configured)" {
		t.Errorf("failed step: %v", failed)
	}
}

// The full strategy with auto-revert: the installs run everywhere at once,
// one fails, and every node goes back to 1.0: everything stopped again,
// reinstalled, started in dependency order.
func TestEngineUpgradeFullAutoRevert(t *testing.T) {
	h := newHarness(t)
	h.agents.failInstall["query-1"] = "2.0"
	op := h.lead(h.startUpgrade(&pb.UpgradeSpec{PackageSha256: shaV2, AutoRevert: true, PreviousSha256: shaV1}).Id, nil)
	if op.State != fsm.OpFailed || !op.Reverting || !strings.Contains(op.Message, "install on query-1") {
		t.Fatalf("upgrade %s (reverting %v): %s", op.State, op.Reverting, op.Message)
	}
	installs := h.agents.installsDone()
	if len(installs) != 7 {
		t.Fatalf("installs: %v", installs)
	}
	if got := strings.Join(slices.Sorted(slices.Values(installs[:3])), " "); got != "infra=2.0 merge-1=2.0 query-2=2.0" {
		t.Errorf("upgrade installs: %s", got)
	}
	if got := strings.Join(slices.Sorted(slices.Values(installs[3:])), " "); got != "infra=1.0 merge-1=1.0 query-1=1.0 query-2=1.0" {
		t.Errorf("revert installs: %s", got)
	}
	want := renderActions(&pb.Operation{Stages: op.Stages[:4]}) + "\nrevert infra merge-1 query-1 query-2\n" + renderActions(&pb.Operation{Stages: op.Stages[5:op.RevertFrom]})
	if got := renderActions(&pb.Operation{Stages: op.Stages[op.RevertFrom:]}); got != want {
		t.Errorf("revert plan:\n%s\nwant:\n%s", got, want)
	}
	for n, v := range h.agents.versions {
		if v != "1.0" {
			t.Errorf("%s ends on %s", n, v)
		}
	}
}

// installUnreachable is agents that act on services but cannot be reached
// for installs (an agent restarting, say).
type installUnreachable struct{ *fakeAgents }

func (installUnreachable) Install(context.Context, string, *agentpb.InstallRequest) (*agentpb.InstallResult, error) {
	return nil, &Unavailable{Err: errors.New("connection refused")}
}

// An install step whose agent cannot be reached is retried until the
// progress deadline, which pauses the upgrade.
func TestEngineUpgradeUnreachableAgent(t *testing.T) {
	h := newHarness(t)
	h.eng.Agents = installUnreachable{h.agents}
	op := h.lead(h.startUpgradeWith(&pb.OpRequest{ProgressDeadlineMs: 300, Upgrade: &pb.UpgradeSpec{PackageSha256: shaV2, Strategy: StrategyRolling}}).Id, nil)
	if op.State != fsm.OpPaused || !strings.Contains(op.Message, "install on infra: no progress within the progress deadline") || !strings.Contains(op.Message, "connection refused") {
		t.Fatalf("upgrade %s: %s", op.State, op.Message)
	}
}
