package fsm

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/internal/extraroutes"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// ExtraRoutes returns the extra routes every replica serves, or nil when
// none were ever loaded. Apply replaces the set and never changes it: the
// result is shared, read only (the route feed reads it on every change of
// the state, and its files may be large).
func (f *FSM) ExtraRoutes() *pb.ExtraRoutes {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.ExtraRoutes
}

// loadExtraRoutes replaces the extra routes whole, numbering the version
// and stamping who loaded them from the command.
func (f *FSM) loadExtraRoutes(index uint64, cmd *pb.Command, doc *pb.ExtraRoutes) (any, string) {
	what := fmt.Sprintf("extra routes from %s", doc.Source)
	if err := extraroutes.Check(doc); err != nil {
		return rejected("%v", err), what
	}
	// Decoded by Apply from the command: ours to keep.
	next := doc
	next.Version = 1
	if cur := f.st.ExtraRoutes; cur != nil {
		next.Version = cur.Version + 1
	}
	next.LoadedBy, next.LoadedUnixMs, next.RaftIndex = cmd.Who, cmd.AtUnixMs, index
	f.st.ExtraRoutes = next
	short := next.Sha256
	if len(short) > 12 {
		short = short[:12]
	}
	return proto.Clone(next), fmt.Sprintf("extra routes version %d from %s (sha256 %s, evaluated on %s): %d routes: %s",
		next.Version, next.Source, short, next.EvaluatedOn, len(next.Routes), extraroutes.Names(next.Routes))
}
