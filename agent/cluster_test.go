package agent

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/dhvisor/dhvisor/internal/gossip"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func svc(name, state string) gossip.ServiceHealth {
	return gossip.ServiceHealth{Name: name, State: state}
}

func TestGossipViewServiceOK(t *testing.T) {
	for _, tc := range []struct {
		name     string
		view     []gossip.NodeView
		wantNode string
		wantOK   bool
	}{
		{"nowhere", []gossip.NodeView{{Name: "q1", State: gossip.NodeAlive, Services: []gossip.ServiceHealth{svc("db_query_server", "OK")}}}, "", false},
		{"OK on a live node", []gossip.NodeView{
			{Name: "infra-2", State: gossip.NodeAlive, Services: []gossip.ServiceHealth{svc("configuration_server", "Initializing")}},
			{Name: "infra-1", State: gossip.NodeSuspect, Services: []gossip.ServiceHealth{svc("configuration_server", "OK")}},
		}, "infra-1", true},
		{"not OK yet: the live node that has it", []gossip.NodeView{
			{Name: "infra-0", State: gossip.NodeDead, Services: []gossip.ServiceHealth{svc("configuration_server", gossip.ServiceUnknown)}, LastKnown: []gossip.ServiceHealth{svc("configuration_server", "OK")}},
			{Name: "infra-1", State: gossip.NodeAlive, Services: []gossip.ServiceHealth{svc("configuration_server", "Waiting")}},
		}, "infra-1", false},
		{"a dead node's OK does not count", []gossip.NodeView{
			{Name: "infra-1", State: gossip.NodeDead, Services: []gossip.ServiceHealth{svc("configuration_server", gossip.ServiceUnknown)}, LastKnown: []gossip.ServiceHealth{svc("configuration_server", "OK")}},
		}, "infra-1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node, ok := serviceOK(tc.view, "configuration_server")
			if node != tc.wantNode || ok != tc.wantOK {
				t.Errorf("serviceOK = %q, %v; want %q, %v", node, ok, tc.wantNode, tc.wantOK)
			}
		})
	}
}

func TestGossipViewNotInCluster(t *testing.T) {
	const self, a, b = "10.0.0.3:7946", "10.0.0.1:7946", "10.0.0.2:7946"
	heard := func(name, addr string, svcs ...gossip.ServiceHealth) gossip.NodeView {
		return gossip.NodeView{Name: name, Addr: addr, State: gossip.NodeAlive, Version: 7, Services: svcs}
	}
	for _, tc := range []struct {
		name  string
		view  []gossip.NodeView
		seeds []string
		want  bool
	}{
		{"a single node seeding itself", []gossip.NodeView{heard("solo", self)}, []string{self}, true},
		{"no seeds: only this node to go by", nil, nil, true},
		{"every seed heard, none runs it", []gossip.NodeView{heard("n1", a), heard("n2", b, svc("tailer1", "OK"))}, []string{a, b, self}, true},
		{"a seed not heard yet", []gossip.NodeView{heard("n1", a)}, []string{a, b}, false},
		{"a seed joined but sent no list yet", []gossip.NodeView{heard("n1", a), {Name: "n2", Addr: b, State: gossip.NodeAlive}}, []string{a, b}, false},
		{"a dead seed", []gossip.NodeView{heard("n1", a), {Name: "n2", Addr: b, State: gossip.NodeDead, Version: 3}}, []string{a, b}, false},
		{"some node runs it", []gossip.NodeView{heard("n1", a, svc("configuration_server", "Stopped"))}, []string{a}, false},
		{"a dead node ran it", []gossip.NodeView{heard("n1", a), {Name: "n2", State: gossip.NodeDead, LastKnown: []gossip.ServiceHealth{svc("configuration_server", "OK")}}}, []string{a}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := notInCluster(tc.view, self, tc.seeds, "configuration_server"); got != tc.want {
				t.Errorf("notInCluster = %v, want %v", got, tc.want)
			}
		})
	}
}
