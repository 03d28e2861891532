package fsm

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/internal/extraroutes"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func extraDoc(t *testing.T, text string) *pb.ExtraRoutes {
	t.Helper()
	doc, err := extraroutes.New("dhctl routes extra load routes.prop", []*pb.PropertiesFile{{Name: "routes.prop", Content: []byte(text)}}, "c1", []string{"c1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func loadCmd(doc *pb.ExtraRoutes) *pb.Command {
	return &pb.Command{AtUnixMs: 5000, Who: "operator:alice", Cmd: &pb.Command_ExtraRoutesLoad{ExtraRoutesLoad: doc}}
}

// A load replaces the set whole with the next version, stamped and
// audited; a refused one changes nothing but the audit log; a snapshot
// carries the set to a replica restored from it.
func TestExtraRoutesLoad(t *testing.T) {
	a := &applier{t: t, f: New()}
	if a.f.ExtraRoutes() != nil {
		t.Fatal("extra routes before any load")
	}
	first := extraDoc(t, "envoy.xds.extra.routes.grafana.host=grafana\nenvoy.xds.extra.routes.grafana.prefix=/grafana\n")
	res := a.apply(loadCmd(first))
	got, ok := res.(*pb.ExtraRoutes)
	if !ok {
		t.Fatalf("load: %v", res)
	}
	if got.Version != 1 || got.LoadedBy != "operator:alice" || got.LoadedUnixMs != 5000 || got.RaftIndex != 1 || len(got.Routes) != 1 || got.Routes[0].Port != 443 {
		t.Errorf("loaded %v", got)
	}
	second := extraDoc(t, "envoy.xds.extra.routes.kibana.host=kibana\nenvoy.xds.extra.routes.kibana.prefix=/kibana\nenvoy.xds.extra.routes.kibana.tls=false\n")
	a.apply(loadCmd(second))
	cur := a.f.ExtraRoutes()
	if cur.Version != 2 || len(cur.Routes) != 1 || cur.Routes[0].Name != "kibana" || cur.Routes[0].Port != 80 {
		t.Fatalf("second load: %v", cur)
	}
	audit := a.f.Audit(0)
	if last := audit[len(audit)-1]; last.Who != "operator:alice" || !strings.Contains(last.What, "extra routes version 2 from dhctl routes extra load routes.prop") || !strings.Contains(last.What, "1 routes: kibana") {
		t.Errorf("audit: %+v", last)
	}

	bad := func(change func(*pb.ExtraRoutes)) *pb.ExtraRoutes {
		d := proto.Clone(second).(*pb.ExtraRoutes)
		change(d)
		return d
	}
	for _, tc := range []struct {
		name string
		doc  *pb.ExtraRoutes
		want string
	}{
		{"reserved prefix", bad(func(d *pb.ExtraRoutes) { d.Routes[0].Prefix = "/iris" }), `"/iris" is reserved by Deephaven`},
		{"port", bad(func(d *pb.ExtraRoutes) { d.Routes[0].Port = 0 }), "port 0 is not 1-65535"},
		{"no host", bad(func(d *pb.ExtraRoutes) { d.Routes[0].Host = "" }), "is not a host name"},
		{"files changed", bad(func(d *pb.ExtraRoutes) { d.Files[0].Content = []byte("x=y") }), "is not that of the files"},
		{"twice", bad(func(d *pb.ExtraRoutes) { d.Routes = append(d.Routes, d.Routes[0]) }), `route "kibana" twice`},
		{"same prefix", bad(func(d *pb.ExtraRoutes) {
			r := proto.Clone(d.Routes[0]).(*pb.ExtraRoute)
			r.Name, r.Prefix = "other", "/kibana/"
			d.Routes = append(d.Routes, r)
		}), `is already the prefix of route "kibana"`},
		{"unsorted", bad(func(d *pb.ExtraRoutes) {
			r := proto.Clone(d.Routes[0]).(*pb.ExtraRoute)
			r.Name, r.Prefix = "a", "/a"
			d.Routes = append(d.Routes, r)
		}), "not sorted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			changed := a.f.Changed()
			err, _ := a.apply(loadCmd(tc.doc)).(error)
			if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a refusal with %q", err, tc.want)
			}
			if now := a.f.ExtraRoutes(); !proto.Equal(now, cur) {
				t.Errorf("a refused load changed the routes: %v", now)
			}
			select {
			case <-changed:
				t.Error("a refused load signalled a change")
			default:
			}
			audit := a.f.Audit(1)
			if !strings.Contains(audit[0].What, "(refused: ") {
				t.Errorf("refusal not audited: %+v", audit[0])
			}
		})
	}

	restored := snapshotRestored(t, a.f)
	if got := restored.ExtraRoutes(); !proto.Equal(got, cur) {
		t.Errorf("restored %v, want %v", got, cur)
	}
	// The restored replica numbers the next load on from there.
	b := &applier{t: t, f: restored, index: a.index}
	if res := b.apply(loadCmd(first)); res.(*pb.ExtraRoutes).Version != 3 {
		t.Errorf("load after restore: %v", res)
	}
}

// snapshotRestored is a new state restored from a snapshot of f.
func snapshotRestored(t *testing.T, f *FSM) *FSM {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	return g
}
