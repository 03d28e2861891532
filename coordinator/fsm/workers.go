package fsm

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// WorkerKey is the state's key of a dispatcher's worker set.
func WorkerKey(node, dispatcher string) string { return node + "/" + dispatcher }

// WorkerSets returns copies of every dispatcher's worker set, sorted by node
// and dispatcher.
func (f *FSM) WorkerSets() []*pb.WorkerSet {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*pb.WorkerSet, 0, len(f.st.Workers))
	for _, k := range slices.Sorted(maps.Keys(f.st.Workers)) {
		out = append(out, proto.Clone(f.st.Workers[k]).(*pb.WorkerSet))
	}
	return out
}

// WorkerSet returns a copy of one dispatcher's set, or nil.
func (f *FSM) WorkerSet(node, dispatcher string) *pb.WorkerSet {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return cloneOrNil(f.st.Workers[WorkerKey(node, dispatcher)])
}

// Worker commands are not audited: dispatchers re-send their sets every few
// seconds, and that churn would push operators' actions out of the bounded
// audit log. Refusals are audited like any other.

func (f *FSM) setWorkers(at int64, ws *pb.WorkerSet) (any, string) {
	what := fmt.Sprintf("workers of %s on %s", ws.Dispatcher, ws.Node)
	if ws.Node == "" || ws.Dispatcher == "" {
		return rejected("a worker set needs a node and a dispatcher"), what
	}
	key := WorkerKey(ws.Node, ws.Dispatcher)
	if len(ws.Workers) == 0 {
		delete(f.st.Workers, key)
		return nil, ""
	}
	// Names and prefixes route requests, so they are unique in the cluster.
	mine := map[string]bool{}
	for _, w := range ws.Workers {
		mine[w.Name] = true
		mine["prefix "+w.EnvoyPrefix] = true
	}
	for k, other := range f.st.Workers {
		if k == key {
			continue
		}
		for _, w := range other.Workers {
			if mine[w.Name] {
				return rejected("worker %q is already registered by %s on %s", w.Name, other.Dispatcher, other.Node), what
			}
			if mine["prefix "+w.EnvoyPrefix] {
				return rejected("envoy prefix %q is already used by worker %s of %s on %s", w.EnvoyPrefix, w.Name, other.Dispatcher, other.Node), what
			}
		}
	}
	next := proto.Clone(ws).(*pb.WorkerSet)
	slices.SortFunc(next.Workers, func(a, b *agentpb.Worker) int { return strings.Compare(a.Name, b.Name) })
	next.UpdatedUnixMs = at
	if f.st.Workers == nil {
		f.st.Workers = map[string]*pb.WorkerSet{}
	}
	f.st.Workers[key] = next
	return nil, ""
}

func (f *FSM) renewWorkers(l *pb.WorkerLease) (any, string) {
	ws := f.st.Workers[WorkerKey(l.Node, l.Dispatcher)]
	if ws == nil {
		return rejected("no workers of %s on %s to renew (the lease ended); send the whole set", l.Dispatcher, l.Node), "worker lease of " + l.Dispatcher + " on " + l.Node
	}
	ws.LeaseExpiresUnixMs = max(ws.LeaseExpiresUnixMs, l.LeaseExpiresUnixMs)
	return nil, ""
}

func (f *FSM) expireWorkers(l *pb.WorkerLease) (any, string) {
	key := WorkerKey(l.Node, l.Dispatcher)
	if ws := f.st.Workers[key]; ws != nil && ws.LeaseExpiresUnixMs == l.LeaseExpiresUnixMs {
		delete(f.st.Workers, key)
	}
	return nil, ""
}

// WorkerLeases returns every set's lease, without its workers: cheap to read
// on each change, however many workers there are.
func (f *FSM) WorkerLeases() []*pb.WorkerLease {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*pb.WorkerLease, 0, len(f.st.Workers))
	for _, ws := range f.st.Workers {
		out = append(out, &pb.WorkerLease{Node: ws.Node, Dispatcher: ws.Dispatcher, LeaseExpiresUnixMs: ws.LeaseExpiresUnixMs})
	}
	return out
}
