package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
)

// DefaultCoordinatorPath is where the packaged coordinator reads its
// configuration.
const DefaultCoordinatorPath = "/etc/dhvisor/coordinator.yaml"

// DefaultXDSPort is where a coordinator serves xDS unless envoy.xds.listen
// says otherwise: next to its API (8125) and raft (8126) ports, and not
// 8124, Deephaven's envoy.xds.port, where the configuration server serves
// its own xDS on the same infrastructure node.
const DefaultXDSPort = 8127

// Coordinator is a coordinator replica's /etc/dhvisor/coordinator.yaml.
type Coordinator struct {
	// Node is the replica's raft server id; the hostname by default.
	Node    string        `yaml:"node"`
	DataDir string        `yaml:"data_dir"`
	API     Endpoint      `yaml:"api"`
	Raft    Raft          `yaml:"raft"`
	Gossip  Gossip        `yaml:"gossip"`
	TLS     tlsutil.Files `yaml:"tls"`
	// Operations holds the health-gate defaults of cluster-wide operations.
	Operations Operations `yaml:"operations"`
	// Envoy is the xDS server every replica runs for the nodes' Envoys.
	Envoy Envoy `yaml:"envoy"`
}

// Envoy configures what the coordinator tells Envoy.
type Envoy struct {
	XDS XDS `yaml:"xds"`
	// ExtraRoutesFile is a Deephaven properties file read for
	// envoy.xds.extra.routes.* keys, by the raft leader only, which loads
	// it into raft when it starts to lead and when the file changes (see
	// package extraroutes and LoadExtraRoutes). Relative to the
	// configuration file's directory.
	ExtraRoutesFile string `yaml:"extra_routes_file"`
	// ExtraRoutes are site routes written here: a mapping of route name to
	// the keys host, port, prefix, prefix_rewrite, tls and exact_prefix,
	// with the rules and defaults of Deephaven's properties. Kept as written
	// (so every problem is reported with its line); Routes holds them
	// validated.
	ExtraRoutes yaml.Node `yaml:"extra_routes"`
	// Routes are the ExtraRoutes, validated, defaults applied, sorted by
	// name. LoadExtraRoutes adds those of ExtraRoutesFile.
	Routes []ExtraRoute `yaml:"-"`
}

// XDS is the xDS server's endpoint: Envoy's bootstrap lists every replica's.
type XDS struct {
	// Endpoint: listen defaults to 0.0.0.0:8127 (DefaultXDSPort); advertise
	// is what Envoys dial, required when listen is on every address.
	Endpoint `yaml:",inline"`
	// Plaintext serves xDS without TLS, for Envoy on Deephaven's stock
	// bootstrap; false (the default) is mutual TLS with the cluster CA.
	Plaintext bool `yaml:"plaintext"`
	// Upstream is the configuration server's xDS, whose workers the
	// leader imports; nil: none.
	Upstream *XDSUpstream `yaml:"upstream"`
	// UpstreamGrace is how long the imported workers stay while the
	// upstream stream is down; default 10m.
	UpstreamGrace Duration `yaml:"upstream_grace"`
}

// Raft configures the replica's consensus.
type Raft struct {
	Endpoint `yaml:",inline"`
	// Bootstrap lists the initial voters, the same list on each of them
	// (like etcd's initial-cluster). Used only on a fresh data_dir; empty
	// means this replica waits for `dhctl coordinator join`.
	Bootstrap        []RaftPeer `yaml:"bootstrap"`
	HeartbeatTimeout Duration   `yaml:"heartbeat_timeout"`
	ElectionTimeout  Duration   `yaml:"election_timeout"`
	// CommitTimeout: how late at most a follower learns of a commit (and
	// serves it to its Envoy clients); zero keeps dhvisor's 5 ms.
	CommitTimeout Duration `yaml:"commit_timeout"`
	// SnapshotThreshold and TrailingLogs: zero keeps hashicorp/raft's
	// defaults (8192 and 10240 entries).
	SnapshotThreshold uint64 `yaml:"snapshot_threshold"`
	TrailingLogs      uint64 `yaml:"trailing_logs"`
}

// RaftPeer is one voter of the initial cluster.
type RaftPeer struct {
	ID   string `yaml:"id"`
	Addr string `yaml:"addr"`
}

// Operations are the defaults of Nomad-style health gates.
type Operations struct {
	MinHealthyTime   Duration `yaml:"min_healthy_time"`
	HealthyDeadline  Duration `yaml:"healthy_deadline"`
	ProgressDeadline Duration `yaml:"progress_deadline"`
}

// LoadCoordinator reads and validates a coordinator configuration; any
// problem refuses the whole file.
func LoadCoordinator(file string) (*Coordinator, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, Errors{{File: file, Msg: fmt.Sprintf("cannot read: %v", err)}}
	}
	return ParseCoordinator(file, data)
}

// ParseCoordinator is LoadCoordinator on data already read from file.
func ParseCoordinator(file string, data []byte) (*Coordinator, error) {
	org := origins{}
	src, err := parseYAML(file, data, org)
	if err != nil {
		return nil, err
	}
	var es Errors
	var c Coordinator
	if !decodeNode(&es, file, src.root, &c, "") {
		return nil, es
	}
	c.applyDefaults(filepath.Dir(file))
	c.validate(&es, src, org)
	if len(es) > 0 {
		return nil, es
	}
	return &c, nil
}

