package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/extraroutes"
	"github.com/dhvisor/dhvisor/internal/properties"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// extraRoutesPoll is how often the leader looks at its extra routes file.
const extraRoutesPoll = 2 * time.Second

// routesFile loads coordinator.yaml's extra routes (envoy.extra_routes_file
// and envoy.extra_routes) through raft, as `dhctl routes extra load` does,
// so that every replica serves what the leader loaded and none serves its
// own file. Only the leader loads:
//   - when it starts to lead, if no routes were loaded yet, or the last ones
//     came from a coordinator.yaml and differ (a restart with a changed
//     file or envoy.extra_routes);
//   - when the file changes while it leads.
//
// A set an operator loaded with dhctl is replaced only when the file
// changes: a new leader does not undo it.
type routesFile struct {
	cfg      *config.Coordinator
	fsm      *fsm.FSM
	self     string
	isLeader func() bool
	hosts    func(context.Context) []string
	commit   func(ctx context.Context, who string, doc *pb.ExtraRoutes) error
	log      *slog.Logger

	mu  sync.Mutex
	err string
}

// configured says whether coordinator.yaml has extra routes to load.
func (r *routesFile) configured() bool {
	return r.cfg.Envoy.ExtraRoutesFile != "" || len(r.cfg.Envoy.Routes) > 0
}

// Err is why the file was last refused, or "".
func (r *routesFile) Err() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *routesFile) setErr(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = ""
	if err != nil {
		r.err = err.Error()
	}
}

func (r *routesFile) run(ctx context.Context) {
	if !r.configured() {
		return
	}
	tick := time.NewTicker(extraRoutesPoll)
	defer tick.Stop()
	var st pollState
	for {
		r.poll(ctx, &st)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// pollState is what run remembers between two looks at the file.
type pollState struct {
	leading bool
	seen    fileStamp // of the file when last loaded (or found loaded)
}

func (r *routesFile) poll(ctx context.Context, st *pollState) {
	file := r.cfg.Envoy.ExtraRoutesFile
	switch {
	case !r.isLeader():
		st.leading = false
		return
	case !st.leading:
		st.leading = true
		st.seen = stampOf(file)
		if cur := r.fsm.ExtraRoutes(); cur != nil && cur.ConfigOf == "" {
			return
		}
	default:
		now := stampOf(file)
		if now == st.seen {
			return
		}
		st.seen = now
	}
	if !r.load(ctx) {
		st.seen = fileStamp{} // try again at the next look
	}
}

// load commits coordinator.yaml's routes unless they are the ones loaded.
// It reports false when it should be tried again (the commit failed); a
// refused file is not tried again until it changes.
func (r *routesFile) load(ctx context.Context) bool {
	path := r.cfg.Envoy.ExtraRoutesFile
	source := fmt.Sprintf("envoy.extra_routes of coordinator %s", r.self)
	var files []*pb.PropertiesFile
	if path != "" {
		source = fmt.Sprintf("envoy.extra_routes_file %s of coordinator %s", path, r.self)
		var err error
		if files, err = extraroutes.ReadFiles(path, properties.OpenFile); err != nil {
			r.refused(path, err)
			return true
		}
	}
	doc, err := extraroutes.New(source, files, r.self, r.hosts(ctx), r.cfg.Envoy.Routes)
	if err != nil {
		r.refused(path, err)
		return true
	}
	doc.ConfigOf = r.self
	r.setErr(nil)
	if cur := r.fsm.ExtraRoutes(); cur != nil && cur.Sha256 == doc.Sha256 && sameRoutes(cur.Routes, doc.Routes) {
		return true
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := r.commit(cctx, "coordinator:"+r.self, doc); err != nil {
		if errors.Is(err, fsm.ErrRejected) {
			r.refused(path, err)
			return true
		}
		r.log.Warn("loading coordinator.yaml's extra routes; will retry", "err", err)
		return false
	}
	r.log.Info("coordinator.yaml's extra routes loaded through raft", "source", source, "routes", len(doc.Routes))
	return true
}

func (r *routesFile) refused(path string, err error) {
	r.setErr(err)
	r.log.Error("extra routes refused; the loaded ones stay", "file", path, "err", err)
}

func sameRoutes(a, b []*pb.ExtraRoute) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// fileStamp tells a changed file from an unchanged one without reading it.
type fileStamp struct {
	mod  time.Time
	size int64
	ino  uint64
	err  bool
}

func stampOf(path string) fileStamp {
	if path == "" {
		return fileStamp{}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{err: true}
	}
	st := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	if sys, ok := fi.Sys().(interface{ Ino() uint64 }); ok {
		st.ino = sys.Ino()
	}
	return st
}
