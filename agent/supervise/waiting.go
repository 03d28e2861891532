package supervise

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dhvisor/dhvisor/agent/check"
	"github.com/dhvisor/dhvisor/internal/config"
)

// ClusterView is what the agent knows of the services of the other nodes
// (gossip): a cold boot starts a service once its dependencies elsewhere are
// OK, as Deephaven's runbooks start configuration_server, then
// authentication_server, then the query nodes.
type ClusterView interface {
	// ServiceOK reports whether the service is OK on a live node, and
	// the node it is on, or was last seen on ("" when no node lists it).
	ServiceOK(name string) (node string, ok bool)
	// NotInCluster reports that no node of the cluster runs the service,
	// as far as the view can tell: every node it expects has been heard
	// from, and none lists it.
	NotInCluster(name string) bool
	// Subscribe returns a channel that receives a value whenever the
	// view changes, and a function that ends the subscription.
	Subscribe() (<-chan struct{}, func())
}

// SetClusterView gives the manager the cluster's view; without one (a node
// that does not gossip) nothing waits for another node. Call it before Run.
func (m *Manager) SetClusterView(v ClusterView) { m.view = v }

// externalRetry paces probes of an external dependency that is not there
// yet: what it is (etcd, a systemd unit) tells no one when it comes.
const externalRetry = time.Second

// externalTimeout bounds one probe of an external dependency.
const externalTimeout = 2 * time.Second

// newExternalProbe is how an external dependency is probed.
func newExternalProbe(e config.External) (check.Probe, error) {
	switch e.Kind() {
	case config.ExternalTCP:
		return check.NewTCP(e.TCP), nil
	case config.ExternalHTTP:
		return check.NewHTTP(check.HTTPOptions{URL: e.HTTP, ExpectStatus: e.Expect, CAFile: e.CAFile, InsecureSkipVerify: e.TLSSkipVerify})
	case config.ExternalSystemd:
		return check.NewSystemdUnit(e.Systemd), nil
	}
	return nil, fmt.Errorf("external dependency %s has no tcp, http or systemd target", e.Name)
}

// awaitOutside waits, before the agent starts spec on its own, for what it
// depends on outside this node: depends_on names no local service has
// (OK on another node, as the cluster view shows), then its external
// dependencies, all within the service's dependency_wait. It returns ""
// when all were there, else why the service starts without them, which
// the start's status says. waiting shows the wait in the service's status.
func (m *Manager) awaitOutside(ctx context.Context, spec *config.Service, waiting func(msg string)) (string, error) {
	wait := spec.DependencyWaitOr()
	var remote []string
	node := m.Node()
	for _, d := range spec.DependsOn {
		if _, local := node.Services[d]; !local && m.view != nil {
			remote = append(remote, d)
		}
	}
	if wait == 0 || len(remote) == 0 && len(spec.External) == 0 {
		return "", nil
	}
	log := m.log.With("service", spec.Name)
	expired := time.NewTimer(wait)
	defer expired.Stop()
	giveUp := func(what string) string {
		why := fmt.Sprintf("started without %s: not there within dependency_wait %s", what, wait)
		log.Warn("dependency_wait expired; starting anyway", "waited_for", what, "dependency_wait", wait)
		return why
	}
	for _, d := range remote {
		changed, unsubscribe := m.view.Subscribe()
		for {
			at, ok := m.view.ServiceOK(d)
			if ok {
				log.Info("dependency OK on another node", "dependency", d, "node", at)
				break
			}
			if m.view.NotInCluster(d) {
				log.Info("dependency runs on no node of the cluster; not waiting for it", "dependency", d)
				break
			}
			if at == "" {
				at = "no node yet"
			}
			waiting(fmt.Sprintf("Waiting for %s (%s)", d, at))
			select {
			case <-ctx.Done():
				unsubscribe()
				return "", ctx.Err()
			case <-changed:
			case <-expired.C:
				unsubscribe()
				return giveUp(fmt.Sprintf("%s (%s)", d, at)), nil
			}
		}
		unsubscribe()
	}
	for _, e := range spec.External {
		why, err := m.awaitExternal(ctx, e, expired.C, waiting)
		if err != nil || why != "" {
			if why != "" {
				why = giveUp(why)
			}
			return why, err
		}
	}
	return "", nil
}

// awaitExternal probes e until it is there, or expired fires (the
// description of what was missing is returned then).
func (m *Manager) awaitExternal(ctx context.Context, e config.External, expired <-chan time.Time, waiting func(msg string)) (string, error) {
	probe, err := m.externalProbe(e)
	if err != nil {
		return "", err // validated with the configuration
	}
	defer check.Close(probe)
	for {
		pctx, cancel := context.WithTimeout(ctx, externalTimeout)
		err := probe.Probe(pctx)
		cancel()
		switch {
		case err == nil:
			m.log.Info("external dependency there", "dependency", e.Describe())
			return "", nil
		case e.IfInstalled && (errors.Is(err, check.ErrUnitNotFound) || errors.Is(err, check.ErrNoSystemd)):
			m.log.Info("external dependency not installed on this host; not waiting for it", "dependency", e.Describe(), "why", err)
			return "", nil
		}
		// The probe's error names the target: "etcd (tcp 10.0.0.5:2379:
		// connection refused)", as a remote one is "name (node)".
		what := fmt.Sprintf("%s (%v)", e.Name, err)
		waiting("Waiting for " + what)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-expired:
			return what, nil
		case <-time.After(externalRetry):
		}
	}
}
