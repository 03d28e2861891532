package gossip

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// (a) A service list set on one node shows on every other within 1 s.
func TestConvergeWithinOneSecond(t *testing.T) {
	nodes := startCluster(t, "conv", 5)
	src := nodes[2]
	for round := range 3 {
		list := []ServiceHealth{
			svc("configuration_server", "OK", 100+int32(round)),
			svc("authentication_server", "Connection failed", 0),
			{Name: "db_query_server", State: "Restarting", Restarts: int32(round), Message: strings.Repeat("x", 40)},
		}
		start := time.Now()
		src.SetLocal(list)
		want, _ := viewOf(src.Gossip, src.name)
		waitFor(t, time.Second, func() (bool, string) {
			for _, n := range nodes {
				v, ok := viewOf(n.Gossip, src.name)
				if !ok || v.Version != want.Version {
					return false, fmt.Sprintf("%s has version %d of %s, want %d", n.name, v.Version, src.name, want.Version)
				}
				if !equalServices(v.Services, want.Services) {
					return false, fmt.Sprintf("%s has services %+v", n.name, v.Services)
				}
			}
			return true, ""
		})
		t.Logf("round %d: converged on 5 nodes in %v", round, time.Since(start))
	}
	// Meta travels with membership.
	v, _ := viewOf(nodes[0].Gossip, nodes[4].name)
	if v.Meta.APIAddr != "127.0.0.1:9000" || len(v.Meta.Roles) != 1 || v.Meta.Roles[0] != "query" {
		t.Errorf("meta = %+v", v.Meta)
	}
	// Meta set later (an upgrade changed the versions) reaches the others.
	m := nodes[4].Meta()
	m.PackageVersion = "illumon-db 2.0-1"
	if err := nodes[4].SetMeta(m); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, func() (bool, string) {
		for _, n := range nodes {
			if v, _ := viewOf(n.Gossip, nodes[4].name); v.Meta.PackageVersion != m.PackageVersion || v.Meta.APIAddr != "127.0.0.1:9000" {
				return false, fmt.Sprintf("%s sees meta %+v", n.name, v.Meta)
			}
		}
		return true, ""
	})
	// An unchanged list is a no-op: no new version.
	before, _ := viewOf(src.Gossip, src.name)
	src.SetLocal(before.Services)
	if after, _ := viewOf(src.Gossip, src.name); after.Version != before.Version {
		t.Errorf("unchanged SetLocal bumped version %d -> %d", before.Version, after.Version)
	}
}

// (c) A crashed node is dead everywhere within a few seconds and its
// services read unknown; a node that leaves reads left.
func TestCrashIsDeadAndLeaveIsLeft(t *testing.T) {
	nodes := startCluster(t, "crash", 5)
	victim, leaver := nodes[4], nodes[3]
	victim.SetLocal([]ServiceHealth{svc("db_query_server", "OK", 42)})
	leaver.SetLocal([]ServiceHealth{svc("web_api_service", "OK", 43)})
	survivors := nodes[:3]
	waitFor(t, time.Second, func() (bool, string) {
		for _, n := range survivors {
			for _, who := range []*node{victim, leaver} {
				if v, _ := viewOf(n.Gossip, who.name); len(v.Services) != 1 {
					return false, n.name + " has no list of " + who.name
				}
			}
		}
		return true, ""
	})

	// Watch every survivor's view until all see the victim dead; record
	// whether any of them reported it suspect on the way.
	start := time.Now()
	if err := victim.Shutdown(); err != nil {
		t.Fatal(err)
	}
	sawSuspect := false
	seenDead := map[string]time.Duration{}
	waitFor(t, 6*time.Second, func() (bool, string) {
		for _, n := range append(survivors, leaver) {
			v, _ := viewOf(n.Gossip, victim.name)
			switch v.State {
			case NodeSuspect:
				sawSuspect = true
			case NodeDead:
				if _, ok := seenDead[n.name]; !ok {
					seenDead[n.name] = time.Since(start)
				}
			}
		}
		return len(seenDead) == 4, fmt.Sprintf("dead seen by %v", seenDead)
	})
	t.Logf("crash detected: %v (suspect observed: %v)", seenDead, sawSuspect)
	if !sawSuspect {
		t.Error("no survivor reported the crashed node suspect before dead")
	}
	for _, n := range survivors {
		v, _ := viewOf(n.Gossip, victim.name)
		if len(v.Services) != 1 || v.Services[0].State != ServiceUnknown || v.Services[0].Name != "db_query_server" {
			t.Errorf("%s: services of dead node = %+v, want db_query_server unknown", n.name, v.Services)
		}
		if len(v.LastKnown) != 1 || v.LastKnown[0].State != "OK" || v.LastKnown[0].PID != 42 {
			t.Errorf("%s: last known = %+v", n.name, v.LastKnown)
		}
	}

	if err := leaver.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, func() (bool, string) {
		for _, n := range survivors {
			if v, _ := viewOf(n.Gossip, leaver.name); v.State != NodeLeft {
				return false, fmt.Sprintf("%s sees %s %s", n.name, leaver.name, v.State)
			}
		}
		return true, ""
	})
	v, _ := viewOf(survivors[0].Gossip, leaver.name)
	if v.Services[0].State != ServiceUnknown || v.LastKnown[0].Name != "web_api_service" {
		t.Errorf("left node services = %+v last known %+v", v.Services, v.LastKnown)
	}
	// And the victim is still dead, not left.
	if v, _ := viewOf(survivors[0].Gossip, victim.name); v.State != NodeDead {
		t.Errorf("victim state = %s", v.State)
	}
}

