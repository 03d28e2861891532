package fsm

import (
	"fmt"

	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// UpstreamDispatcher is the dispatcher name of the imported set: the
// workers come from Deephaven's configuration server, not from a
// dispatcher dhvisor sees.
const UpstreamDispatcher = "configuration_server"

// Upstream returns a copy of the configuration server import's record, or
// nil if none ran.
func (f *FSM) Upstream() *pb.UpstreamImport {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return cloneOrNil(f.st.Upstream)
}

// WorkerConflict says why w cannot join the set of dispatcher on node: its
// name or envoy prefix is another set's.
func (f *FSM) WorkerConflict(node, dispatcher string, w *agentpb.Worker) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.conflict(WorkerKey(node, dispatcher), w)
}

// sameSource refuses a change of a stored set from the other source: an
// imported set is the configuration server's, which a registration must
// not replace, and the other way round.
func sameSource(cur *pb.WorkerSet, upstream, what string) error {
	if cur == nil || cur.Upstream == upstream {
		return nil
	}
	if cur.Upstream != "" {
		return rejected("%s: the set is imported from the configuration server at %s", what, cur.Upstream)
	}
	return rejected("%s: the set was registered by a dispatcher, not imported from %s", what, upstream)
}

// recordUpstream stores the leader's record of the import. The record
// carries the imported set's lease (the grace from when the stream was last
// known up), and a withdrawn import takes its set away.
func (f *FSM) recordUpstream(u *pb.UpstreamImport) (any, string) {
	what := "workers from the configuration server at " + u.Address
	if u.Address == "" {
		return rejected("an upstream import record needs the configuration server's address"), "upstream import"
	}
	switch u.State {
	case pb.UpstreamLive, pb.UpstreamStale, pb.UpstreamWithdrawn:
	default:
		return rejected("upstream import state %q: want %s, %s or %s", u.State, pb.UpstreamLive, pb.UpstreamStale, pb.UpstreamWithdrawn), what
	}
	prev := f.st.Upstream
	f.st.Upstream = u // decoded by Apply: ours to keep
	for k, ws := range f.st.Workers {
		switch {
		case ws.Upstream != u.Address:
		case u.State == pb.UpstreamWithdrawn:
			f.store(k, nil)
		case ws.LeaseExpiresUnixMs != u.WithdrawUnixMs:
			f.st.Workers[k] = withLease(ws, u.WithdrawUnixMs)
		}
	}
	// Only changes of state are audited: a live import is renewed every
	// few seconds, and the error while stale stays the one that
	// ended the stream.
	if prev != nil && prev.Address == u.Address && prev.State == u.State && prev.Error == u.Error {
		return nil, ""
	}
	what = fmt.Sprintf("%s: %s, %d workers", what, u.State, u.Workers)
	if u.Error != "" {
		what += " (" + u.Error + ")"
	}
	return nil, what
}
