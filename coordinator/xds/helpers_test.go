package xds

import (
	"fmt"
	"testing"

	"go.uber.org/goleak"

	"github.com/dhvisor/dhvisor/internal/config"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// clusterModel is a small Deephaven cluster: an infra node, two query
// nodes with a worker each, and two extra routes.
func clusterModel() Model {
	return Model{
		Services: []Service{
			{Name: WebAPIService, Endpoints: []Endpoint{{Node: "infra", Host: "10.0.0.1", Port: 8123}}},
			{Name: AuthService, HTTP2: true, TLS: true, Endpoints: []Endpoint{
				{Node: "query2", Host: "query2.example.com", Port: 9031},
				{Node: "infra", Host: "infra.example.com", Port: 9031},
			}},
			{Name: ControllerService, HTTP2: true, Endpoints: []Endpoint{{Node: "infra", Host: "10.0.0.1", Port: 20126}}},
			{Name: "configuration_server", HTTP2: true, TLS: true},
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
