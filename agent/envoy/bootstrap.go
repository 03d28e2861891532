// Package envoy keeps the Envoy container's bootstrap current on an Envoy
// node: Deephaven's bootstrap, rendered with every coordinator's xDS
// address as the coordinators' raft membership lists them, written where
// the container mounts it. The container runtime sees the file change and
// recreates the container once.
package envoy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/dhvisor/dhvisor/internal/atomicfile"
	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/conncache"
	"github.com/dhvisor/dhvisor/internal/envoybootstrap"
	"github.com/dhvisor/dhvisor/internal/tlsutil"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// Bootstrapper writes the rendered bootstrap.
type Bootstrapper struct {
	file string
	opts envoybootstrap.Options
	// coordinators lists the coordinators' API addresses, by server id.
	coordinators func() map[string]string
	// changed receives when the set of coordinators may have changed.
	changed <-chan struct{}
	conns   *conncache.Cache
	log     *slog.Logger
}

// recheck asks the coordinators this often even without a change seen (a
// member added to raft before it gossips); failures retry sooner, backing
// off up to it.
const recheck = time.Minute

// Options maps the envoy: section to the renderer's options: the paths are
// the ones the container sees.
func Options(e config.EnvoyContainer) envoybootstrap.Options {
	o := envoybootstrap.Options{
		NodeID: e.Render.NodeID, NodeCluster: e.Render.Cluster,
		Admin:     "127.0.0.1:" + strconv.Itoa(e.AdminPort),
		Listen:    "0.0.0.0:" + strconv.Itoa(e.ListenPort),
		Plaintext: e.Render.XDSPlaintext, ListenerPlaintext: e.Render.ListenerPlaintext,
	}
	if !o.Plaintext {
		o.XDSTLS = tlsutil.Files{CA: config.EnvoyXDSCAPath, Cert: config.EnvoyXDSCertPath, Key: config.EnvoyXDSKeyPath}
	}
	if !o.ListenerPlaintext {
		o.ServerCert, o.ServerKey = config.EnvoyServerCertPath, config.EnvoyServerKeyPath
	}
	return o
}

// NewBootstrapper renders into file. It asks the coordinators (their API,
// with the agent's certificate in conns) for their xDS addresses.
func NewBootstrapper(file string, opts envoybootstrap.Options, coordinators func() map[string]string, changed <-chan struct{}, conns *conncache.Cache, log *slog.Logger) *Bootstrapper {
	return &Bootstrapper{file: file, opts: opts, coordinators: coordinators, changed: changed, conns: conns, log: log}
}

// Run keeps the file current until ctx ends.
func (b *Bootstrapper) Run(ctx context.Context) {
	var seen []string // the coordinators' API addresses last asked
	t := time.NewTimer(0)
	defer t.Stop()
	retry := time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.changed:
			// Gossip changes on every service state change anywhere; only
			// a change of coordinators is worth a question.
			if cur := slices.Sorted(maps.Values(b.coordinators())); slices.Equal(cur, seen) {
				continue
			}
		case <-t.C:
		}
		seen = slices.Sorted(maps.Values(b.coordinators()))
		if err := b.Update(ctx); err != nil {
			b.log.Warn("envoy bootstrap not updated; the current one stays", "file", b.file, "err", err)
			t.Reset(retry)
			retry = min(2*retry, recheck)
			continue
		}
		retry = time.Second
		t.Reset(recheck)
	}
}

// Update asks the coordinators for their xDS addresses and rewrites the
// file if the bootstrap changed. Without an answer the file stays as it is:
// Envoy keeps its coordinators rather than losing them all.
func (b *Bootstrapper) Update(ctx context.Context) error {
	xds, err := b.xdsAddrs(ctx)
	if err != nil {
		return err
	}
	opts := b.opts
	opts.Coordinators = xds
	out, err := envoybootstrap.Render(opts)
	if err != nil {
		return err
	}
	if cur, err := os.ReadFile(b.file); err == nil && bytes.Equal(cur, out) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(b.file), 0o755); err != nil {
		return err
	}
	// Envoy runs as its own user in the container: it must read the file.
	if err := atomicfile.Write(b.file, out, 0o644); err != nil {
		return err
	}
	b.log.Info("envoy bootstrap written", "file", b.file, "coordinators", xds)
	return nil
}

// xdsAddrs asks one coordinator after another for the raft peers' xDS
// addresses, sorted (a stable file for the same set).
func (b *Bootstrapper) xdsAddrs(ctx context.Context) ([]string, error) {
	coords := b.coordinators()
	if len(coords) == 0 {
		return nil, errors.New("no coordinator known to this agent yet (does the node gossip with the coordinators?)")
	}
	var errs []error
	for _, id := range slices.Sorted(maps.Keys(coords)) {
		conn, err := b.conns.Get(coords[id])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", id, err))
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := pb.NewCoordinatorClient(conn).Peers(cctx, &pb.PeersRequest{})
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", id, err))
			continue
		}
		var out []string
		for _, p := range resp.Peers {
			if p.Peer.GetXdsAddr() == "" {
				return nil, fmt.Errorf("coordinator %s has not published its xDS address (is it older than this agent?)", p.Peer.GetId())
			}
			out = append(out, p.Peer.GetXdsAddr())
		}
		if len(out) == 0 {
			errs = append(errs, fmt.Errorf("%s: no peers", id))
			continue
		}
		slices.Sort(out)
		return out, nil
	}
	return nil, errors.Join(errs...)
}
