package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
)

// DefaultCoordinatorPath is where the packaged coordinator reads its
// configuration.
const DefaultCoordinatorPath = "/etc/dhvisor/coordinator.yaml"

// Coordinator is a coordinator replica's /etc/dhvisor/coordinator.yaml.
type Coordinator struct {
	// Node is the replica's raft server id; the hostname by default.
	Node    string        `yaml:"node"`
	DataDir string        `yaml:"data_dir"`
	API     Listen        `yaml:"api"`
	Raft    Raft          `yaml:"raft"`
	Gossip  Gossip        `yaml:"gossip"`
	TLS     tlsutil.Files `yaml:"tls"`
	// Operations holds the health-gate defaults of cluster-wide operations.
	Operations Operations `yaml:"operations"`
}

// Listen is a TCP API's address.
type Listen struct {
	Listen    string `yaml:"listen"`    // host:port to listen on
	Advertise string `yaml:"advertise"` // host:port others dial, if not listen
}

// Addr is the address others dial.
func (l Listen) Addr() string {
	if l.Advertise != "" {
		return l.Advertise
	}
	return l.Listen
}

// Raft configures the replica's consensus.
type Raft struct {
	Listen `yaml:",inline"`
	// Bootstrap lists the initial voters, the same list on each of them
	// (like etcd's initial-cluster). Used only on a fresh data_dir; empty
	// means this replica waits for `dhctl coordinator join`.
	Bootstrap        []RaftPeer `yaml:"bootstrap"`
	HeartbeatTimeout Duration   `yaml:"heartbeat_timeout"`
	ElectionTimeout  Duration   `yaml:"election_timeout"`
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
	if c.Raft.Listen.Listen == "" {
		c.Raft.Listen.Listen = "0.0.0.0:8126"
	}
	for _, p := range []*string{&c.DataDir, &c.TLS.CA, &c.TLS.Cert, &c.TLS.Key, &c.Gossip.KeyFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
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
	hostPort := func(v string, concrete bool, path ...string) {
		host, _, err := SplitHostPort(v)
		field := strings.Join(path, ".")
		switch {
		case err != nil:
			es.add(file, at(path...), field, "%q is not host:port (e.g. 10.0.0.5:8125)", v)
		case concrete && (host == "" || host == "0.0.0.0" || host == "::"):
			es.add(file, at(path...), field, "%q: others dial this address, so it needs a concrete host, not a wildcard", v)
		}
	}
	listen := func(l Listen, name string) {
		hostPort(l.Listen, false, name, "listen")
		if l.Advertise != "" {
			hostPort(l.Advertise, true, name, "advertise")
		} else if host, _, err := SplitHostPort(l.Listen); err == nil && (host == "" || host == "0.0.0.0" || host == "::") {
			es.add(file, at(name), name+".advertise", "listen %q is a wildcard: set advertise to the address other coordinators and dhctl dial", l.Listen)
		}
	}
	listen(c.API, "api")
	listen(c.Raft.Listen, "raft")
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
		hostPort(p.Addr, true, "raft", "bootstrap", idx, "addr")
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
	} else {
		hostPort(c.Gossip.Bind, false, "gossip", "bind")
	}
	if c.Gossip.Advertise != "" {
		hostPort(c.Gossip.Advertise, true, "gossip", "advertise")
	}
	for i, s := range c.Gossip.Seeds {
		hostPort(s, false, "gossip", "seeds", strconv.Itoa(i))
	}
	if c.Operations.MinHealthyTime >= c.Operations.HealthyDeadline {
		es.add(file, at("operations", "min_healthy_time"), "operations.min_healthy_time", "%v must be shorter than healthy_deadline (%v)", c.Operations.MinHealthyTime.D(), c.Operations.HealthyDeadline.D())
	}
}