func (c *Coordinator) applyDefaults(dir string) {
	if c.Node == "" {
		c.Node, _ = os.Hostname()
	}
	if c.DataDir == "" {
		c.DataDir = "/var/lib/dhvisor/coordinator"
	}
	if c.API.Listen == "" {
		c.API.Listen = "0.0.0.0:8125"
	}
	if c.Raft.Listen == "" {
		c.Raft.Listen = "0.0.0.0:8126"
	}
	if c.Envoy.XDS.Listen == "" {
		c.Envoy.XDS.Listen = "0.0.0.0:" + strconv.Itoa(DefaultXDSPort)
	}
	for _, p := range []*string{&c.DataDir, &c.TLS.CA, &c.TLS.Cert, &c.TLS.Key, &c.Gossip.KeyFile, &c.Envoy.ExtraRoutesFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	c.applyUpstreamDefaults(dir)
	o := &c.Operations
	for _, d := range []struct {
		v   *Duration
		def time.Duration
	}{{&o.MinHealthyTime, 10 * time.Second}, {&o.HealthyDeadline, 5 * time.Minute}, {&o.ProgressDeadline, 10 * time.Minute}} {
		if *d.v == 0 {
			*d.v = Duration(d.def)
		}
	}
}

func (c *Coordinator) validate(es *Errors, src *source, org origins) {
	file := src.file
	at := func(path ...string) int {
		_, l := locate(org, src.root, file, path...)
		return l
	}
	c.API.validate(es, src, org, "api", "10.0.0.5:8125")
	c.Raft.Endpoint.validate(es, src, org, "raft", "10.0.0.5:8126")
	ids := map[string]bool{}
	self := false
	for i, p := range c.Raft.Bootstrap {
		idx := strconv.Itoa(i)
		if p.ID == "" {
			es.add(file, at("raft", "bootstrap", idx), "raft.bootstrap."+idx+".id", "missing (the replica's node name)")
		}
		if ids[p.ID] {
			es.add(file, at("raft", "bootstrap", idx), "raft.bootstrap."+idx+".id", "%q is listed twice", p.ID)
		}
		ids[p.ID] = true
		self = self || p.ID == c.Node
		if msg := notDialable(p.Addr, "10.0.0.5:8126"); msg != "" {
			es.add(file, at("raft", "bootstrap", idx, "addr"), "raft.bootstrap."+idx+".addr", "%s", msg)
		}
	}
	if len(c.Raft.Bootstrap) > 0 && !self {
		es.add(file, at("raft", "bootstrap"), "raft.bootstrap", "does not list this replica (node %q); list every initial voter, the same list on each", c.Node)
	}
	for _, f := range []struct{ name, v string }{{"ca", c.TLS.CA}, {"cert", c.TLS.Cert}, {"key", c.TLS.Key}} {
		if f.v == "" {
			es.add(file, at("tls"), "tls."+f.name, "missing: every coordinator port speaks mutual TLS (make the files with `dhctl tls`)")
		}
	}
	if c.Gossip.Bind == "" {
		es.add(file, at("gossip"), "gossip.bind", "missing: the coordinator learns the nodes and their health from the agents' gossip (e.g. bind: 0.0.0.0:7946, seeds: [agent1:7946])")
	}
	c.Gossip.validate(es, src, org)
	if c.Operations.MinHealthyTime >= c.Operations.HealthyDeadline {
		es.add(file, at("operations", "min_healthy_time"), "operations.min_healthy_time", "%v must be shorter than healthy_deadline (%v)", c.Operations.MinHealthyTime.D(), c.Operations.HealthyDeadline.D())
	}
	c.validateEnvoy(es, src, org)
}

// validateEnvoy checks envoy: its xDS endpoint, that the extra routes file
// is there (its routes are read by LoadExtraRoutes, at start and whenever it
// changes), and the routes written in coordinator.yaml.
func (c *Coordinator) validateEnvoy(es *Errors, src *source, org origins) {
	envoy, _ := mapValue(src.root, "envoy")
	c.Envoy.XDS.Endpoint.validate(es, nested(src, org, "envoy.xds", envoy, "xds"), org, "envoy.xds", "10.0.0.5:"+strconv.Itoa(DefaultXDSPort))
	c.validateUpstream(es, src, org)
	if f := c.Envoy.ExtraRoutesFile; f != "" {
		_, line := locate(org, src.root, src.file, "envoy", "extra_routes_file")
		if st, err := os.Stat(f); err != nil {
			es.add(src.file, line, "envoy.extra_routes_file", "cannot read %s: %v (expected a Deephaven properties file with envoy.xds.extra.routes.* keys)", f, errors.Unwrap(err))
		} else if st.IsDir() {
			es.add(src.file, line, "envoy.extra_routes_file", "%s is a directory (expected a Deephaven properties file with envoy.xds.extra.routes.* keys)", f)
		}
	}
	routes, _ := mapValue(envoy, "extra_routes")
	c.Envoy.Routes = parseYAMLRoutes(es, src.file, routes)
}

// nested presents the value of key below parent as the only top-level key
// name of a source, so code that validates a top-level section (such as
// Endpoint.validate) reports a nested one under its full dotted name with
// the right lines. A missing section is located at parent, or the top.
func nested(src *source, org origins, name string, parent *yaml.Node, key string) *source {
	val, keyNode := mapValue(parent, key)
	at := parent
	if at == nil {
		at = src.root
	}
	root := &yaml.Node{Kind: yaml.MappingNode, Line: at.Line}
	org[root] = src.file
	if val != nil {
		k := &yaml.Node{Kind: yaml.ScalarNode, Value: name, Line: keyNode.Line}
		org[k] = src.file
		root.Content = []*yaml.Node{k, val}
	}
	return &source{file: src.file, root: root}
}
