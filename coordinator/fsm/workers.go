package fsm

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// Worker sets are copy on write: Apply replaces a set and never changes one
// it stored, nor its workers. Readers get the stored sets themselves,
// without a copy of thousands of workers on every change, and must not
// modify them.

// WorkerKey is the state's key of a dispatcher's worker set.
func WorkerKey(node, dispatcher string) string { return node + "/" + dispatcher }

// WorkerSets returns every dispatcher's worker set, sorted by node and
// dispatcher. The sets are shared: read only.
func (f *FSM) WorkerSets() []*pb.WorkerSet {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*pb.WorkerSet, 0, len(f.st.Workers))
	for _, k := range slices.Sorted(maps.Keys(f.st.Workers)) {
		out = append(out, f.st.Workers[k])
	}
	return out
}

// WorkerSet returns one dispatcher's set, or nil. It is shared: read only.
func (f *FSM) WorkerSet(node, dispatcher string) *pb.WorkerSet {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.Workers[WorkerKey(node, dispatcher)]
}

// workerIndex finds the set that routes a worker name or an envoy prefix,
// which are unique in the cluster, without looking through every set.
type workerIndex struct {
	names, prefixes map[string]string // → set key
}

func indexWorkers(sets map[string]*pb.WorkerSet) workerIndex {
	ix := workerIndex{names: map[string]string{}, prefixes: map[string]string{}}
	for k, ws := range sets {
		ix.add(k, ws.Workers)
	}
	return ix
}

func (ix workerIndex) add(key string, ws []*agentpb.Worker) {
	for _, w := range ws {
		ix.names[w.Name] = key
		ix.prefixes[w.EnvoyPrefix] = key
	}
}

func (ix workerIndex) remove(ws []*agentpb.Worker) {
	for _, w := range ws {
		delete(ix.names, w.Name)
		delete(ix.prefixes, w.EnvoyPrefix)
	}
}

// conflict says why a worker of set key cannot be routed, if another set
// routes its name or prefix.
func (f *FSM) conflict(key string, w *agentpb.Worker) error {
	if other, ok := f.workers.names[w.Name]; ok && other != key {
		ws := f.st.Workers[other]
		return rejected("worker %q is already registered by %s on %s", w.Name, ws.Dispatcher, ws.Node)
	}
	if other, ok := f.workers.prefixes[w.EnvoyPrefix]; ok && other != key {
		ws := f.st.Workers[other]
		i := slices.IndexFunc(ws.Workers, func(o *agentpb.Worker) bool { return o.EnvoyPrefix == w.EnvoyPrefix })
		return rejected("envoy prefix %q is already used by worker %s of %s on %s", w.EnvoyPrefix, ws.Workers[i].Name, ws.Dispatcher, ws.Node)
	}
	return nil
}

// store makes next the set under key (nil removes it).
func (f *FSM) store(key string, next *pb.WorkerSet) {
	if cur := f.st.Workers[key]; cur != nil {
		f.workers.remove(cur.Workers)
	}
	if next == nil {
		delete(f.st.Workers, key)
		return
	}
	f.st.Workers[key] = next
	f.workers.add(key, next.Workers)
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
	if err := sameSource(f.st.Workers[key], ws.Upstream, what); err != nil {
		return err, what
	}
	if len(ws.Workers) == 0 {
		f.store(key, nil)
		return nil, ""
	}
	for _, w := range ws.Workers {
		if err := f.conflict(key, w); err != nil {
			return err, what
		}
	}
	// The set is the command Apply just decoded, no one else's: the state
	// keeps it, where a copy of thousands of workers on every replica
	// would be work for nothing.
	next := ws
	slices.SortFunc(next.Workers, byName)
	next.UpdatedUnixMs = at
	next.Revision = 1
	if cur := f.st.Workers[key]; cur != nil {
		next.Revision = cur.Revision + 1
	}
	f.store(key, next)
	return nil, ""
}

func byName(a, b *agentpb.Worker) int { return strings.Compare(a.Name, b.Name) }

// ErrStaleDiff is why a worker diff is refused: the set changed since the
// revision it was made from.
var ErrStaleDiff = errors.New("stale worker diff")

