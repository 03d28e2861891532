package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/dhvisor/dhvisor/proto/coordpb"
	"github.com/dhvisor/dhvisor/test/debpkg"
	"github.com/dhvisor/dhvisor/test/devcluster"
	"github.com/dhvisor/dhvisor/test/need"
)

// failMarker, in a node's root, makes release 3.0's postinst fail there.
const failMarker = "etc/illumon-fail-postinst"

var (
	debsOnce sync.Once
	debs     map[string]string // version -> .deb
	debsErr  error
)

// testDebs builds the stand-in packages once: 1.0, 2.0, and 3.0 whose
// postinst fails on a node with failMarker.
func testDebs(t *testing.T) map[string]string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/dpkg-deb"); err != nil || os.Geteuid() != 0 {
		need.Root(t, "installing packages with dpkg")
		if err != nil {
			t.Fatalf("dpkg-deb: %v", err)
		}
	}
	debsOnce.Do(func() {
		dir := filepath.Join(binDir, "debs")
		if debsErr = os.MkdirAll(dir, 0o755); debsErr != nil {
			return
		}
		debs = map[string]string{}
		for _, s := range []debpkg.Spec{{Version: "1.0"}, {Version: "2.0"}, {Version: "3.0", FailPostinstIf: failMarker}} {
			s.Name, s.Standin = "illumon-db", filepath.Join(binDir, "dh-standin")
			if debs[s.Version], debsErr = debpkg.Build(dir, s); debsErr != nil {
				return
			}
		}
	})
	if debsErr != nil {
		t.Fatal(debsErr)
	}
	return debs
}

// upgradeCluster is a dev cluster whose nodes run the stand-in from
// illumon-db 1.0 installed in each node's own dpkg root.
type upgradeCluster struct {
	*devcluster.Cluster
	roots map[string]string
	debs  map[string]string
}

func startUpgradeCluster(t *testing.T, hold time.Duration) *upgradeCluster {
	t.Helper()
	u := &upgradeCluster{roots: map[string]string{}, debs: testDebs(t)}
	base := t.TempDir()
	nodes := slices.Clone(classicNodes)
	for i, n := range nodes {
		root := filepath.Join(base, n.Name)
		if err := debpkg.InitRoot(root); err != nil {
			t.Fatal(err)
		}
		if err := debpkg.Install(root, u.debs["1.0"]); err != nil {
			t.Fatal(err)
		}
		u.roots[n.Name] = root
		// Each run of the install command leaves a line in installs.log.
		install := append([]string{"/bin/sh", "-c", `echo "$0" >> ` + filepath.Join(root, "installs.log") + `; exec "$@"`, "{{.Version}}"}, debpkg.InstallCommand(root)...)
		nodes[i].Extra = fmt.Sprintf("launcher_dir: %s\npackages:\n  install: [%s]\n  query: [%s]\n", filepath.Join(root, "usr/illumon/latest/bin"), debpkg.YAMLList(install), debpkg.YAMLList(debpkg.QueryCommand(root)))
	}
	u.Cluster = startClusterWith(t, devcluster.Options{
		Coordinators: 3, Nodes: nodes, MinHealthyTime: hold,
		Program: "{{.LauncherDir}}/launch",
	})
	if err := os.Truncate(u.Record, 0); err != nil {
		t.Fatal(err)
	}
	return u
}

// installs lists the versions each node's install command ran for.
func (u *upgradeCluster) installs(node string) []string {
	b, _ := os.ReadFile(filepath.Join(u.roots[node], "installs.log"))
	return strings.Fields(string(b))
}