// A node restarted under its name (same address, new process) replaces
// its dead self, and its new list wins over the old one.
func TestRestartedNodeReplacesDeadOne(t *testing.T) {
	nodes := startCluster(t, "rst", 3)
	old := nodes[2]
	port := func() int {
		a := old.Addr()
		var p int
		_, _ = fmt.Sscanf(a[strings.LastIndexByte(a, ':')+1:], "%d", &p)
		return p
	}()
	old.SetLocal([]ServiceHealth{svc("db_merge_server", "OK", 7)})
	waitFor(t, time.Second, func() (bool, string) {
		v, _ := viewOf(nodes[0].Gossip, old.name)
		return len(v.Services) == 1, "list not seen"
	})
	_ = old.Shutdown()
	waitFor(t, 6*time.Second, func() (bool, string) {
		v, _ := viewOf(nodes[0].Gossip, old.name)
		return v.State == NodeDead, v.State
	})
	// Back, same name and port; before it publishes, its old list must
	// not pass for current.
	back := startNode(t, old.name, withPort(port), withSeeds(nodes[0].Addr()))
	waitFor(t, 3*time.Second, func() (bool, string) {
		v, _ := viewOf(nodes[0].Gossip, old.name)
		return v.State == NodeAlive, v.State
	})
	if v, _ := viewOf(nodes[0].Gossip, old.name); len(v.Services) != 1 || v.Services[0].State != ServiceUnknown {
		t.Errorf("rejoined node before publishing: services %+v, want the old list as unknown", v.Services)
	}
	back.SetLocal([]ServiceHealth{svc("db_merge_server", "Initializing", 8)})
	waitFor(t, time.Second, func() (bool, string) {
		v, _ := viewOf(nodes[1].Gossip, old.name)
		return len(v.Services) == 1 && v.Services[0].PID == 8 && v.Services[0].State == "Initializing", fmt.Sprintf("%+v", v.Services)
	})
}

// (d) A node whose seed is not up yet keeps retrying and joins when it
// comes up; a node started later catches up on everything by push-pull.
func TestJoinRetryAndLateJoiner(t *testing.T) {
	port := freePort(t)
	early := startNode(t, "early", withSeeds(fmt.Sprintf("127.0.0.1:%d", port)))
	early.SetLocal([]ServiceHealth{svc("configuration_server", "OK", 1)})
	time.Sleep(700 * time.Millisecond) // several failed attempts
	if n := countState(early.View(), NodeAlive); n != 1 {
		t.Fatalf("early sees %d alive before its seed is up", n)
	}
	seed := startNode(t, "seed", withPort(port)) // no seeds of its own
	seed.SetLocal([]ServiceHealth{svc("authentication_server", "OK", 2)})
	waitFor(t, 3*time.Second, func() (bool, string) {
		v, _ := viewOf(seed.Gossip, "early")
		w, _ := viewOf(early.Gossip, "seed")
		return len(v.Services) == 1 && len(w.Services) == 1, "early and seed have not exchanged lists"
	})

	late := startNode(t, "late", withSeeds(early.Addr()))
	waitFor(t, 2*time.Second, func() (bool, string) {
		for _, name := range []string{"early", "seed"} {
			v, ok := viewOf(late.Gossip, name)
			if !ok || v.State != NodeAlive || len(v.Services) != 1 {
				return false, fmt.Sprintf("late's view of %s: %+v", name, v)
			}
		}
		return true, ""
	})
	if !strings.Contains(early.logs.String(), "no seed reachable yet") {
		t.Error("early did not log its failed attempts")
	}
}

