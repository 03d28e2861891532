package coordinator

import (
	"context"
	"log/slog"

	"github.com/dhvisor/dhvisor/coordinator/api"
	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/coordinator/ops"
	"github.com/dhvisor/dhvisor/coordinator/upstream"
	"github.com/dhvisor/dhvisor/internal/config"
)

// importWorkers is the leader's loop importing the workers of Deephaven's
// configuration server (envoy.xds.upstream), or nil when none is
// configured.
func importWorkers(cfg *config.Coordinator, state *fsm.FSM, srv *api.Server, engine *ops.Engine, log *slog.Logger) func(context.Context) {
	u := cfg.Envoy.XDS.Upstream
	if u == nil {
		return nil
	}
	return func(ctx context.Context) {
		im := &upstream.Importer{
			Upstream: *u, Grace: cfg.Envoy.XDS.UpstreamGrace.D(), FSM: state,
			Store: srv.StoreWorkers, Permit: srv.WorkerPolicy.Allowed, Propose: engine.Propose, Self: engine.Self,
			Log: log.With("component", "upstream"),
		}
		im.Run(ctx)
	}
}
