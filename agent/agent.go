// Package agent wires the node agent together: configuration, supervisor,
// local and TCP API, gossip. It is what cmd/dhagent runs.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/dhvisor/dhvisor/agent/api"
	"github.com/dhvisor/dhvisor/agent/container"
	"github.com/dhvisor/dhvisor/agent/envoy"
	"github.com/dhvisor/dhvisor/agent/runtime/exec"
	"github.com/dhvisor/dhvisor/agent/runtime/systemd"
	"github.com/dhvisor/dhvisor/agent/state"
	"github.com/dhvisor/dhvisor/agent/supervise"
	"github.com/dhvisor/dhvisor/agent/workers"
	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/conncache"
	"github.com/dhvisor/dhvisor/internal/gossip"
	"github.com/dhvisor/dhvisor/internal/portowner"
	"github.com/dhvisor/dhvisor/internal/sdnotify"
	"github.com/dhvisor/dhvisor/internal/tlsutil"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// Agent is one node's agent.
type Agent struct {
	file string
	log  *slog.Logger
	node *config.Node
	mgr  *supervise.Manager
	rts  supervise.Runtimes

	reloadMu   sync.Mutex
	pkgVersion atomic.Pointer[string] // "NAME VERSION" of the installed Deephaven package
}

// New loads and validates the configuration in file.
func New(file string, log *slog.Logger) (*Agent, error) {
	node, err := config.LoadAgent(file)
	if err != nil {
		return nil, err
	}
	return &Agent{file: file, log: log, node: node}, nil
}

// Run supervises until ctx ends. The services keep running afterwards: the
// next agent adopts them.
func (a *Agent) Run(ctx context.Context) error {
	cfg := a.node.Agent
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return err
	}
	unlock, err := lockDir(cfg.StateDir)
	if err != nil {
		return err
	}
	defer unlock()

	docker, err := container.NewDocker(cfg.Envoy.Docker)
	if err != nil {
		return err
	}
	defer docker.Close()
	rts := supervise.Runtimes{
		config.RuntimeExec:   exec.Runtime{Log: a.log.With("runtime", config.RuntimeExec)},
		config.RuntimeDocker: container.New(docker, container.DefaultTiming, a.log.With("runtime", config.RuntimeDocker)),
	}
	if sd := openSystemd(ctx, a.log, cfg.StateDir); sd != nil {
		defer sd.Close()
		rts[config.RuntimeSystemd] = sd
	}
	if err := checkRuntimes(a.node, rts); err != nil {
		return err
	}
	a.rts = rts
	a.mgr = supervise.NewManager(a.node, rts, state.New(filepath.Join(cfg.StateDir, "agent-state.json")), a.log)
	a.mgr.OnStateError = func(err error) {
		if err != nil {
			sdnotify.Status("starting no service: " + err.Error())
			return
		}
		sdnotify.Status("state saved; supervising")
	}
	a.mgr.Load(ctx)
	lis, err := api.ListenUnix(cfg.Socket, cfg.SocketGroup)
	if err != nil {
		return fmt.Errorf("socket (the local API): %w", err)
	}
	// The TCP listener comes before gossip: the address it got is what the
	// node publishes.
	tcpLis, creds, err := listenTCP(cfg)
	if err != nil {
		lis.Close()
		return err
	}
	var apiAddr string
	if tcpLis != nil {
		apiAddr = cfg.API.Addr(tcpLis.Addr().String())
	}
	inst, closeSrc, err := a.newInstaller()
	if err != nil {
		lis.Close()
		if tcpLis != nil {
			tcpLis.Close()
		}
		return err
	}
	defer closeSrc()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Gossip outlives ctx a little: it must announce the leave after the
	// supervisor has stopped, so it has a context of its own.
	gctx, gcancel := context.WithCancel(context.Background())
	defer gcancel()
	pkg := inst.Installed(ctx)
	a.pkgVersion.Store(&pkg)
	g, err := a.startGossip(gctx, apiAddr, pkg)
	if err != nil {
		lis.Close()
		if tcpLis != nil {
			tcpLis.Close()
		}
		return fmt.Errorf("gossip: %w", err)
	}
	// One API, two doors: the unix socket for dhctl on the node, TCP with
	// mutual TLS for coordinators and remote operators.
	apiSrv := api.NewServer(a.mgr, a.Reload, g, apiAddr)
	apiSrv.Installer = inst
	apiSrv.PackageVersion = func() string { return *a.pkgVersion.Load() }
	inst.Changed = func() { a.publishVersions(g, inst) }
	reg, err := a.workerRegistry(g)
	if err != nil {
		return err
	}
	if reg != nil {
		defer reg.Close()
		apiSrv.Workers = reg
	}
	workersLis, err := a.listenWorkers(reg)
	if err != nil {
		return err
	}
	boot, closeBoot, err := a.envoyBootstrap(g)
	if err != nil {
		return err
	}
	defer closeBoot()
	type door struct {
		srv *grpc.Server
		lis net.Listener
	}
	doors := []door{{grpc.NewServer(), lis}}
	if tcpLis != nil {
		doors = append(doors, door{grpc.NewServer(grpc.Creds(creds)), tcpLis})
	}
	errc := make(chan error, len(doors))
	for _, d := range doors {
		pb.RegisterAgentServer(d.srv, apiSrv)
		go func() { errc <- d.srv.Serve(d.lis) }()
	}
	a.log.Info("agent running", "node", cfg.Node, "roles", cfg.Roles, "services", len(a.node.Services), "socket", cfg.Socket, "api", apiAddr, "config", a.file)

	workersDone := make(chan struct{})
	go func() {
		defer close(workersDone)
		if workersLis != nil {
			if err := reg.Serve(ctx, workersLis, a.log); err != nil {
				a.log.Error("workers endpoint", "err", err)
			}
		}
	}()
	bootDone := make(chan struct{})
	go func() {
		defer close(bootDone)
		if boot != nil {
			boot.Run(ctx)
		}
	}()
	instDone := make(chan struct{})
	go func() { defer close(instDone); inst.Run(ctx) }()
	if g != nil {
		a.mgr.SetClusterView(gossipView{g: g, seeds: cfg.Gossip.Seeds})
	}
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- a.mgr.Run(ctx) }()
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		if g != nil {
			publishHealth(ctx, a.mgr, g)
		}
	}()

	// Ready for systemd once the API serves and every service's loop
	// answers; from then on the watchdog is fed only while they do.
	watchdogDone := make(chan struct{})
	go func() {
		defer close(watchdogDone)
		if err := a.mgr.Ping(ctx); err != nil {
			return // stopping before we were ever ready
		}
		sdnotify.Ready()
		sdnotify.Watchdog(ctx, a.log, a.mgr.Ping)
	}()
	if os.Getenv(TestHooksEnv) == "1" {
		go a.testHooks(ctx)
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		cancel()
	}
	sdnotify.Stopping()
	var stops sync.WaitGroup
	for _, d := range doors {
		stops.Add(1)
		go func() {
			defer stops.Done()
			stopped := make(chan struct{})
			go func() { d.srv.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				// Streams of blocking calls would hold a graceful stop forever.
				d.srv.Stop()
				<-stopped
			}
		}()
	}
	stops.Wait()
	err = <-mgrDone
	<-instDone
	<-watchdogDone
	<-pubDone
	<-workersDone
	<-bootDone
	if g != nil {
		if lerr := g.Leave(leaveTimeout); lerr != nil {
			a.log.Warn("gossip leave", "err", lerr)
		}
	}
	if serveErr != nil && !errors.Is(serveErr, grpc.ErrServerStopped) {
		return serveErr
	}
	a.log.Info("agent stopped; services left running for the next agent")
	return err
}

