package gossip

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newOffline returns a Gossip that is not started: its delegate can be fed
// messages directly.
func newOffline(t *testing.T, name string) (*Gossip, *delegate) {
	t.Helper()
	g, err := New(Config{NodeName: name, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return g, &delegate{g: g}
}

// (b) Stale news never overwrites fresh, whether it comes by gossip or
// push-pull, and only news is relayed.
func TestVersionOrdering(t *testing.T) {
	list := func(v uint64, pid int32) *nodeState {
		return &nodeState{Name: "peer", Version: v, Services: []ServiceHealth{svc("db_query_server", "OK", pid)}}
	}
	type step struct {
		via     string // "gossip" or "pushpull"
		version uint64
		pid     int32
	}
	tests := []struct {
		name    string
		steps   []step
		wantVer uint64
		wantPID int32
	}{
		{"newer replaces", []step{{"gossip", 10, 1}, {"gossip", 11, 2}}, 11, 2},
		{"older ignored", []step{{"gossip", 11, 2}, {"gossip", 10, 1}}, 11, 2},
		{"equal ignored", []step{{"gossip", 11, 2}, {"gossip", 11, 3}}, 11, 2},
		{"old push-pull ignored", []step{{"gossip", 11, 2}, {"pushpull", 10, 1}}, 11, 2},
		{"newer push-pull applies", []step{{"gossip", 10, 1}, {"pushpull", 12, 3}}, 12, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, d := newOffline(t, "me")
			for _, s := range tc.steps {
				if s.via == "gossip" {
					d.NotifyMsg(encodeNode(list(s.version, s.pid)))
				} else {
					d.MergeRemoteState(encodeFull([]peerState{{nodeState: *list(s.version, s.pid), Addr: "10.0.0.9:7946"}}), false)
				}
			}
			v, _ := viewOf(g, "peer")
			if v.Version != tc.wantVer || v.Services[0].PID != tc.wantPID {
				t.Errorf("view version %d pid %d, want %d %d", v.Version, v.Services[0].PID, tc.wantVer, tc.wantPID)
			}
			// News is relayed; a newer relay of one node replaces the older.
			if n := waiting(g.queue); n != 1 {
				t.Errorf("queued %d broadcasts, want 1", n)
			}
		})
	}
}

// Local versions only grow, and someone holding a newer version of our own
// list (our clock went back) makes us republish above it.
func TestLocalVersions(t *testing.T) {
	g, d := newOffline(t, "me")
	g.SetLocal([]ServiceHealth{svc("a", "OK", 1)})
	v1, _ := viewOf(g, "me")
	g.SetLocal([]ServiceHealth{svc("a", "OK", 2)})
	v2, _ := viewOf(g, "me")
	if v2.Version <= v1.Version {
		t.Fatalf("versions %d then %d", v1.Version, v2.Version)
	}
	if now := uint64(time.Now().UnixMilli()) << 16; v2.Version > now+1<<16 || v2.Version < now-10_000<<16 {
		t.Errorf("version %d not clock based (now %d)", v2.Version, now)
	}
	future := v2.Version + 1<<30
	d.NotifyMsg(encodeNode(&nodeState{Name: "me", Version: future, Services: []ServiceHealth{svc("stale", "OK", 9)}}))
	v3, _ := viewOf(g, "me")
	if v3.Version <= future || v3.Services[0].Name != "a" {
		t.Errorf("after seeing our list at %d: version %d services %+v", future, v3.Version, v3.Services)
	}
}

// Push-pull teaches a late joiner about nodes that died before it joined,
// but not about nodes already past ForgetAfter.
func TestPushPullCarriesDeadNodes(t *testing.T) {
	g, d := newOffline(t, "me")
	old := time.Now().Add(-48 * time.Hour)
	d.MergeRemoteState(encodeFull([]peerState{
		{nodeState: nodeState{Name: "gone", Version: 3, Services: []ServiceHealth{svc("s", "OK", 1)}}, Liveness: livenessDead, Since: time.Now().Add(-time.Minute), Addr: "10.0.0.3:7946"},
		{nodeState: nodeState{Name: "ancient", Version: 3}, Liveness: livenessLeft, Since: old},
	}), true)
	v := g.View()
	if len(v) != 1 || v[0].Name != "gone" || v[0].State != NodeDead || v[0].Services[0].State != ServiceUnknown || v[0].Addr != "10.0.0.3:7946" {
		t.Errorf("view = %+v", v)
	}
}

func TestSubscribe(t *testing.T) {
	g, d := newOffline(t, "me")
	ch, cancel := g.Subscribe()
	for i := range 5 { // coalesced: many changes, at most one pending
		d.NotifyMsg(encodeNode(&nodeState{Name: "p", Version: uint64(i + 1)}))
	}
	select {
	case <-ch:
	default:
		t.Fatal("no notification")
	}
	select {
	case <-ch:
		t.Fatal("notifications not coalesced")
	default:
	}
	cancel()
	if _, ok := <-ch; ok {
		t.Error("channel not closed by cancel")
	}
	cancel() // idempotent
}

func TestLogWriter(t *testing.T) {
	g, _ := newOffline(t, "me")
	d := &delegate{g: g}
	d.NotifyMsg(encodeNode(&nodeState{Name: "peer", Version: 1}))
	w := &logWriter{g: g}
	_, _ = w.Write([]byte("[INFO] memberlist: Suspect peer has failed, no acks received\n"))
	if v, _ := viewOf(g, "peer"); v.State != NodeSuspect {
		t.Errorf("state = %s, want suspect", v.State)
	}
	d.NotifyPingComplete(&memberlist.Node{Name: "peer"}, 0, nil)
	if v, _ := viewOf(g, "peer"); v.State != NodeAlive {
		t.Errorf("state after ack = %s, want alive", v.State)
	}
	for line, want := range map[string]bool{
		"memberlist: failed to receive: no installed keys could decrypt the message from=1.2.3.4:5": true,
		"memberlist: Decrypt packet failed: No installed keys could decrypt the message 1.2.3.4:5":  true,
		"memberlist: failed to join 1.2.3.4:5: no installed keys could decrypt the message":         false,
	} {
		if got := incomingKeyMismatch(line); got != want {
			t.Errorf("incomingKeyMismatch(%q) = %v", line, got)
		}
	}
	for _, tc := range []struct {
		line  string
		level slog.Level
	}{
		{"[DEBUG] memberlist: x", slog.LevelDebug},
		{"[WARN] memberlist: x", slog.LevelWarn},
		{"[ERR] memberlist: x", slog.LevelError},
		{"Err: Could not set the deadline", slog.LevelWarn},
		{"plain", slog.LevelInfo},
	} {
		if lvl, _ := parseMemberlistLine(tc.line); lvl != tc.level {
			t.Errorf("%q: level %v, want %v", tc.line, lvl, tc.level)
		}
	}
}
