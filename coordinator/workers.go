package coordinator

import (
	"context"
	"log/slog"
	"time"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/coordinator/ops"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// reapWorkers removes from the replicated state the worker sets whose lease
// ended (a dispatcher that stopped renewing, a node that died). It runs on
// the leader. Replicas stop routing an expired set on their own clock
// already; this keeps the state from holding dead workers.
func reapWorkers(ctx context.Context, state *fsm.FSM, propose ops.Proposer, self string, log *slog.Logger) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		changed := state.Changed()
		now := time.Now()
		var next time.Time
		for _, ws := range state.WorkerLeases() {
			expires := time.UnixMilli(ws.LeaseExpiresUnixMs)
			if expires.After(now) {
				if next.IsZero() || expires.Before(next) {
					next = expires
				}
				continue
			}
			cmd := &pb.Command{AtUnixMs: now.UnixMilli(), Who: self, Cmd: &pb.Command_WorkerExpire{WorkerExpire: &pb.WorkerLease{Node: ws.Node, Dispatcher: ws.Dispatcher, LeaseExpiresUnixMs: ws.LeaseExpiresUnixMs}}}
			if _, err := propose(ctx, cmd); err != nil {
				if ctx.Err() == nil {
					log.Warn("removing expired workers; will retry", "node", ws.Node, "dispatcher", ws.Dispatcher, "err", err)
					next = now.Add(time.Second)
				}
				break
			}
			log.Info("worker lease ended; workers removed", "node", ws.Node, "dispatcher", ws.Dispatcher)
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = time.Until(next)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-timer.C:
		}
	}
}