// Reload re-reads the configuration file. An invalid file is refused as a
// whole and the running configuration stays.
func (a *Agent) Reload(ctx context.Context) (supervise.ReloadResult, error) {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	node, err := config.LoadAgent(a.file)
	if err != nil {
		a.log.Error("reload refused; running configuration unchanged", "err", err)
		return supervise.ReloadResult{}, err
	}
	if err := checkRuntimes(node, a.rts); err != nil {
		a.log.Error("reload refused; running configuration unchanged", "err", err)
		return supervise.ReloadResult{}, err
	}
	old := a.mgr.Node().Agent
	if node.Agent.Socket != old.Socket || node.Agent.StateDir != old.StateDir || node.Agent.API != old.API || node.Agent.TLS != old.TLS || node.Agent.Workers != old.Workers {
		// New contents of the same TLS files are picked up without this.
		a.log.Warn("socket, state_dir, api, workers and tls changes take effect when the agent restarts")
		node.Agent.Socket, node.Agent.StateDir, node.Agent.API, node.Agent.TLS, node.Agent.Workers = old.Socket, old.StateDir, old.API, old.TLS, old.Workers
	}
	if node.Agent.Envoy.Docker != old.Envoy.Docker {
		a.log.Warn("envoy.docker changes take effect when the agent restarts")
		node.Agent.Envoy.Docker = old.Envoy.Docker
	}
	res, err := a.mgr.Reload(ctx, node)
	if err != nil {
		return res, err
	}
	a.log.Info("configuration reloaded", "added", res.Added, "removed", res.Removed, "changed", res.Changed, "restart_needed", res.RestartNeeded)
	return res, nil
}

