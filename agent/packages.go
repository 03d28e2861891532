package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/dhvisor/dhvisor/agent/install"
	"github.com/dhvisor/dhvisor/internal/conncache"
	"github.com/dhvisor/dhvisor/internal/gossip"
	"github.com/dhvisor/dhvisor/internal/tlsutil"
	coordpb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// newInstaller prepares the node's package installer. It fetches packages
// from the coordinators with the agent's certificate; without tls files
// only packages already on the node (upgrade --path) can be installed.
func (a *Agent) newInstaller() (*install.Installer, func(), error) {
	cfg := a.node.Agent
	var src install.Source = noSource{}
	closeSrc := func() {}
	if !cfg.TLS.IsZero() {
		tc, err := tlsutil.ClientConfig(cfg.TLS, tlsutil.RoleCoordinator)
		if err != nil {
			return nil, nil, fmt.Errorf("tls: %w", err)
		}
		cs := coordSource{conns: conncache.New(credentials.NewTLS(tc))}
		src, closeSrc = cs, cs.conns.Close
	}
	return install.New(cfg.Packages, src, filepath.Join(cfg.StateDir, "install-journal.json"), a.log.With("component", "install")), closeSrc, nil
}

// publishVersions republishes the node's versions after an install.
func (a *Agent) publishVersions(g *gossip.Gossip, inst *install.Installer) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pkg := inst.Installed(ctx)
	a.pkgVersion.Store(&pkg)
	if g == nil {
		return
	}
	m := g.Meta()
	m.PackageVersion, m.DeephavenVersion = pkg, deephavenVersion(a.node.Agent.LauncherDir)
	if err := g.SetMeta(m); err != nil {
		a.log.Warn("publishing the node's versions", "err", err)
	}
}

// coordSource fetches packages from the coordinators' cluster API.
type coordSource struct{ conns *conncache.Cache }

func (s coordSource) Fetch(ctx context.Context, addr, sha string, offset int64, w io.Writer) error {
	conn, err := s.conns.Get(addr)
	if err != nil {
		return err
	}
	stream, err := coordpb.NewCoordinatorClient(conn).FetchPackage(ctx, &coordpb.FetchPackageRequest{Sha256: sha, Offset: offset})
	if err != nil {
		return err
	}
	_, err = io.Copy(w, coordpb.NewPackageReader(nil, stream.Recv))
	return err
}

type noSource struct{}

func (noSource) Fetch(context.Context, string, string, int64, io.Writer) error {
	return errors.New("this agent has no tls files (an agent certificate) to fetch packages from the coordinators; upgrade with --path instead")
}
