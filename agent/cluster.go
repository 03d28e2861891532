package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dhvisor/dhvisor/agent/gossip"
	"github.com/dhvisor/dhvisor/agent/supervise"
	"github.com/dhvisor/dhvisor/internal/version"
)

// startGossip joins the cluster when the node's config asks for it. The
// returned gossip is nil when the node runs alone.
func (a *Agent) startGossip(ctx context.Context) (*gossip.Gossip, error) {
	cfg := a.node.Agent
	if !cfg.Gossip.Enabled() {
		return nil, nil
	}
	host, port, err := splitHostPort(cfg.Gossip.Bind)
	if err != nil {
		return nil, fmt.Errorf("gossip.bind: %w", err)
	}
	gc := gossip.Config{
		NodeName: cfg.Node,
		BindAddr: host,
		BindPort: port,
		Seeds:    cfg.Gossip.Seeds,
		KeyFile:  cfg.Gossip.KeyFile,
		Meta: gossip.NodeMeta{
			Roles:            cfg.Roles,
			DeephavenVersion: deephavenVersion(cfg.LauncherDir),
			DhvisorVersion:   version.Version,
		},
		Logger: a.log,
	}
	if cfg.Gossip.Advertise != "" {
		if gc.AdvertiseAddr, gc.AdvertisePort, err = splitHostPort(cfg.Gossip.Advertise); err != nil {
			return nil, fmt.Errorf("gossip.advertise: %w", err)
		}
	}
	g, err := gossip.New(gc)
	if err != nil {
		return nil, err
	}
	if err := g.Start(ctx); err != nil {
		return nil, err
	}
	return g, nil
}

// publishHealth gossips the node's service states on every change, until ctx ends.
func publishHealth(ctx context.Context, mgr *supervise.Manager, g *gossip.Gossip) {
	for {
		sts, err := mgr.Status(nil)
		if err == nil {
			g.SetLocal(compact(sts))
		}
		mgr.WaitChange(ctx)
		if ctx.Err() != nil {
			return
		}
	}
}

func compact(sts []supervise.Status) []gossip.ServiceHealth {
	out := make([]gossip.ServiceHealth, len(sts))
	for i, s := range sts {
		out[i] = gossip.ServiceHealth{Name: s.Name, State: string(s.State), PID: int32(s.PID), Restarts: int32(s.Restarts), Since: s.Since, Message: s.Message}
	}
	return out
}

func splitHostPort(hp string) (string, int, error) {
	host, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	return host, port, nil
}

// deephavenVersion reads the installed Deephaven release from the launcher
// directory's link target (/usr/illumon/latest -> illumon-db-1.20240517.344).
func deephavenVersion(launcherDir string) string {
	target, err := filepath.EvalSymlinks(filepath.Dir(launcherDir))
	if err != nil {
		return ""
	}
	if _, err := os.Stat(target); err != nil {
		return ""
	}
	return strings.TrimPrefix(filepath.Base(target), "illumon-db-")
}

// leaveTimeout bounds the graceful leave on shutdown, so peers see "left"
// rather than "dead" without holding up a restart.
const leaveTimeout = 2 * time.Second
