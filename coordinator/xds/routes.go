package xds

import (
	"fmt"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
)

// RouteView is one route of rds_config as Envoy matches it, with the
// endpoints its cluster has.
type RouteView struct {
	Prefix        string // path prefix; empty when Path is set
	Path          string // exact path
	Header        string // header that must also match, if any
	HeaderValue   string // its exact value
	PrefixRewrite string
	Cluster       string
	Endpoints     []string // host:port
}

// Match is the route's match for people, e.g. "prefix /iris/" or
// "prefix / header envoy-prefix=/worker/w1".
func (r RouteView) Match() string {
	var b strings.Builder
	if r.Path != "" {
		b.WriteString("path " + r.Path)
	} else {
		b.WriteString("prefix " + r.Prefix)
	}
	if r.Header != "" {
		b.WriteString(" header " + r.Header + "=" + r.HeaderValue)
	}
	return b.String()
}

// Routes is the route table clients of m get, first match first.
func Routes(m Model) ([]RouteView, error) {
	t, err := new(builder).table(canonical(m))
	if err != nil {
		return nil, err
	}
	return t.views(), nil
}

// views reads the routes back from the resources themselves, so that what
// they show is what Envoy gets.
func (t *table) views() []RouteView {
	endpoints := map[string][]string{}
	for _, e := range t.clas {
		cla := &endpoint.ClusterLoadAssignment{}
		fromWire(e, cla)
		endpoints[cla.GetClusterName()] = hostPorts(cla)
	}
	for _, e := range t.extraClusters {
		cla := e.res.(*cluster.Cluster).GetLoadAssignment()
		endpoints[cla.GetClusterName()] = hostPorts(cla)
	}
	out := make([]RouteView, len(t.routes))
	for i, e := range t.routes {
		r := &route.Route{}
		fromWire(e, r)
		a := r.GetRoute()
		v := RouteView{
			Prefix:        r.GetMatch().GetPrefix(),
			Path:          r.GetMatch().GetPath(),
			PrefixRewrite: a.GetPrefixRewrite(),
			Cluster:       a.GetCluster(),
			Endpoints:     endpoints[a.GetCluster()],
		}
		if hs := r.GetMatch().GetHeaders(); len(hs) > 0 {
			v.Header, v.HeaderValue = hs[0].GetName(), hs[0].GetStringMatch().GetExact()
		}
		out[i] = v
	}
	return out
}

// fromWire reads m back from the bytes this package marshalled it to: an
// error would be a bug here, not bad input.
func fromWire(e entry, m proto.Message) {
	if err := proto.Unmarshal(e.wire.ProtoReflect().GetUnknown(), m); err != nil {
		panic(fmt.Sprintf("xds: %s: reading back what was marshalled: %v", e.name, err))
	}
}

func hostPorts(cla *endpoint.ClusterLoadAssignment) []string {
	var out []string
	for _, loc := range cla.GetEndpoints() {
		for _, ep := range loc.GetLbEndpoints() {
			sa := ep.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, hostPort(sa.GetAddress(), sa.GetPortValue()))
		}
	}
	return out
}