// diffWorkers applies a diff made from the set's current revision: one made
// from an older one would undo a change in between, so it is refused and
// the proposer sends the whole set instead.
func (f *FSM) diffWorkers(at int64, d *pb.WorkerDiff) (any, string) {
	what := fmt.Sprintf("workers of %s on %s", d.Dispatcher, d.Node)
	key := WorkerKey(d.Node, d.Dispatcher)
	cur := f.st.Workers[key]
	if cur == nil || cur.Revision != d.BaseRevision {
		return fmt.Errorf("%w: %w: the set is no longer at revision %d; send the whole set", ErrRejected, ErrStaleDiff, d.BaseRevision), what
	}
	if err := sameSource(cur, d.Upstream, what); err != nil {
		return err, what
	}
	for _, w := range d.Upsert {
		if err := f.conflict(key, w); err != nil {
			return err, what
		}
	}
	gone := make(map[string]bool, len(d.Remove)+len(d.Upsert))
	for _, name := range d.Remove {
		gone[name] = true
	}
	for _, w := range d.Upsert {
		gone[w.Name] = true
	}
	workers := make([]*agentpb.Worker, 0, len(cur.Workers)+len(d.Upsert)-len(d.Remove))
	for _, w := range cur.Workers {
		if !gone[w.Name] {
			workers = append(workers, w)
		}
	}
	workers = append(workers, d.Upsert...) // decoded by Apply: ours to keep
	if len(workers) == 0 {
		f.store(key, nil)
		return nil, ""
	}
	slices.SortFunc(workers, byName)
	f.store(key, &pb.WorkerSet{
		Node: d.Node, Dispatcher: d.Dispatcher, Workers: workers,
		LeaseExpiresUnixMs: d.LeaseExpiresUnixMs, UpdatedUnixMs: at,
		DispatcherPid: d.DispatcherPid, Revision: cur.Revision + 1, Upstream: cur.Upstream,
	})
	return nil, ""
}

// withLease is a copy of ws (sharing its workers) whose lease ends at ms.
func withLease(ws *pb.WorkerSet, ms int64) *pb.WorkerSet {
	return &pb.WorkerSet{
		Node: ws.Node, Dispatcher: ws.Dispatcher, Workers: ws.Workers,
		LeaseExpiresUnixMs: ms, UpdatedUnixMs: ws.UpdatedUnixMs,
		DispatcherPid: ws.DispatcherPid, Revision: ws.Revision, Upstream: ws.Upstream,
	}
}

func (f *FSM) renewWorkers(l *pb.WorkerLease) (any, string) {
	key := WorkerKey(l.Node, l.Dispatcher)
	ws := f.st.Workers[key]
	if ws == nil {
		return rejected("no workers of %s on %s to renew (the lease ended); send the whole set", l.Dispatcher, l.Node), "worker lease of " + l.Dispatcher + " on " + l.Node
	}
	if l.LeaseExpiresUnixMs > ws.LeaseExpiresUnixMs {
		f.st.Workers[key] = withLease(ws, l.LeaseExpiresUnixMs)
	}
	return nil, ""
}

func (f *FSM) expireWorkers(l *pb.WorkerLease) (any, string) {
	key := WorkerKey(l.Node, l.Dispatcher)
	if ws := f.st.Workers[key]; ws != nil && ws.LeaseExpiresUnixMs == l.LeaseExpiresUnixMs {
		f.store(key, nil)
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

// DiffWorkers is the diff that makes stored (sorted by name) into next
// (sorted by name): the workers added or changed, and the names removed.
func DiffWorkers(stored, next []*agentpb.Worker) (upsert []*agentpb.Worker, remove []string) {
	i, j := 0, 0
	for i < len(stored) || j < len(next) {
		switch {
		case j == len(next) || (i < len(stored) && stored[i].Name < next[j].Name):
			remove = append(remove, stored[i].Name)
			i++
		case i == len(stored) || next[j].Name < stored[i].Name:
			upsert = append(upsert, next[j])
			j++
		default:
			if !proto.Equal(stored[i], next[j]) {
				upsert = append(upsert, next[j])
			}
			i++
			j++
		}
	}
	return upsert, remove
}
