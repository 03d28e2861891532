package config

import (
	"fmt"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
)

// EnvoyContainer is agent.yaml's envoy: section, for a node with the envoy role: the
// deephaven_envoy container that Deephaven's Envoy guide starts with
// `docker run`, which the agent keeps running as the service "envoy".
type EnvoyContainer struct {
	// Container is the container's name (docker run --name).
	Container string `yaml:"container"`
	// Image is the Envoy image (a tag or digest); a change recreates the
	// container, and so does the tag moving to another image.
	Image string `yaml:"image"`
	// User runs Envoy in the container (docker run -u): a user name or
	// user:group of this host (resolved here, as the container has no such
	// names), or numeric ids; empty: the image's. It must be able to read
	// the bootstrap and the certificates.
	User string `yaml:"user"`
	// Args follow the image (Envoy's command line).
	Args []string          `yaml:"args"`
	Env  map[string]string `yaml:"env"`
	// ListenPort and AdminPort are Envoy's listener and admin ports on the
	// host (the container shares the host's network).
	ListenPort int `yaml:"listen_port"`
	AdminPort  int `yaml:"admin_port"`
	// Bootstrap is a site's own bootstrap file; empty: the agent renders
	// Deephaven's bootstrap with every coordinator as an xDS endpoint.
	Bootstrap string      `yaml:"bootstrap"`
	Render    EnvoyRender `yaml:"render"`
	// Mounts are further files or directories the container sees (docker
	// run -v), e.g. the certificates a site's own bootstrap names.
	Mounts      []Mount       `yaml:"mounts"`
	Ready       EnvoyReady    `yaml:"ready"`
	StartGrace  Duration      `yaml:"start_grace"`
	StopTimeout Duration      `yaml:"stop_timeout"`
	Restart     RestartPolicy `yaml:"restart"`
	// Docker is the Docker Engine API address.
	Docker string `yaml:"docker"`
}

// EnvoyRender shapes the bootstrap the agent renders.
type EnvoyRender struct {
	NodeID  string `yaml:"node_id"` // Envoy's node id; default: the node's name
	Cluster string `yaml:"cluster"` // Envoy's node cluster; default deephaven
	// XDSPlaintext speaks xDS without TLS, to coordinators with
	// envoy.xds.plaintext; otherwise mutual TLS with XDSTLS.
	XDSPlaintext bool `yaml:"xds_plaintext"`
	// XDSTLS is the cluster CA and a certificate the coordinators accept
	// (default: the agent's tls files).
	XDSTLS tlsutil.Files `yaml:"xds_tls"`
	// ServerCert and ServerKey are the PEM chain and key Envoy presents to
	// clients (Deephaven's guide terminates TLS at Envoy).
	ServerCert string `yaml:"server_cert"`
	ServerKey  string `yaml:"server_key"`
	// ListenerPlaintext serves clients without TLS (a load balancer in
	// front terminates it).
	ListenerPlaintext bool `yaml:"listener_plaintext"`
}

// EnvoyReady is the probe of Envoy's admin /ready.
type EnvoyReady struct {
	Path      string   `yaml:"path"`
	Interval  Duration `yaml:"interval"`
	Timeout   Duration `yaml:"timeout"`
	Failures  int      `yaml:"failures"`
	Successes int      `yaml:"successes"`
}

// Mount is one bind mount into a container; the agent makes every mount
// read-only.
type Mount struct {
	Source string `yaml:"source"` // on the host
	Target string `yaml:"target"` // in the container
}

// Container is how a service runs as a container: what `docker run` is told
// besides the service's user, command (the arguments after the image) and
// environment. The network is always the host's.
type Container struct {
	Name   string
	Image  string
	Mounts []Mount
	// Bootstrap is the host file the agent renders Envoy's bootstrap into
	// before a start; empty when the site supplies its own.
	Bootstrap string
}

// RuntimeDocker runs a service as a Docker container.
const RuntimeDocker = "docker"

// EnvoyService is the name of the Envoy container's service.
const EnvoyService = "envoy"

// EnvoyRole is the role that runs Envoy.
const EnvoyRole = "envoy"

// Where Envoy finds its files in the container.
const (
	EnvoyBootstrapPath  = "/etc/envoy/envoy.yaml"
	EnvoyServerCertPath = "/etc/envoy/tls/server.pem"
	EnvoyServerKeyPath  = "/etc/envoy/tls/server-key.pem"
	EnvoyXDSCAPath      = "/etc/envoy/xds/ca.pem"
	EnvoyXDSCertPath    = "/etc/envoy/xds/cert.pem"
	EnvoyXDSKeyPath     = "/etc/envoy/xds/key.pem"
)