// (d') A node that started alone (its seeds listed nobody up) is found
// when the others come up seeding from it, and keeps retrying if they all
// go away.
func TestAloneNodeIsFoundLater(t *testing.T) {
	first := startNode(t, "first")
	second := startNode(t, "second", withSeeds(first.Addr()))
	waitFor(t, 2*time.Second, func() (bool, string) {
		return countState(first.View(), NodeAlive) == 2, "not joined"
	})
	_ = second.Shutdown()
	waitFor(t, 6*time.Second, func() (bool, string) {
		v, _ := viewOf(first.Gossip, "second")
		return v.State == NodeDead, "second is " + v.State
	})
	third := startNode(t, "third", withSeeds(first.Addr()))
	waitFor(t, 2*time.Second, func() (bool, string) {
		v, _ := viewOf(third.Gossip, "first")
		return v.State == NodeAlive, "third did not find first"
	})
}

// (e) A node with the wrong key is refused with a clear log line and does
// not disturb the cluster.
func TestWrongKeyIsRefused(t *testing.T) {
	good, bad := newKey(t), newKey(t)
	nodes := startCluster(t, "enc", 2, withKeys(good))
	nodes[0].SetLocal([]ServiceHealth{svc("iris_controller", "OK", 5)})

	keyFile := writeKeys(t, t.TempDir(), 0o600, b64(bad))
	intruder := startNode(t, "intruder", withKeyFile(keyFile), withSeeds(nodes[0].Addr(), nodes[1].Addr()))
	want := "gossip join failed: the cluster uses a different gossip key (check " + keyFile + ")"
	waitFor(t, 3*time.Second, func() (bool, string) {
		return strings.Contains(intruder.logs.String(), want), "no clear log line yet"
	})
	// The cluster's side says what happened too.
	waitFor(t, time.Second, func() (bool, string) {
		l := nodes[0].logs.String() + nodes[1].logs.String()
		return strings.Contains(l, "wrong gossip key"), "cluster did not log the refused traffic"
	})

	// The cluster keeps its view and keeps working.
	nodes[1].SetLocal([]ServiceHealth{svc("db_dis", "OK", 6)})
	waitFor(t, time.Second, func() (bool, string) {
		v, _ := viewOf(nodes[0].Gossip, nodes[1].name)
		return len(v.Services) == 1, "cluster stopped converging"
	})
	for _, n := range nodes {
		v := n.View()
		if len(v) != 2 || countState(v, NodeAlive) != 2 {
			t.Errorf("%s view = %+v", n.name, v)
		}
	}
	if n := len(intruder.View()); n != 1 {
		t.Errorf("intruder sees %d nodes", n)
	}
}

