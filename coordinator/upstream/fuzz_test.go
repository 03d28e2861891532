package upstream

import (
	"testing"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// FuzzResponses feeds what a configuration server could send, as a CDS and
// an RDS response, through decoding and Extract: no input may panic the
// leader.
func FuzzResponses(f *testing.F) {
	c := staticCluster("dh_1", "query-1", 24001)
	rc := &route.RouteConfiguration{Name: "rds_config", VirtualHosts: []*route.VirtualHost{{Name: "vh", Domains: []string{"*"}, Routes: []*route.Route{
		onHeader(exact("envoy-prefix", "/worker/w1"), "dh_1"), toCluster("/worker/w1/", "dh_1"), toCluster("/", "dh_1"),
	}}}}
	for _, seed := range [][2]proto.Message{{c, rc}} {
		ca, _ := anypb.New(seed[0])
		ra, _ := anypb.New(seed[1])
		cb, _ := proto.Marshal(&discovery.DiscoveryResponse{TypeUrl: resource.ClusterType, Resources: []*anypb.Any{ca}})
		rb, _ := proto.Marshal(&discovery.DiscoveryResponse{TypeUrl: resource.RouteType, Resources: []*anypb.Any{ra}})
		f.Add(cb, rb)
	}
	f.Fuzz(func(t *testing.T, clusters, routes []byte) {
		var cr, rr discovery.DiscoveryResponse
		if proto.Unmarshal(clusters, &cr) != nil || proto.Unmarshal(routes, &rr) != nil {
			return
		}
		c, err := decode(resource.ClusterType, &cr)
		if err != nil {
			return
		}
		r, err := decode(resource.RouteType, &rr)
		if err != nil {
			return
		}
		ws, _ := Extract(Resources{Clusters: c.Clusters, Routes: r.Routes})
		for _, w := range ws {
			if w.Name == "" || w.EnvoyPrefix == "" || w.Port < 1 || w.Port > 65535 {
				t.Fatalf("imported %v", w)
			}
		}
	})
}