// DefaultEnvoyImage is the image a node runs unless envoy.image says.
const DefaultEnvoyImage = "envoyproxy/envoy:v1.31.2"

func (e *EnvoyContainer) applyDefaults(a *Agent, dir string) {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&e.Container, "deephaven_envoy")
	def(&e.Image, DefaultEnvoyImage)
	def(&e.Docker, "unix:///var/run/docker.sock")
	def(&e.Ready.Path, "/ready")
	if e.Args == nil {
		e.Args = []string{"-c", EnvoyBootstrapPath}
	}
	if e.ListenPort == 0 {
		e.ListenPort = 8000
	}
	if e.AdminPort == 0 {
		e.AdminPort = 8001
	}
	if e.Render.XDSTLS.IsZero() {
		e.Render.XDSTLS = a.TLS
	}
	def(&e.Render.NodeID, a.Node)
	def(&e.Render.Cluster, "deephaven")
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&e.Bootstrap)
	abs(&e.Render.ServerCert)
	abs(&e.Render.ServerKey)
	abs(&e.Render.XDSTLS.CA)
	abs(&e.Render.XDSTLS.Cert)
	abs(&e.Render.XDSTLS.Key)
	for i := range e.Mounts {
		abs(&e.Mounts[i].Source)
	}
	// Envoy's admin answers locally in milliseconds; three misses in a row
	// (6 s) is a hung or unready Envoy, not a slow one.
	setDur(&e.Ready.Interval, 2*time.Second)
	setDur(&e.Ready.Timeout, time.Second)
	setInt(&e.Ready.Failures, 3)
	setInt(&e.Ready.Successes, 1)
	setDur(&e.StartGrace, 30*time.Second)
	setDur(&e.StopTimeout, 10*time.Second) // docker stop's own default
	// Envoy starts in well under a second: a container that lived 10 s
	// was healthy, and five quick deaths within 5 minutes is a broken
	// image or bootstrap that restarting will not fix.
	r := &e.Restart
	setDur(&r.MinUptime, 10*time.Second)
	setDur(&r.BackoffInitial, 200*time.Millisecond)
	setDur(&r.BackoffMax, 30*time.Second)
	setDur(&r.Window, 5*time.Minute)
}