// listenTCP opens the TCP API when api.listen is set: mutual TLS, and only
// coordinators and operators may call (an agent never commands another).
// Both are nil without api.listen.
func listenTCP(cfg config.Agent) (net.Listener, credentials.TransportCredentials, error) {
	if cfg.API.Listen == "" {
		return nil, nil, nil
	}
	tc, err := tlsutil.ServerConfig(cfg.TLS, tlsutil.RoleCoordinator, tlsutil.RoleOperator)
	if err != nil {
		return nil, nil, fmt.Errorf("api.listen needs the tls files: %w", err)
	}
	l, err := net.Listen("tcp", cfg.API.Listen)
	if err != nil {
		return nil, nil, fmt.Errorf("api.listen: %w", portowner.Explain(err, cfg.API.Listen))
	}
	return l, credentials.NewTLS(tc), nil
}

// lockDir takes an exclusive lock so two agents never supervise the same
// services (each would start its own copy).
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "agent.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another agent holds %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// workerRegistry passes the node's dispatchers' workers to the coordinators
// it learns from gossip, with its agent certificate. nil when the node has
// no tls files or does not gossip: it could not reach a coordinator.
func (a *Agent) workerRegistry(g *gossip.Gossip) (*workers.Registry, error) {
	cfg := a.node.Agent
	if g == nil || cfg.TLS.IsZero() {
		return nil, nil
	}
	tc, err := tlsutil.ClientConfig(cfg.TLS, tlsutil.RoleCoordinator)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	dispatcher := func(name string) (int, bool) {
		sts, err := a.mgr.Status([]string{name})
		if err != nil || len(sts) != 1 {
			return 0, false
		}
		return sts[0].PID, true
	}
	return workers.New(credentials.NewTLS(tc), dispatcher, coordinators(g)), nil
}

// coordinators lists the coordinators gossip knows alive, by server id: their
// API addresses.
func coordinators(g *gossip.Gossip) func() map[string]string {
	return func() map[string]string {
		out := map[string]string{}
		for _, v := range g.View() {
			if v.Meta.Kind == gossip.KindCoordinator && v.Meta.APIAddr != "" && (v.State == gossip.NodeAlive || v.State == gossip.NodeSuspect) {
				out[v.Name] = v.Meta.APIAddr
			}
		}
		return out
	}
}

// envoyBootstrap renders the Envoy container's bootstrap from the
// coordinators, when the node runs Envoy on a rendered bootstrap (the
// configuration made sure it gossips and has tls files then); nil otherwise.
func (a *Agent) envoyBootstrap(g *gossip.Gossip) (*envoy.Bootstrapper, func(), error) {
	svc := a.node.Services[config.EnvoyService]
	if svc == nil || svc.Container == nil || svc.Container.Bootstrap == "" || g == nil {
		return nil, func() {}, nil
	}
	tc, err := tlsutil.ClientConfig(a.node.Agent.TLS, tlsutil.RoleCoordinator)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: %w", err)
	}
	conns := conncache.New(credentials.NewTLS(tc))
	changed, unsubscribe := g.Subscribe()
	b := envoy.NewBootstrapper(svc.Container.Bootstrap, envoy.Options(a.node.Agent.Envoy), coordinators(g), changed, conns, a.log.With("component", "envoy-bootstrap"))
	return b, func() { unsubscribe(); conns.Close() }, nil
}

// listenWorkers opens the loopback HTTP endpoint of the worker registry
// (nil when it is off or there is no registry).
func (a *Agent) listenWorkers(reg *workers.Registry) (net.Listener, error) {
	addr := a.node.Agent.Workers.Listen
	if reg == nil || addr == "off" {
		if reg == nil && addr != "off" {
			a.log.Info("no worker registry: it needs gossip and the tls files to reach the coordinators")
		}
		return nil, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("workers.listen: %w", portowner.Explain(err, addr))
	}
	a.log.Info("worker registry listening", "addr", l.Addr().String())
	return l, nil
}

// openSystemd connects the systemd runtime when systemd is the host's init
// system; nil when it is not, or does not answer (services that need it
// are then refused by checkRuntimes).
func openSystemd(ctx context.Context, log *slog.Logger, owner string) *systemd.Runtime {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return nil // not booted with systemd (sd_booted)
	}
	sd, err := systemd.New(ctx, log, owner)
	if err != nil {
		log.Warn("systemd runtime unavailable", "err", err)
		return nil
	}
	return sd
}

// checkRuntimes refuses a configuration whose services need a runtime the
// host does not offer.
func checkRuntimes(node *config.Node, rts supervise.Runtimes) error {
	var errs []error
	for _, name := range node.ServiceNames() {
		if r := node.Services[name].Runtime; rts[r] == nil {
			errs = append(errs, fmt.Errorf("services.%s.runtime: %s is not available on this host (is it booted with systemd, and is the agent root?)", name, r))
		}
	}
	return errors.Join(errs...)
}