// (f) Key rotation from three different nodes reaches everyone, traffic
// goes on throughout, and a node restarted with the resulting key file
// joins.
func TestKeyRotation(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	var files []string
	var nodes []*node
	for i := range 3 {
		f := writeKeys(t, t.TempDir(), 0o600, b64(k1))
		files = append(files, f)
		opts := []func(*Config){withKeyFile(f)}
		if i > 0 {
			opts = append(opts, withSeeds(nodes[0].Addr()))
		}
		nodes = append(nodes, startNode(t, fmt.Sprintf("rot-%d", i), opts...))
	}
	waitFor(t, 3*time.Second, func() (bool, string) {
		return countState(nodes[2].View(), NodeAlive) == 3 && countState(nodes[0].View(), NodeAlive) == 3, "not formed"
	})

	// traffic: each step, some node changes its list and all must see it.
	step := 0
	traffic := func() {
		t.Helper()
		step++
		src := nodes[step%3]
		src.SetLocal([]ServiceHealth{svc("tailer1", "OK", int32(step))})
		waitFor(t, 2*time.Second, func() (bool, string) {
			for _, n := range nodes {
				v, _ := viewOf(n.Gossip, src.name)
				if len(v.Services) != 1 || v.Services[0].PID != int32(step) {
					return false, fmt.Sprintf("step %d: %s has %+v from %s", step, n.name, v.Services, src.name)
				}
			}
			return true, ""
		})
	}
	keysEverywhere := func(want ...[]byte) {
		t.Helper()
		var wantB64 []string
		var wantIDs []string
		for _, k := range want {
			wantB64 = append(wantB64, b64(k))
			wantIDs = append(wantIDs, keyIDString(keyID(k)))
		}
		waitFor(t, 3*time.Second, func() (bool, string) {
			for i, n := range nodes {
				if got := n.Keys().List(); strings.Join(got, ",") != strings.Join(wantB64, ",") {
					return false, fmt.Sprintf("%s keys %v", n.name, got)
				}
				ring, err := LoadKeyring(files[i])
				if err != nil {
					return false, err.Error()
				}
				var inFile []string
				for _, k := range ring.GetKeys() {
					inFile = append(inFile, b64(k))
				}
				if strings.Join(inFile, ",") != strings.Join(wantB64, ",") {
					return false, fmt.Sprintf("%s key file %v", n.name, inFile)
				}
				// Every node's view shows every node's key set.
				for _, v := range n.View() {
					if strings.Join(v.KeyIDs, ",") != strings.Join(wantIDs, ",") {
						return false, fmt.Sprintf("%s sees %s with keys %v", n.name, v.Name, v.KeyIDs)
					}
				}
			}
			return true, ""
		})
	}

	traffic()
	if err := nodes[0].Keys().Use(b64(k2)); err == nil {
		t.Fatal("Use of a key not installed succeeded")
	}
	if err := nodes[0].Keys().Install(b64(k2)); err != nil {
		t.Fatal(err)
	}
	keysEverywhere(k1, k2)
	traffic()
	if err := nodes[1].Keys().Use(b64(k2)); err != nil {
		t.Fatal(err)
	}
	keysEverywhere(k2, k1)
	traffic()
	if err := nodes[2].Keys().Remove(b64(k2)); err == nil {
		t.Fatal("Remove of the primary succeeded")
	}
	if err := nodes[2].Keys().Remove(b64(k1)); err != nil {
		t.Fatal(err)
	}
	keysEverywhere(k2)
	traffic()

	// Restart node 2 from its (updated) key file.
	addr := nodes[2].Addr()
	port := 0
	_, _ = fmt.Sscanf(addr[strings.LastIndexByte(addr, ':')+1:], "%d", &port)
	_ = nodes[2].Shutdown()
	nodes[2] = startNode(t, "rot-2", withKeyFile(files[2]), withPort(port), withSeeds(nodes[0].Addr()))
	waitFor(t, 3*time.Second, func() (bool, string) {
		v, _ := viewOf(nodes[0].Gossip, "rot-2")
		return v.State == NodeAlive && countState(nodes[2].View(), NodeAlive) == 3, "restarted node did not rejoin"
	})
	traffic()

	// And a node still holding only the old key cannot get in.
	stale := startNode(t, "stale", withKeyFile(writeKeys(t, t.TempDir(), 0o600, b64(k1))), withSeeds(nodes[0].Addr()))
	waitFor(t, 3*time.Second, func() (bool, string) {
		return strings.Contains(stale.logs.String(), "different gossip key"), "stale key node not refused"
	})
}

// Cancelling Start's context shuts the node down (goleak checks the rest).
func TestContextCancelShutsDown(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	g, err := New(Config{NodeName: "ctx", BindAddr: "127.0.0.1", Timing: testTiming(), Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ch, _ := g.Subscribe()
	cancel()
	timeout := time.After(5 * time.Second)
	for closed := false; !closed; {
		select {
		case _, ok := <-ch: // notifications, then closed by Shutdown
			closed = !ok
		case <-timeout:
			t.Fatal("context cancel did not shut down")
		}
	}
	if err := g.Start(context.Background()); err == nil {
		t.Error("Start after shutdown succeeded")
	}
}
