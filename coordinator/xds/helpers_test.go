package xds

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/dhvisor/dhvisor/internal/config"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Services the tests route to.
const (
	webAPI     = "web_api_service"
	auth       = "authentication_server"
	controller = "iris_controller"
	aclWriter  = "db_acl_write_server"
)

// clusterModel is a small Deephaven cluster: an infra node, two query
// nodes with a worker each, and two extra routes.
func clusterModel() Model {
	return Model{
		// The routes of Deephaven's Envoy guide, as roles/services.yaml
		// has them.
		Services: []Service{
			{Name: webAPI, Routes: []string{"/iriside", "/iris/"}, Default: true, Endpoints: []Endpoint{{Node: "infra", Host: "10.0.0.1", Port: 8123}}},
			{Name: auth, HTTP2: true, TLS: true, Routes: []string{"/io.deephaven.proto.auth.grpc.AuthApi/"}, Endpoints: []Endpoint{
				{Node: "query2", Host: "query2.example.com", Port: 9031},
				{Node: "infra", Host: "infra.example.com", Port: 9031},
			}},
			{Name: controller, HTTP2: true, Routes: []string{"/io.deephaven.proto.controller.grpc.ControllerApi/"}, Endpoints: []Endpoint{{Node: "infra", Host: "10.0.0.1", Port: 20126}}},
			{Name: "configuration_server", HTTP2: true, TLS: true},
			{Name: aclWriter, Routes: []string{"/acl/"}}, // no healthy instance
		},
		Workers: []Worker{
			{Name: "worker_2", Prefix: "/worker/q2", Host: "10.0.0.3", Port: 24002, Kind: "Core+", Nonce: "n2", Node: "query2", Dispatcher: "db_query_server", HTTP2: true},
			{Name: "worker_1", Prefix: "/worker/q1", Host: "10.0.0.2", Port: 24001, Kind: "Core+", Nonce: "n1", Node: "query1", Dispatcher: "db_query_server", HTTP2: true},
		},
		ExtraRoutes: []config.ExtraRoute{
			{Name: "grafana", Host: "grafana.example.com", Port: 443, Prefix: "/grafana", PrefixRewrite: "/", TLS: true, Origin: "a:1"},
			{Name: "docs", Host: "10.0.0.9", Port: 80, Prefix: "/docs/api/", PrefixRewrite: "/api/", ExactPrefix: true, Origin: "a:2"},
		},
	}
}

// importedModel is clusterModel with the workers a coordinator imported
// from Deephaven's configuration server (coordinator/upstream): its
// prefixes as Deephaven makes them, byte for byte, under the set named by
// the upstream's address and dispatcher configuration_server.
func importedModel() Model {
	m := clusterModel()
	m.Workers = append(m.Workers,
		Worker{Name: "q1-a3f9", Prefix: "/worker/Core+ q1:24011 a3f9", Host: "10.0.0.2", Port: 24011, Node: "10.0.0.5:8124", Dispatcher: "configuration_server", HTTP2: true},
		Worker{Name: "dh_77e0c1", Prefix: "77e0c1", Host: "10.0.0.3", Port: 24012, Node: "10.0.0.5:8124", Dispatcher: "configuration_server", TLS: true},
	)
	slices.SortFunc(m.Workers, func(a, b Worker) int { return strings.Compare(a.Name, b.Name) })
	return m
}

// scaleModel has n workers behind ten dispatchers, with the usual services.
func scaleModel(n int) Model {
	m := clusterModel()
	m.Workers = make([]Worker, n)
	for i := range m.Workers {
		node := fmt.Sprintf("query%d", i%10)
		m.Workers[i] = Worker{
			Name: fmt.Sprintf("worker_%d", i), Prefix: fmt.Sprintf("/worker/%d", i),
			Host: fmt.Sprintf("10.1.%d.%d", i/250, i%250), Port: uint32(20000 + i%10000),
			Kind: "Core+", Nonce: fmt.Sprint(i), Node: node, Dispatcher: "db_query_server", HTTP2: true,
		}
	}
	return m
}