// envoyService validates the envoy: section and returns the service that
// runs the container. The node's envoy role asks for it; an envoy: section
// on a node without the role is a mistake worth naming.
func (n *Node) envoyService(es *Errors, src *source, org origins, hasRole bool) *Service {
	node, key := mapValue(src.root, "envoy")
	if !hasRole {
		if key != nil {
			es.add(src.file, key.Line, "envoy", "the node has no envoy role, so it runs no Envoy container (add envoy to roles:, or remove this section)")
		}
		return nil
	}
	e := &n.Agent.Envoy
	// The limit defaults to 5 only when unset: limit: 0 says never give up.
	if rn, _ := mapValue(node, "restart"); rn == nil {
		e.Restart.Limit = 5
	} else if ln, _ := mapValue(rn, "limit"); ln == nil {
		e.Restart.Limit = 5
	}
	at := func(path ...string) int {
		_, l := locate(org, node, src.file, path...)
		if node == nil {
			return 0
		}
		return l
	}
	bad := func(path []string, format string, args ...any) {
		es.add(src.file, at(path...), "envoy"+dotted(path), format, args...)
	}
	if strings.ContainsAny(e.Container, "/ :") {
		bad([]string{"container"}, "%q is not a container name (letters, digits, _ . -)", e.Container)
	}
	if strings.ContainsAny(e.Image, " \t") {
		bad([]string{"image"}, "%q is not an image reference (e.g. %s)", e.Image, DefaultEnvoyImage)
	}
	if !strings.HasPrefix(e.Docker, "unix://") && !strings.HasPrefix(e.Docker, "tcp://") {
		bad([]string{"docker"}, "%q is not a Docker Engine address (unix:///var/run/docker.sock or tcp://HOST:PORT)", e.Docker)
	}
	for _, p := range []struct {
		key string
		v   int
	}{{"listen_port", e.ListenPort}, {"admin_port", e.AdminPort}} {
		if p.v < 1 || p.v > 65535 {
			bad([]string{p.key}, "%d is not a port (expected 1-65535)", p.v)
		}
	}
	if e.ListenPort == e.AdminPort {
		bad([]string{"admin_port"}, "%d is also listen_port; the admin interface needs its own port", e.AdminPort)
	}
	if !strings.HasPrefix(e.Ready.Path, "/") {
		bad([]string{"ready", "path"}, "%q must start with /", e.Ready.Path)
	}
	if e.Ready.Timeout > e.Ready.Interval {
		bad([]string{"ready", "timeout"}, "timeout %s is longer than interval %s", e.Ready.Timeout.D(), e.Ready.Interval.D())
	}
	if e.Ready.Failures < 1 || e.Ready.Successes < 1 {
		bad([]string{"ready"}, "failures and successes must be at least 1")
	}
	c := &Container{Name: e.Container, Image: e.Image}
	targets := map[string]string{}
	mount := func(source, target string, path ...string) {
		if prev, dup := targets[target]; dup {
			bad(path, "%s is already mounted there from %s", target, prev)
			return
		}
		targets[target] = source
		c.Mounts = append(c.Mounts, Mount{Source: source, Target: target})
	}
	if e.Bootstrap != "" {
		mount(e.Bootstrap, EnvoyBootstrapPath, "bootstrap")
	} else {
		if !n.Agent.Gossip.Enabled() || n.Agent.TLS.IsZero() {
			bad([]string{"bootstrap"}, "missing: the agent renders the bootstrap from the coordinators, which it reaches only through gossip (gossip.bind) with its tls files; without them name a bootstrap file of your own")
		}
		c.Bootstrap = filepath.Join(n.Agent.StateDir, "envoy", "envoy.yaml")
		mount(c.Bootstrap, EnvoyBootstrapPath, "bootstrap")
		r := e.Render
		if !r.ListenerPlaintext {
			if r.ServerCert == "" || r.ServerKey == "" {
				bad([]string{"render"}, "server_cert and server_key are required: the PEM chain and key Envoy presents to clients (or listener_plaintext: true when TLS ends in front of Envoy)")
			} else {
				mount(r.ServerCert, EnvoyServerCertPath, "render", "server_cert")
				mount(r.ServerKey, EnvoyServerKeyPath, "render", "server_key")
			}
		}
		if !r.XDSPlaintext {
			if r.XDSTLS.CA == "" || r.XDSTLS.Cert == "" || r.XDSTLS.Key == "" {
				bad([]string{"render", "xds_tls"}, "the CA, a certificate and its key are required for xDS over mutual TLS (the agent's tls: files by default), or xds_plaintext: true for coordinators with envoy.xds.plaintext")
			} else {
				mount(r.XDSTLS.CA, EnvoyXDSCAPath, "render", "xds_tls", "ca")
				mount(r.XDSTLS.Cert, EnvoyXDSCertPath, "render", "xds_tls", "cert")
				mount(r.XDSTLS.Key, EnvoyXDSKeyPath, "render", "xds_tls", "key")
			}
		}
	}
	for i, m := range e.Mounts {
		p := []string{"mounts", strconv.Itoa(i)}
		switch {
		case m.Source == "":
			bad(append(p, "source"), "missing: the file or directory on this host")
		case m.Target == "" || !path.IsAbs(m.Target):
			bad(append(p, "target"), "%q is not an absolute path in the container", m.Target)
		default:
			mount(m.Source, path.Clean(m.Target), append(p, "target")...)
		}
	}
	s := &Service{
		Name:        EnvoyService,
		Description: "Envoy front proxy (the " + e.Container + " container)",
		Runtime:     RuntimeDocker,
		User:        e.User,
		Command:     e.Args,
		Env:         e.Env,
		Ports:       map[string]int{"listener": e.ListenPort, "admin": e.AdminPort},
		Checks: []Check{{
			Name: "ready", Type: CheckHTTP, Host: "127.0.0.1", Port: "admin", Path: e.Ready.Path, ExpectStatus: 200,
			Interval: e.Ready.Interval, Timeout: e.Ready.Timeout, Failures: e.Ready.Failures, Successes: e.Ready.Successes,
		}},
		StartGrace:  e.StartGrace,
		StopTimeout: e.StopTimeout,
		Restart:     e.Restart,
		Container:   c,
		Origin:      fmt.Sprintf("%s:%d", src.file, at()),
	}
	s.applyDaemonDefaults()
	before := len(*es)
	s.validate(es, func(path ...string) (string, int) {
		// The service's fields come from the envoy: section under other names.
		names := map[string]string{"command": "args", "ports": "listen_port"}
		if len(path) > 0 {
			if k, ok := names[path[0]]; ok {
				path = []string{k}
			}
		}
		return src.file, at(path...)
	})
	for _, e := range (*es)[before:] {
		e.Field = "envoy" + strings.TrimPrefix(e.Field, "services."+EnvoyService)
	}
	return s
}
