package agent

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dhvisor/dhvisor/agent/api"
	"github.com/dhvisor/dhvisor/agent/supervise"
	"github.com/dhvisor/dhvisor/internal/gossip"
	"github.com/dhvisor/dhvisor/internal/version"
)

// startGossip joins the cluster when the node's config asks for it,
// publishing apiAddr (the TCP API peers dial; "" without one). The returned
// gossip is nil when the node runs alone.
func (a *Agent) startGossip(ctx context.Context, apiAddr, pkgVersion string) (*gossip.Gossip, error) {
	cfg := a.node.Agent
	if !cfg.Gossip.Enabled() {
		return nil, nil
	}
	return gossip.Join(ctx, cfg.Node, cfg.Gossip, gossip.NodeMeta{
		Roles:            cfg.Roles,
		APIAddr:          apiAddr,
		DeephavenVersion: deephavenVersion(cfg.LauncherDir),
		DhvisorVersion:   version.Version,
		PackageVersion:   pkgVersion,
	}, a.log)
}

// publishHealth gossips the node's service states on every change, until ctx ends.
func publishHealth(ctx context.Context, mgr *supervise.Manager, g *gossip.Gossip) {
	for {
		changed := mgr.Changed()
		g.SetLocal(api.Compact(mgr.Snapshot()))
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// deephavenVersion reads the installed Deephaven release from the launcher
// directory's link target (/usr/illumon/latest -> illumon-db-1.20240517.344).
func deephavenVersion(launcherDir string) string {
	target, err := filepath.EvalSymlinks(filepath.Dir(launcherDir))
	if err != nil {
		return ""
	}
	return strings.TrimPrefix(filepath.Base(target), "illumon-db-")
}

// leaveTimeout bounds the graceful leave on shutdown, so peers see "left"
// rather than "dead" without holding up a restart.
const leaveTimeout = 2 * time.Second

// gossipView is the cluster as gossip shows it, for the supervisor's waits
// on dependencies that run on other nodes.
type gossipView struct {
	g     *gossip.Gossip
	seeds []string // agent.yaml's gossip.seeds
}

func (v gossipView) ServiceOK(name string) (string, bool) { return serviceOK(v.g.View(), name) }

func (v gossipView) NotInCluster(name string) bool {
	return notInCluster(v.g.View(), v.g.Addr(), v.seeds, name)
}

func live(n gossip.NodeView) bool {
	return n.State == gossip.NodeAlive || n.State == gossip.NodeSuspect
}

// serviceOK finds the service OK on a live node. Otherwise the node named is
// a live one that lists it, else a dead or departed one that did.
func serviceOK(view []gossip.NodeView, name string) (string, bool) {
	var alive, gone string
	for _, n := range view {
		for _, s := range slices.Concat(n.Services, n.LastKnown) {
			switch {
			case s.Name != name:
			case live(n) && s.State == string(supervise.OK):
				return n.Name, true
			case live(n) && alive == "":
				alive = n.Name
			case !live(n) && gone == "":
				gone = n.Name
			}
		}
	}
	if alive != "" {
		return alive, false
	}
	return gone, false
}

// notInCluster is true once every seed (self: this node's gossip address)
// has published its list and no node lists the service, live or as it was
// before it died: the seeds are the nodes a cold boot can count on hearing
// from. A seed that stays silent (powered off) keeps it false, so the wait
// lasts its dependency_wait; a single node seeding only itself decides at
// once.
func notInCluster(view []gossip.NodeView, self string, seeds []string, name string) bool {
	heard := map[string]bool{self: true}
	for _, n := range view {
		for _, s := range slices.Concat(n.Services, n.LastKnown) {
			if s.Name == name {
				return false
			}
		}
		if live(n) && n.Version > 0 {
			heard[n.Addr] = true
		}
	}
	for _, s := range seeds {
		if !heard[s] {
			return false
		}
	}
	return true
}

func (v gossipView) Subscribe() (<-chan struct{}, func()) { return v.g.Subscribe() }
