package coordinator

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/coordinator/agents"
	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/coordinator/ops"
	"github.com/dhvisor/dhvisor/internal/gossip"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// inventoryResync re-reads every live agent's services even when gossip shows
// no change: a reload that only changes depends_on is not visible in gossip.
const inventoryResync = time.Minute

// inventory keeps the replicated node records (roles, versions, services and
// their dependencies) in step with what the agents really run. It runs on
// the leader: gossip says when something changed, the agent's API says what.
type inventory struct {
	fsm     *fsm.FSM
	gossip  *gossip.Gossip
	agents  *agents.Pool
	propose ops.Proposer
	self    string
	log     *slog.Logger
}

func (inv *inventory) run(ctx context.Context) {
	changed, unsubscribe := inv.gossip.Subscribe()
	defer unsubscribe()
	resync := time.NewTicker(inventoryResync)
	defer resync.Stop()
	full := true
	for {
		inv.sync(ctx, full)
		full = false
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-resync.C:
			full = true
		}
	}
}

// sync records every node whose record differs from what gossip and its
// agent report. full asks each live agent even if gossip shows no change.
func (inv *inventory) sync(ctx context.Context, full bool) {
	known := inv.fsm.Nodes()
	for _, v := range inv.gossip.View() {
		if v.Meta.Kind == gossip.KindCoordinator {
			continue
		}
		rec := known[v.Name]
		host, _, _ := net.SplitHostPort(v.Addr)
		next := &pb.Node{
			Name: v.Name, ApiAddr: v.Meta.APIAddr, Roles: v.Meta.Roles, State: v.State, Host: host,
			DhvisorVersion: v.Meta.DhvisorVersion, DeephavenVersion: v.Meta.DeephavenVersion, PackageVersion: v.Meta.PackageVersion,
		}
		if rec != nil {
			next.Services = rec.Services
		}
		if v.State == gossip.NodeAlive && (full || rec == nil || !sameNames(rec.Services, v.Services) || rec.ApiAddr != next.ApiAddr) {
			if svcs, ok := inv.services(ctx, v.Name); ok {
				next.Services = svcs
			}
		}
		if v.State == gossip.NodeSuspect && rec != nil {
			next.State = rec.State // suspicion comes and goes; not worth a raft write
		}
		if rec != nil {
			cmp := proto.Clone(rec).(*pb.Node)
			cmp.UpdatedUnixMs = 0
			if proto.Equal(cmp, next) {
				continue
			}
		}
		cmd := &pb.Command{AtUnixMs: time.Now().UnixMilli(), Who: inv.self, Cmd: &pb.Command_NodeUpsert{NodeUpsert: next}}
		if _, err := inv.propose(ctx, cmd); err != nil {
			if ctx.Err() == nil {
				inv.log.Warn("recording node", "node", v.Name, "err", err)
			}
			return
		}
	}
}

// services asks node's agent for its services and their dependencies.
func (inv *inventory) services(ctx context.Context, node string) ([]*pb.ServiceDef, bool) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := inv.agents.Status(ctx, node)
	if err != nil {
		if ctx.Err() == nil {
			inv.log.Warn("reading a node's services", "node", node, "err", err)
		}
		return nil, false
	}
	var out []*pb.ServiceDef
	for _, s := range st.Services {
		out = append(out, &pb.ServiceDef{Name: s.Name, DependsOn: s.DependsOn, Envoy: s.Envoy})
	}
	return out, true
}

func sameNames(defs []*pb.ServiceDef, live []gossip.ServiceHealth) bool {
	a := make([]string, len(defs))
	for i, d := range defs {
		a[i] = d.Name
	}
	b := make([]string, len(live))
	for i, s := range live {
		b[i] = s.Name
	}
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
