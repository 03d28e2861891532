package ops

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dhvisor/dhvisor/internal/config"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// shippedNode builds a node from the roles shipped in roles/, so the plans
// below are derived from the real depends_on data.
func shippedNode(t *testing.T, name string, roles ...string) *pb.Node {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "agent.yaml")
	data := fmt.Sprintf("node: %s\nroles: [%s]\n", name, strings.Join(roles, ", "))
	if err := os.WriteFile(file, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := config.LoadAgent(file)
	if err != nil {
		t.Fatal(err)
	}
	out := &pb.Node{Name: name, Roles: roles, State: "alive"}
	for _, s := range n.Names() {
		out.Services = append(out.Services, &pb.ServiceDef{Name: s, DependsOn: n.Services[s].DependsOn})
	}
	return out
}

func classicCluster(t *testing.T) map[string]*pb.Node {
	return map[string]*pb.Node{
		"infra":   shippedNode(t, "infra", "infra"),
		"query-1": shippedNode(t, "query-1", "query"),
		"query-2": shippedNode(t, "query-2", "query"),
		"merge-1": shippedNode(t, "merge-1", "batch"),
	}
}

// render prints a plan one stage per line: "node:svc,svc node:svc".
func render(op *pb.Operation) string {
	var lines []string
	for _, st := range op.Stages {
		var parts []string
		for _, s := range st.Steps {
			parts = append(parts, s.Node+":"+strings.Join(s.Services, ","))
		}
		lines = append(lines, strings.Join(parts, " "))
	}
	return strings.Join(lines, "\n")
}

func TestPlanClassicCluster(t *testing.T) {
	nodes := classicCluster(t)
	infraRest := "infra:db_acl_write_server,db_tdcp,log_aggregator_service,tailer1,iris_controller,web_api_service"
	// The dispatchers need their node's log aggregator; a query node runs
	// both dispatchers.
	queryNodes := "merge-1:db_tdcp,log_aggregator_service,tailer1,db_merge_server " +
		"query-1:db_tdcp,log_aggregator_service,tailer1,db_merge_server,db_query_server " +
		"query-2:db_tdcp,log_aggregator_service,tailer1,db_merge_server,db_query_server"
	cases := []struct {
		name string
		req  *pb.OpRequest
		want string
		skip []string
	}{
		{
			name: "restart all: Deephaven's documented order",
			req:  &pb.OpRequest{Action: ActRestart, Services: []string{"all"}},
			want: "infra:configuration_server\ninfra:authentication_server\n" + queryNodes + "\n" + infraRest,
		},
		{
			name: "down: the same walk backwards",
			req:  &pb.OpRequest{Action: ActStop},
			want: "infra:web_api_service,iris_controller,tailer1,log_aggregator_service,db_tdcp,db_acl_write_server\n" +
				"merge-1:db_merge_server,tailer1,log_aggregator_service,db_tdcp " +
				"query-1:db_query_server,db_merge_server,tailer1,log_aggregator_service,db_tdcp " +
				"query-2:db_query_server,db_merge_server,tailer1,log_aggregator_service,db_tdcp\n" +
				"infra:authentication_server\ninfra:configuration_server",
		},
		{
			name: "weekly restart: except the controller and the dispatchers",
			req:  &pb.OpRequest{Action: ActRestart, Except: []string{"iris_controller", "db_query_server", "db_merge_server"}},
			want: "infra:configuration_server\ninfra:authentication_server\n" +
				"merge-1:db_tdcp,log_aggregator_service,tailer1 query-1:db_tdcp,log_aggregator_service,tailer1 query-2:db_tdcp,log_aggregator_service,tailer1\n" +
				"infra:db_acl_write_server,db_tdcp,log_aggregator_service,tailer1,web_api_service",
		},
		{
			name: "one service everywhere, one node at a time",
			req:  &pb.OpRequest{Action: ActRestart, Services: []string{"db_tdcp"}, BatchSize: 1},
			want: "merge-1:db_tdcp\nquery-1:db_tdcp\nquery-2:db_tdcp\ninfra:db_tdcp",
		},
		{
			name: "one node",
			req:  &pb.OpRequest{Action: ActRestart, Nodes: []string{"query-2"}},
			want: "query-2:db_tdcp,log_aggregator_service,tailer1,db_merge_server,db_query_server",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			op, err := Plan(tc.req, nodes, nil, DefaultDefaults)
			if err != nil {
				t.Fatal(err)
			}
			if got := render(op); got != tc.want {
				t.Errorf("plan:\n%s\nwant:\n%s", got, tc.want)
			}
			checkValidOrder(t, nodes, op)
		})
	}
}

