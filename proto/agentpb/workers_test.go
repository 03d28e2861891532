package agentpb

import (
	"strings"
	"testing"
)

func TestRegisterWorkersNormalize(t *testing.T) {
	w := func(name string, port int32) *Worker { return &Worker{Name: name, Port: port} }
	tests := []struct {
		name string
		req  *RegisterWorkersRequest
		err  string // substring; "" = valid
	}{
		{"defaults", &RegisterWorkersRequest{Node: "q1", Dispatcher: "db_query_server", Workers: []*Worker{w("w1", 24000)}}, ""},
		{"empty set is valid", &RegisterWorkersRequest{Node: "q1", Dispatcher: "db_query_server"}, ""},
		{"bad dispatcher", &RegisterWorkersRequest{Node: "q1", Dispatcher: "db query"}, "dispatcher:"},
		{"no node", &RegisterWorkersRequest{Dispatcher: "d"}, `node: "" is not a node name`},
		{"a node with a colon", &RegisterWorkersRequest{Node: "q:1", Dispatcher: "d"}, "node:"},
		{"lease too short", &RegisterWorkersRequest{Node: "q1", Dispatcher: "d", LeaseTtlMs: 10}, "lease_ttl_ms: 10 is outside"},
		{"lease too long", &RegisterWorkersRequest{Node: "q1", Dispatcher: "d", LeaseTtlMs: 3600_000}, "lease_ttl_ms"},
		{"no name", &RegisterWorkersRequest{Node: "q1", Dispatcher: "d", Workers: []*Worker{w("", 1)}}, "workers[0].name"},
		{"name with a slash", &RegisterWorkersRequest{Node: "q1", Dispatcher: "d", Workers: []*Worker{w("a/b", 1)}}, "workers[0].name"},
		{"duplicate name", &RegisterWorkersRequest{Node: "q1", Dispatcher: "d", Workers: []*Worker{w("a", 1), w("a", 2)}}, `workers[1].name: "a" is also workers[0]`},
		{"port zero", &RegisterWorkersRequest{Node: "q1", Dispatcher: "d", Workers: []*Worker{w("a", 0)}}, "workers[0].port: 0 is not a port"},
		{"port too big", &RegisterWorkersRequest{Node: "q1", Dispatcher: "d", Workers: []*Worker{w("a", 1), w("b", 70000)}}, "workers[1].port: 70000"},
		{"bad host", &RegisterWorkersRequest{Node: "q1", Dispatcher: "d", Workers: []*Worker{{Name: "a", Port: 1, Host: "bad host"}}}, "workers[0].host"},
		{"prefix without slash", &RegisterWorkersRequest{Node: "q1", Dispatcher: "d", Workers: []*Worker{{Name: "a", Port: 1, EnvoyPrefix: "worker/a"}}}, "workers[0].envoy_prefix"},
		{"duplicate prefix", &RegisterWorkersRequest{Node: "q1", Dispatcher: "d", Workers: []*Worker{{Name: "a", Port: 1, EnvoyPrefix: "/x"}, {Name: "b", Port: 2, EnvoyPrefix: "/x"}}}, "workers[1].envoy_prefix"},
		{"bad protocol", &RegisterWorkersRequest{Node: "q1", Dispatcher: "d", Workers: []*Worker{{Name: "a", Port: 1, Protocol: "grpc"}}}, "workers[0].protocol"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.req.Normalize()
			if (err != nil) != (tt.err != "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("Normalize() = %v, want %q", err, tt.err)
			}
		})
	}
	r := &RegisterWorkersRequest{Node: "q1", Dispatcher: "db_query_server", Workers: []*Worker{w("w2", 24002), w("w1", 24000)}}
	if err := r.Normalize(); err != nil {
		t.Fatal(err)
	}
	if r.Workers[0].Name != "w1" {
		t.Errorf("workers not sorted by name: %v", r.Workers)
	}
	if r.LeaseTtlMs != DefaultWorkerLease.Milliseconds() || r.Workers[0].EnvoyPrefix != "/worker/w1:db_query_server:q1" || r.Workers[0].Protocol != "http2" {
		t.Errorf("defaults not applied: %v", r)
	}
}
