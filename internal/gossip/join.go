package gossip

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/dhvisor/dhvisor/internal/config"
)

// Join starts gossip as a configuration file's gossip: section describes
// it (agents and coordinators alike), under node's name and with meta.
func Join(ctx context.Context, node string, c config.Gossip, meta NodeMeta, log *slog.Logger) (*Gossip, error) {
	host, port, err := config.SplitHostPort(c.Bind)
	if err != nil {
		return nil, fmt.Errorf("gossip.bind: %w", err)
	}
	conf := Config{NodeName: node, BindAddr: host, BindPort: port, Seeds: c.Seeds, KeyFile: c.KeyFile, Meta: meta, Logger: log}
	if c.Advertise != "" {
		if conf.AdvertiseAddr, conf.AdvertisePort, err = config.SplitHostPort(c.Advertise); err != nil {
			return nil, fmt.Errorf("gossip.advertise: %w", err)
		}
	}
	g, err := New(conf)
	if err != nil {
		return nil, err
	}
	if err := g.Start(ctx); err != nil {
		return nil, err
	}
	return g, nil
}
