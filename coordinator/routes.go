package coordinator

import (
	"context"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/coordinator/xds"
	"github.com/dhvisor/dhvisor/internal/extraroutes"
	"github.com/dhvisor/dhvisor/internal/gossip"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// routeFeed keeps this replica's xDS resources in step with the replicated
// state (nodes, their services, the workers, the extra routes) and gossip
// health. Every replica runs one: Envoy keeps its routes whichever
// coordinator it talks to.
type routeFeed struct {
	fsm    *fsm.FSM
	gossip *gossip.Gossip
	xds    *xds.Server
	log    *slog.Logger
	// file is coordinator.yaml's extra routes, for the refusal of the
	// last one the leader read; nil when there are none.
	file *routesFile
}

func newRouteFeed(state *fsm.FSM, g *gossip.Gossip, srv *xds.Server, file *routesFile, log *slog.Logger) *routeFeed {
	return &routeFeed{fsm: state, gossip: g, xds: srv, file: file, log: log.With("component", "xds")}
}

// restoreWait bounds how long a restarted replica withholds xDS until its
// state is what it was before: serving the older snapshot state would take
// routes away from Envoy until raft caught up.
const restoreWait = 15 * time.Second

func (f *routeFeed) run(ctx context.Context, restored func(context.Context, time.Duration) bool) {
	if !restored(ctx, restoreWait) {
		if ctx.Err() != nil {
			return
		}
		f.log.Warn("serving xDS from a state raft has not confirmed yet (no quorum?); it may be older than before the restart", "waited", restoreWait)
	}
	var gossipChanged <-chan struct{}
	if f.gossip != nil {
		ch, unsubscribe := f.gossip.Subscribe()
		defer unsubscribe()
		gossipChanged = ch
	}
	expiry := time.NewTimer(time.Hour)
	defer expiry.Stop()
	for {
		changed := f.fsm.Changed()
		m, next := f.build(time.Now())
		if err := f.xds.Update(m); err != nil {
			f.log.Error("xDS resources refused; Envoy keeps the previous ones", "err", err)
		}
		expiry.Reset(time.Hour)
		if !next.IsZero() {
			expiry.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-gossipChanged:
		case <-expiry.C:
		}
	}
}

// dispatcherGone lists the states in which a dispatcher's workers are gone
// with it (Deephaven's workers die with their dispatcher).
var dispatcherGone = map[string]bool{
	"Stopped": true, "Failed": true, "Does not exist": true, "Execution failed": true, "Restarting": true, "Waiting": true, gossip.ServiceUnknown: true,
}

// build is the model as this replica sees it now, and when the next worker
// lease ends (zero if none will).
func (f *routeFeed) build(now time.Time) (xds.Model, time.Time) {
	nodes := f.fsm.Nodes()
	health := map[string]map[string]gossip.ServiceHealth{}
	alive := map[string]bool{}
	if f.gossip != nil {
		for _, v := range f.gossip.View() {
			alive[v.Name] = v.State == gossip.NodeAlive || v.State == gossip.NodeSuspect
			hs := map[string]gossip.ServiceHealth{}
			for _, s := range v.Services {
				hs[s.Name] = s
			}
			health[v.Name] = hs
		}
	} else {
		for name, n := range nodes {
			alive[name] = n.State == gossip.NodeAlive
		}
	}

	var m xds.Model
	services := map[string]*xds.Service{}
	for _, name := range slices.Sorted(maps.Keys(nodes)) {
		n := nodes[name]
		for _, def := range n.Services {
			up := def.Envoy
			if up == nil {
				continue
			}
			svc := services[def.Name]
			if svc == nil {
				svc = &xds.Service{Name: def.Name, TLS: up.Tls, HTTP2: up.Http2, Routes: up.Routes, Default: up.DefaultRoute}
				services[def.Name] = svc
			}
			if alive[name] && health[name][def.Name].State == "OK" {
				svc.Endpoints = append(svc.Endpoints, xds.Endpoint{Node: name, Host: nodeHost(n), Port: uint32(up.Port)})
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(services)) {
		m.Services = append(m.Services, *services[name])
	}

	var next time.Time
	for _, ws := range f.fsm.WorkerSets() {
		expires := time.UnixMilli(ws.LeaseExpiresUnixMs)
		if !now.Before(expires) {
			continue
		}
		// An imported set has no node or dispatcher here to follow: its
		// lease, the upstream grace, is all that ends it.
		if ws.Upstream == "" && !registeredAlive(ws, alive, health, f.gossip != nil) {
			continue
		}
		if next.IsZero() || expires.Before(next) {
			next = expires
		}
		host := nodeHost(nodes[ws.Node])
		for _, w := range ws.Workers {
			h := w.Host
			if h == "" {
				h = host
			}
			m.Workers = append(m.Workers, xds.Worker{
				Name: w.Name, Prefix: w.EnvoyPrefix, Host: h, Port: uint32(w.Port), Kind: w.Kind, Nonce: w.Nonce,
				Node: ws.Node, Dispatcher: ws.Dispatcher, TLS: w.Tls, HTTP2: w.Protocol != "http1",
			})
		}
	}
	m.ExtraRoutes = extraroutes.FromProto(f.fsm.ExtraRoutes().GetRoutes())
	return m, next
}

// registeredAlive says whether a registered set's node is alive and its
// dispatcher the process that registered it (with gossip: without, the
// lease alone says).
func registeredAlive(ws *pb.WorkerSet, alive map[string]bool, health map[string]map[string]gossip.ServiceHealth, gossiping bool) bool {
	if !alive[ws.Node] {
		return false
	}
	d, ok := health[ws.Node][ws.Dispatcher]
	return !gossiping || (ok && !dispatcherGone[d.State] && (ws.DispatcherPid == 0 || d.PID == 0 || d.PID == ws.DispatcherPid))
}

// nodeHost is the address Envoy reaches a node's services at: its gossip
// address, else its agent API's host.
func nodeHost(n *pb.Node) string {
	if n == nil {
		return ""
	}
	if n.Host != "" {
		return n.Host
	}
	host, _, _ := net.SplitHostPort(n.ApiAddr)
	return host
}

// table is the route table served now, for `dhctl routes`.
func (f *routeFeed) table(xdsAddr string) *pb.RoutesResponse {
	st := f.xds.Status()
	resp := &pb.RoutesResponse{XdsAddr: xdsAddr, BuildUs: st.BuildTime.Microseconds(), ServeUs: st.ServeTime.Microseconds(), FullBuildUs: st.FullBuildTime.Microseconds(), Versions: map[string]string{}}
	for flavour, types := range st.Versions {
		for typ, v := range types {
			resp.Versions[string(flavour)+" "+typ[strings.LastIndex(typ, ".")+1:]] = v
		}
	}
	for _, r := range f.xds.Routes() {
		resp.Routes = append(resp.Routes, &pb.Route{Match: r.Match(), Rewrite: r.PrefixRewrite, Cluster: r.Cluster, Endpoints: r.Endpoints})
	}
	if f.file != nil {
		resp.ExtraRoutesError = f.file.Err()
	}
	return resp
}
