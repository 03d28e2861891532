package agent

import (
	"context"
	"path/filepath"
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