// checkValidOrder: every selected instance comes in a later stage than each
// of its dependencies (or its dependants, when stopping), and at most once.
func checkValidOrder(t *testing.T, nodes map[string]*pb.Node, op *pb.Operation) {
	t.Helper()
	g, _ := instanceGraph(nodes)
	stageOf := map[string]int{}
	for i, st := range op.Stages {
		for _, s := range st.Steps {
			for _, svc := range s.Services {
				id := s.Node + "/" + svc
				if _, dup := stageOf[id]; dup {
					t.Errorf("%s planned twice", id)
				}
				stageOf[id] = i
			}
		}
	}
	for id, i := range stageOf {
		for _, d := range g.DependsOn(id) {
			j, ok := stageOf[d]
			if !ok || j == i && strings.Split(d, "/")[0] == strings.Split(id, "/")[0] {
				continue // not selected, or ordered by the agent within the node's step
			}
			if op.Request.Action != ActStop && j >= i {
				t.Errorf("%s (stage %d) does not come after its dependency %s (stage %d)", id, i+1, d, j+1)
			}
			if op.Request.Action == ActStop && j <= i {
				t.Errorf("%s (stage %d) is not stopped before its dependency %s (stage %d)", id, i+1, d, j+1)
			}
		}
	}
}

func TestPlanSkips(t *testing.T) {
	nodes := classicCluster(t)
	nodes["query-2"].State = "dead"
	desired := map[string]*pb.Desired{"query-1/db_tdcp": {Node: "query-1", Service: "db_tdcp", Stopped: true, By: "operator:alice"}}
	op, err := Plan(&pb.OpRequest{Action: ActRestart}, nodes, desired, DefaultDefaults)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"query-2: node is dead", "query-1/db_tdcp: stopped by operator:alice; name it to start it"}
	if strings.Join(op.Skipped, "|") != strings.Join(want, "|") {
		t.Errorf("skipped %q, want %q", op.Skipped, want)
	}
	if strings.Contains(render(op), "query-2") || strings.Contains(render(op), "query-1:db_query_server,db_tdcp") {
		t.Errorf("plan acts on a skipped instance:\n%s", render(op))
	}
	// Named explicitly, the stopped service is started.
	op, err = Plan(&pb.OpRequest{Action: ActStart, Services: []string{"db_tdcp"}, Nodes: []string{"query-1"}}, nodes, desired, DefaultDefaults)
	if err != nil || render(op) != "query-1:db_tdcp" {
		t.Errorf("named start: %v\n%s", err, render(op))
	}
}

func TestPlanRejects(t *testing.T) {
	nodes := classicCluster(t)
	cases := []struct {
		req  *pb.OpRequest
		want string
	}{
		{&pb.OpRequest{Action: "bounce"}, `action: "bounce" is not one of restart, start, stop`},
		{&pb.OpRequest{Action: ActRestart, Nodes: []string{"nope"}}, `nodes: unknown node "nope"`},
		{&pb.OpRequest{Action: ActRestart, Services: []string{"db_nope"}}, `services: no node runs a service "db_nope"`},
		{&pb.OpRequest{Action: ActRestart, Except: []string{"x"}}, `except: no node runs a service "x"`},
		{&pb.OpRequest{Action: ActRestart, OnFailure: "retry"}, `on_failure: "retry" is not pause or abort`},
		{&pb.OpRequest{Action: ActRestart, BatchSize: -1}, "batch_size: must not be negative"},
		{&pb.OpRequest{Action: ActRestart, MinHealthyTimeMs: 60000, HealthyDeadlineMs: 1000}, "must be shorter than healthy_deadline"},
	}
	for _, tc := range cases {
		_, err := Plan(tc.req, nodes, nil, DefaultDefaults)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error with %q", tc.req, err, tc.want)
		}
	}
}