// checkVersions: dpkg in every root says want is installed, every service
// runs want's binary and is OK, and the coordinators know each node's version.
func (u *upgradeCluster) checkVersions(t *testing.T, want map[string]string) {
	t.Helper()
	for node, v := range want {
		if got, _ := debpkg.Installed(u.roots[node], "illumon-db"); got != "ii "+v {
			t.Errorf("%s: dpkg says %q, want ii %s", node, got, v)
		}
	}
	if err := u.WaitReady(context.Background(), 60*time.Second); err != nil {
		t.Fatalf("after the upgrade: %v", err)
	}
	// The coordinators record what each agent publishes.
	deadline := time.Now().Add(15 * time.Second)
	for {
		cl, closeConn, err := u.Client(u.Leader(context.Background()))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := cl.Nodes(context.Background(), &pb.NodesRequest{})
		closeConn()
		wrong := ""
		for _, n := range resp.GetNodes() {
			if w := "illumon-db " + want[n.Name]; n.PackageVersion != w || n.DeephavenVersion != want[n.Name] {
				wrong += fmt.Sprintf(" %s: %q/%q (want %q)", n.Name, n.PackageVersion, n.DeephavenVersion, w)
			}
		}
		if err == nil && wrong == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes' versions as recorded:%s (%v)", wrong, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type lifecycle struct {
	stops, starts []devcluster.Event
}

func byInstance(t *testing.T, c *devcluster.Cluster) map[string]*lifecycle {
	t.Helper()
	events, err := c.Events()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*lifecycle{}
	for _, e := range events {
		id := e.Node + "/" + e.Service
		if out[id] == nil {
			out[id] = &lifecycle{}
		}
		if e.Kind == "stop" {
			out[id].stops = append(out[id].stops, e)
		} else {
			out[id].starts = append(out[id].starts, e)
		}
	}
	return out
}

func upgradeOp(t *testing.T, c *devcluster.Cluster) *pb.Operation {
	t.Helper()
	l := c.Leader(context.Background())
	cl, closeConn, err := c.Client(max(l, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	resp, err := cl.ListOps(context.Background(), &pb.ListOpsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range resp.Ops {
		if op.Request.GetAction() == "upgrade" {
			return op
		}
	}
	t.Fatal("no upgrade operation")
	return nil
}

// The full strategy on four nodes with dhctl: every service stopped, the
// package installed once everywhere, every service started in Deephaven's
// documented order (from the graph), each node ends on 2.0 with every
// service OK and running 2.0's binary.
func TestUpgradeFull(t *testing.T) {
	u := startUpgradeCluster(t, 300*time.Millisecond)
	ctx := context.Background()
	graph := instanceDeps(t, u.Cluster, 0)

	out, err := u.Ctl(ctx, "upgrade", "start", u.debs["2.0"], "--dry-run")
	if err != nil || !strings.Contains(out, "plan for upgrade illumon-db_2.0.deb (nothing done)") || !strings.Contains(out, "install") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if evs, _ := u.Events(); len(evs) != 0 {
		t.Fatalf("a dry run touched services: %v", evs)
	}
	out, err = u.Ctl(ctx, "upgrade", "start", u.debs["2.0"])
	if err != nil {
		t.Fatalf("dhctl upgrade start: %v\n%s", err, out)
	}
	t.Logf("dhctl upgrade start:\n%s", out)
	op := upgradeOp(t, u.Cluster)
	if op.State != "done" || !strings.Contains(op.Message, "1.0 -> 2.0") {
		t.Fatalf("upgrade %s: %s", op.State, op.Message)
	}
	for _, n := range classicNodes {
		if got := u.installs(n.Name); !slices.Equal(got, []string{"2.0"}) {
			t.Errorf("%s ran the install command for %v, want once for 2.0", n.Name, got)
		}
	}
	u.checkVersions(t, map[string]string{"infra": "2.0", "query-1": "2.0", "query-2": "2.0", "merge-1": "2.0"})

	life := byInstance(t, u.Cluster)
	var lastStop, firstStart time.Time
	for id := range graph {
		l := life[id]
		if l == nil || len(l.stops) != 1 || len(l.starts) != 1 || l.starts[0].Release != "2.0" {
			t.Fatalf("%s: want one stop, then one start of release 2.0; got %+v", id, l)
		}
		if l.stops[0].At.After(lastStop) {
			lastStop = l.stops[0].At
		}
		if firstStart.IsZero() || l.starts[0].At.Before(firstStart) {
			firstStart = l.starts[0].At
		}
	}
	if !lastStop.Before(firstStart) {
		t.Errorf("full: a service started (%v) before the last stopped (%v)", firstStart, lastStop)
	}
	// Started in dependency order, and in Deephaven's documented order.
	start := func(id string) time.Time { return life[id].starts[0].At }
	for id, deps := range graph {
		for _, d := range deps {
			if !start(d).Before(start(id)) {
				t.Errorf("%s started before its dependency %s", id, d)
			}
		}
	}
	if !start("infra/configuration_server").Before(start("infra/authentication_server")) {
		t.Error("authentication_server started before configuration_server")
	}
	for _, q := range []string{"query-1", "query-2", "merge-1"} {
		if !start("infra/authentication_server").Before(start(q + "/db_tdcp")) {
			t.Errorf("%s started before authentication_server", q)
		}
		if !start(q + "/db_tdcp").Before(start("infra/iris_controller")) {
			t.Errorf("the infrastructure node's iris_controller started before %s", q)
		}
	}

	for _, check := range []struct {
		args []string
		want string
	}{
		{[]string{"nodes", "--socket", filepath.Join(u.Agents[0].Dir, "agent.sock")}, "illumon-db 2.0"},
		{[]string{"status"}, "package illumon-db 2.0"},
		{[]string{"upgrade", "status"}, "100%"},
		{[]string{"upgrade", "packages"}, "illumon-db 2.0"},
		{[]string{"audit"}, "upgrade illumon-db_2.0.deb"},
	} {
		if out, err := u.Ctl(ctx, check.args...); err != nil || !strings.Contains(out, check.want) {
			t.Errorf("dhctl %s: %v, want %q in:\n%s", strings.Join(check.args, " "), err, check.want, out)
		}
	}
}

// A rolling upgrade with the leader killed in the middle: the new leader
// finishes it, no node installs twice, and the nodes went one at a time in
// dependency order (the infrastructure node first).
func TestUpgradeRollingSurvivesLeaderKill(t *testing.T) {
	u := startUpgradeCluster(t, 300*time.Millisecond)
	ctx := context.Background()
	out, err := u.Ctl(ctx, "upgrade", "start", u.debs["2.0"], "--strategy", "rolling", "--detach")
	if err != nil {
		t.Fatalf("dhctl upgrade start: %v\n%s", err, out)
	}
	leader := u.Leader(ctx)
	survivor := (leader + 1) % 3
	cl, closeConn, err := u.Client(survivor)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	id := upgradeOp(t, u.Cluster).Id
	// Kill the leader when the second node's install is under way.
	waitOp(t, cl, id, 60*time.Second, func(o *pb.Operation) bool { return o.Stages[4].Steps[0].State != "pending" })
	u.Coords[leader].Kill()
	t.Logf("killed leader %s during the second node's install step", u.Coords[leader].Name)
	done := waitOp(t, cl, id, 120*time.Second, func(o *pb.Operation) bool { return o.State != "running" })
	if done.State != "done" {
		t.Fatalf("upgrade %s: %s", done.State, done.Message)
	}
	t.Logf("steps resumed by the new leader: %d", resumedSteps(done))
	for _, n := range classicNodes {
		if got := u.installs(n.Name); !slices.Equal(got, []string{"2.0"}) {
			t.Errorf("%s ran the install command for %v, want once for 2.0", n.Name, got)
		}
	}
	u.checkVersions(t, map[string]string{"infra": "2.0", "query-1": "2.0", "query-2": "2.0", "merge-1": "2.0"})

	// One node at a time: every service of a node is back before the next
	// node's first stop; the infrastructure node first.
	life := byInstance(t, u.Cluster)
	window := map[string][2]time.Time{} // first stop, last start
	for id, l := range life {
		if len(l.stops) != 1 || len(l.starts) != 1 || l.starts[0].Release != "2.0" {
			t.Fatalf("%s: want one stop and one start of 2.0, got %+v", id, l)
		}
		node := l.stops[0].Node
		w := window[node]
		if w[0].IsZero() || l.stops[0].At.Before(w[0]) {
			w[0] = l.stops[0].At
		}
		if l.starts[0].At.After(w[1]) {
			w[1] = l.starts[0].At
		}
		window[node] = w
	}
	nodes := make([]string, 0, len(window))
	for n := range window {
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, func(a, b string) int { return window[a][0].Compare(window[b][0]) })
	if nodes[0] != "infra" {
		t.Errorf("rolling order %v: the infrastructure node (configuration_server) goes first", nodes)
	}
	for i := 1; i < len(nodes); i++ {
		if !window[nodes[i-1]][1].Before(window[nodes[i]][0]) {
			t.Errorf("%s was stopped before %s was back", nodes[i], nodes[i-1])
		}
	}
}

// A package whose postinst fails on the third node of a rolling upgrade,
// with --auto-revert: the upgrade fails naming the node and the tool's
// output; the nodes done so far and the failed one are back on 1.0 and
// healthy; the fourth node was never touched.
func TestUpgradeAutoRevert(t *testing.T) {
	u := startUpgradeCluster(t, 200*time.Millisecond)
	ctx := context.Background()
	if err := os.MkdirAll(filepath.Join(u.roots["query-1"], "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(u.roots["query-1"], failMarker), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := u.Ctl(ctx, "upgrade", "start", u.debs["3.0"], "--strategy", "rolling", "--auto-revert", "--previous", u.debs["1.0"])
	if err == nil {
		t.Fatalf("dhctl upgrade start succeeded:\n%s", out)
	}
	op := upgradeOp(t, u.Cluster)
	if op.State != "failed" || !op.Reverting {
		t.Fatalf("upgrade %s: %s", op.State, op.Message)
	}
	for _, want := range []string{"install on query-1", "postinst: cannot configure illumon-db 3.0 on this node", "reverted", "infra (1.0)", "merge-1 (1.0)", "query-1 (1.0)"} {
		if !strings.Contains(op.Message, want) {
			t.Errorf("the upgrade's message lacks %q: %s", want, op.Message)
		}
	}
	wantInstalls := map[string][]string{"infra": {"3.0", "1.0"}, "merge-1": {"3.0", "1.0"}, "query-1": {"3.0", "1.0"}, "query-2": nil}
	for node, want := range wantInstalls {
		if got := u.installs(node); !slices.Equal(got, want) {
			t.Errorf("%s ran the install command for %v, want %v", node, got, want)
		}
	}
	u.checkVersions(t, map[string]string{"infra": "1.0", "query-1": "1.0", "query-2": "1.0", "merge-1": "1.0"})
	for id, l := range byInstance(t, u.Cluster) {
		switch {
		case strings.HasPrefix(id, "query-2/"):
			t.Errorf("%s was touched: %+v", id, l)
		case len(l.starts) == 0 || l.starts[len(l.starts)-1].Release != "1.0":
			t.Errorf("%s does not run 1.0 at the end: %+v", id, l)
		}
	}
	if out, err := u.Ctl(ctx, "upgrade", "status"); !strings.Contains(out, "postinst: cannot configure") || !strings.Contains(out, "reverting") {
		t.Errorf("dhctl upgrade status (%v):\n%s", err, out)
	}
}

// A node whose agent dies during a rolling upgrade pauses it when the
// upgrade reaches it; with the agent back, `dhctl upgrade resume` finishes
// it, and no node installs twice.
func TestUpgradeNodeDiesPausesThenResumes(t *testing.T) {
	u := startUpgradeCluster(t, 300*time.Millisecond)
	ctx := context.Background()
	if out, err := u.Ctl(ctx, "upgrade", "start", u.debs["2.0"], "--strategy", "rolling", "--detach"); err != nil {
		t.Fatalf("dhctl upgrade start: %v\n%s", err, out)
	}
	id := upgradeOp(t, u.Cluster).Id
	cl, closeConn, err := u.Client(0)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	// The rolling order is infra, merge-1, query-1, query-2: kill query-2's
	// agent (its services run on) while the upgrade is at the first node.
	var victim *devcluster.Proc
	for _, a := range u.Agents {
		if a.Name == "query-2" {
			victim = a
		}
	}
	waitOp(t, cl, id, 60*time.Second, func(o *pb.Operation) bool { return o.Stages[0].Steps[0].State != "pending" })
	victim.Kill()
	paused := waitOp(t, cl, id, 90*time.Second, func(o *pb.Operation) bool { return o.State != "running" })
	if paused.State != "paused" || !strings.Contains(paused.Message, "node query-2 is dead") || !strings.Contains(paused.Message, "dhctl upgrade resume") {
		t.Fatalf("upgrade %s: %s", paused.State, paused.Message)
	}
	// Resumed at once, with the node still dead: the step on it is tried
	// again and the upgrade pauses again (not the first pause, which a
	// replica that has not applied the resume yet still shows).
	if out, err := u.Ctl(ctx, "upgrade", "resume"); err != nil {
		t.Fatalf("dhctl upgrade resume: %v\n%s", err, out)
	}
	again := waitOp(t, cl, id, 60*time.Second, func(o *pb.Operation) bool {
		return o.State == "paused" && attemptsOn(o, "query-2") > attemptsOn(paused, "query-2")
	})
	if !strings.Contains(again.Message, "node query-2 is dead") {
		t.Fatalf("paused again: %s", again.Message)
	}
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	// Every coordinator must see it back: the leader, which runs the
	// upgrade, may be the last to hear.
	for i := range u.APIAddrs {
		ci, closeCi, err := u.Client(i)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, err := ci.Status(ctx, &pb.StatusRequest{Node: "query-2"})
			if err == nil && len(st.Cluster.Nodes) == 1 && st.Cluster.Nodes[0].State == "alive" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("coordinator %d: query-2 not alive again: %v %v", i, st, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		closeCi()
	}
	if out, err := u.Ctl(ctx, "upgrade", "resume", id); err != nil {
		t.Fatalf("dhctl upgrade resume: %v\n%s", err, out)
	}
	// Not the second pause either, which a replica that has not applied
	// this resume yet still shows.
	done := waitOp(t, cl, id, 90*time.Second, func(o *pb.Operation) bool {
		return o.State == "done" || o.State == "failed" || o.State == "aborted" || o.State == "paused" && attemptsOn(o, "query-2") > attemptsOn(again, "query-2")
	})
	if done.State != "done" {
		t.Fatalf("upgrade %s: %s", done.State, done.Message)
	}
	for _, n := range classicNodes {
		if got := u.installs(n.Name); !slices.Equal(got, []string{"2.0"}) {
			t.Errorf("%s ran the install command for %v, want once for 2.0", n.Name, got)
		}
	}
	u.checkVersions(t, map[string]string{"infra": "2.0", "query-1": "2.0", "query-2": "2.0", "merge-1": "2.0"})
}

// attemptsOn counts the attempts of the operation's steps on node.
func attemptsOn(op *pb.Operation, node string) int32 {
	var n int32
	for _, st := range op.Stages {
		for _, s := range st.Steps {
			if s.Node == node {
				n += s.Attempts
			}
		}
	}
	return n
}
