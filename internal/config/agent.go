package config

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/dhvisor/dhvisor/internal/graph"
	"github.com/dhvisor/dhvisor/internal/tlsutil"
)

// DefaultAgentPath is where the packaged agent reads its node configuration.
const DefaultAgentPath = "/etc/dhvisor/agent.yaml"

// Agent is a node's /etc/dhvisor/agent.yaml.
type Agent struct {
	Node        string            `yaml:"node"`
	Roles       []string          `yaml:"roles"`
	LauncherDir string            `yaml:"launcher_dir"`
	LogRoot     string            `yaml:"log_root"`
	StateDir    string            `yaml:"state_dir"`
	Socket      string            `yaml:"socket"`
	SocketGroup string            `yaml:"socket_group"`
	RolesDir    string            `yaml:"roles_dir"`
	Alert       Alert             `yaml:"alert"`
	Gossip      Gossip            `yaml:"gossip"`
	API         Endpoint          `yaml:"api"`
	Workers     WorkerRegistry    `yaml:"workers"`
	Packages    Packages          `yaml:"packages"`
	TLS         tlsutil.Files     `yaml:"tls"`
	Envoy       EnvoyContainer    `yaml:"envoy"`
	Vars        map[string]string `yaml:"vars"`
	// Monit names monit control files whose check process entries are
	// services of the node, as monit reads them.
	Monit MonitSource `yaml:"monit"`
	// Defaults are applied to every service of the node before its own
	// entry in Services; both may set any service field.
	Defaults yaml.Node            `yaml:"defaults"`
	Services map[string]yaml.Node `yaml:"services"`
}

// Alert is the hook run when a service fails for good or recovers, with
// MONIT_* environment variables so existing monit alert scripts keep working.
type Alert struct {
	Command []string `yaml:"command"`
	Timeout Duration `yaml:"timeout"`
}

// WorkerRegistry is the HTTP endpoint where the node's dispatchers
// register their query workers for Envoy (the agent API takes them too).
type WorkerRegistry struct {
	// Socket is the unix socket it serves on, default workers.sock beside
	// socket (/run/dhvisor/workers.sock); "off" disables it. Anyone may
	// connect (mode 0666); each call is allowed by who the kernel says
	// calls: root, or a process of the dispatcher service named in the
	// URL (its process tree, or its unit's cgroup).
	Socket string `yaml:"socket"`
	// InsecureTCP serves the endpoint on Listen as well, where the kernel
	// cannot say who calls: any local process can route workers there.
	// Only for a site whose dispatcher hooks cannot reach a unix socket.
	InsecureTCP bool `yaml:"insecure_tcp"`
	// Listen is the loopback host:port of insecure_tcp, default
	// 127.0.0.1:8131.
	Listen string `yaml:"listen"`
}

// WorkersOff disables the workers socket.
const WorkersOff = "off"

// Gossip configures cluster membership. Without bind, the agent runs alone
// and `dhctl status` shows only its node.
type Gossip struct {
	Bind      string   `yaml:"bind"`      // host:port to listen on, e.g. 0.0.0.0:7946
	Advertise string   `yaml:"advertise"` // host:port peers should use, if not bind
	Seeds     []string `yaml:"seeds"`     // host:port of other agents; may be down at start
	KeyFile   string   `yaml:"key_file"`  // base64 AES-256 keys, primary first; empty: no encryption
}

// Enabled reports whether the node takes part in gossip.
func (g Gossip) Enabled() bool { return g.Bind != "" }

// Node is a validated, fully resolved node configuration.
type Node struct {
	File     string
	Agent    Agent
	Services map[string]*Service
	// Levels is the node-local start order: each level depends only on
	// earlier ones. Stop order is the reverse.
	Levels [][]string
	// NotApplied are the monit statements read but with no bearing on
	// supervision, for dhctl validate to list.
	NotApplied []NotApplied
}

// Names returns the node's services in start order.
func (n *Node) Names() []string {
	var out []string
	for _, lv := range n.Levels {
		out = append(out, lv...)
	}
	return out
}

// Graph returns the node-local dependency graph.
func (n *Node) Graph() *graph.Graph {
	g := graph.New()
	for name, s := range n.Services {
		g.Add(name, s.DependsOn...)
	}
	return g
}

// LoadAgent reads, resolves and validates an agent configuration file. Any
// problem fails the whole load: a node never runs half a configuration.
func LoadAgent(file string) (*Node, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, Errors{{File: file, Msg: fmt.Sprintf("cannot read: %v", err)}}
	}
	return ParseAgent(file, data)
}

// ParseAgent is LoadAgent on data already read from file.
func ParseAgent(file string, data []byte) (*Node, error) {
	org := origins{}
	src, err := parseYAML(file, data, org)
	if err != nil {
		return nil, err
	}
	var es Errors
	var a Agent
	if !decodeNode(&es, file, src.root, &a, "") {
		return nil, es
	}
	a.applyDefaults(filepath.Dir(file))
	cat, err := LoadCatalogue(a.RolesDir)
	if err != nil {
		return nil, err
	}
	for k, v := range cat.org {
		org[k] = v
	}
	n := &Node{File: file, Agent: a, Services: map[string]*Service{}}
	n.resolve(&es, cat, src, org)
	if len(es) > 0 {
		return nil, es
	}
	return n, nil
}

func (a *Agent) applyDefaults(dir string) {
	if a.Node == "" {
		a.Node, _ = os.Hostname()
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&a.LauncherDir, "/usr/illumon/latest/bin")
	def(&a.LogRoot, "/var/log/deephaven")
	def(&a.StateDir, "/var/lib/dhvisor")
	def(&a.Socket, "/run/dhvisor/agent.sock")
	def(&a.SocketGroup, "irisadmin")
	def(&a.RolesDir, "/etc/dhvisor/roles.d")
	if a.Workers.InsecureTCP {
		def(&a.Workers.Listen, "127.0.0.1:8131")
	}
	if a.Workers.Socket == "" {
		a.Workers.Socket = filepath.Join(filepath.Dir(a.Socket), "workers.sock")
	}
	// Relative paths are relative to the config file, so a self-contained
	// directory (the demo, a test) works wherever it is.
	if a.Workers.Socket != WorkersOff && a.Workers.Socket != "" && !filepath.IsAbs(a.Workers.Socket) {
		a.Workers.Socket = filepath.Join(dir, a.Workers.Socket)
	}
	for _, p := range []*string{&a.LogRoot, &a.StateDir, &a.Socket, &a.RolesDir, &a.LauncherDir, &a.Gossip.KeyFile, &a.TLS.CA, &a.TLS.Cert, &a.TLS.Key} {
		if *p == "" {
			continue
		}
		if !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	for i, g := range a.Monit.Include {
		if !filepath.IsAbs(g) {
			a.Monit.Include[i] = filepath.Join(dir, g)
		}
	}
	a.Packages.applyDefaults(a.StateDir, dir)
	if a.Alert.Timeout == 0 {
		a.Alert.Timeout = Duration(30 * time.Second)
	}
	a.Envoy.applyDefaults(a, dir)
}

func (n *Node) resolve(es *Errors, cat *Catalogue, src *source, org origins) {
	file := src.file
	rolesNode, rolesKey := mapValue(src.root, "roles")
	if len(n.Agent.Roles) == 0 && len(n.Agent.Services) == 0 && len(n.Agent.Monit.Include) == 0 {
		line := 0
		if rolesKey != nil {
			line = rolesKey.Line
		}
		es.add(file, line, "roles", "the node has no roles, no services and no monit files (expected e.g. roles: [single-node]; known roles: %s)", strings.Join(cat.RoleNames(), ", "))
	}
	n.Agent.Gossip.validate(es, src, org)
	n.validateAPI(es, src, org)
	n.validateWorkers(es, src, org)
	n.validatePackages(es, src, org)
	var names []string
	seen := map[string]bool{}
	for i, r := range n.Agent.Roles {
		svcs, err := cat.Expand([]string{r})
		if err != nil {
			es.add(file, rolesNode.Content[i].Line, "roles."+strconv.Itoa(i), "%v", err)
			continue
		}
		for _, s := range svcs {
			if !seen[s] {
				seen[s] = true
				names = append(names, s)
			}
		}
	}
	imported, importedNames := n.importMonit(es, file, org)
	for _, name := range importedNames {
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	servicesNode, _ := mapValue(src.root, "services")
	defaultsNode, _ := mapValue(src.root, "defaults")
	if defaultsNode != nil {
		var probe Service
		decodeNode(es, file, defaultsNode, &probe, "defaults")
	}
	for i := 0; servicesNode != nil && i+1 < len(servicesNode.Content); i += 2 {
		k, v := servicesNode.Content[i], servicesNode.Content[i+1]
		var probe Service
		decodeNode(es, file, v, &probe, "services."+k.Value)
		if !seen[k.Value] {
			seen[k.Value] = true
			names = append(names, k.Value)
		}
	}
	if len(*es) > 0 {
		return
	}
	if s := n.envoyService(es, src, org, cat.Reaches(n.Agent.Roles, EnvoyRole)); s != nil {
		if seen[EnvoyService] {
			_, line := locate(org, src.root, file, "services", EnvoyService)
			es.add(file, line, "services."+EnvoyService, "the name is taken by the Envoy container of the envoy role (configure it in the envoy: section)")
		}
		n.Services[EnvoyService] = s
	}
	for _, name := range names {
		over, _ := mapValue(servicesNode, name)
		base := cat.services[name]
		if def := imported[name]; def != nil {
			// The monit file says how the service runs; the catalogue
			// only how Envoy reaches it.
			base = merge(merge(routingOnly(base), defaultsNode), def)
		} else {
			base = merge(base, defaultsNode)
		}
		merged := merge(base, over)
		if merged == nil {
			merged = &yaml.Node{Kind: yaml.MappingNode}
		}
		origin := file
		if def := imported[name]; def != nil {
			origin = fmt.Sprintf("%s:%d", org[def], def.Line)
		} else if k := cat.svcKey[name]; k != nil {
			origin = fmt.Sprintf("%s:%d", org[k], k.Line)
		}
		loc := func(path ...string) (string, int) { return locate(org, merged, file, path...) }
		s := &Service{}
		if err := merged.Decode(s); err != nil {
			f, l := loc()
			es.add(f, l, "services."+name, "%v", err)
			continue
		}
		s.Name, s.Origin = name, origin
		if !s.IsEnabled() {
			continue
		}
		s.applyDefaults()
		n.expand(es, s, loc)
		s.validate(es, loc)
		n.Services[name] = s
	}
	n.validateNode(es, cat, func(name string, path ...string) (string, int) {
		if s := n.Services[name]; s != nil && s.Container != nil {
			// The Envoy container is written in the envoy: section.
			return locate(org, src.root, file, EnvoyService)
		}
		over, _ := mapValue(servicesNode, name)
		base := cat.services[name]
		if def := imported[name]; def != nil {
			base = merge(routingOnly(base), def)
		}
		return locate(org, merge(base, over), file, path...)
	})
}

// validateNode checks what involves several services: ports, Envoy routes,
// dependencies, order.
func (n *Node) validateNode(es *Errors, cat *Catalogue, loc func(name string, path ...string) (string, int)) {
	type owner struct{ svc, port string }
	ports := map[int]owner{}
	// blame reports a clash between two services' settings on the side the
	// operator wrote in this node's file, which is where the fix belongs.
	blame := func(svc string, path []string, other string, otherPath []string, format string, args ...any) {
		f, l := loc(svc, path...)
		if of, ol := loc(other, otherPath...); of == n.File && f != n.File {
			svc, other, f, l, path = other, svc, of, ol, otherPath
		}
		es.add(f, l, "services."+svc+"."+strings.Join(path[:2], "."), format, append(args, other)...)
	}
	type route struct {
		svc  string
		path []string
	}
	routes := map[string]route{} // by prefix
	var defaultRoute string
	for _, name := range sortedKeys(n.Services) {
		s := n.Services[name]
		if e := s.Envoy; e != nil {
			for i, r := range e.Routes {
				at := []string{"envoy", "routes", strconv.Itoa(i)}
				if prev, dup := routes[r]; dup && prev.svc != name {
					blame(name, at, prev.svc, prev.path, "%q is also routed to %s; a prefix goes to one service", r)
				}
				routes[r] = route{name, at}
			}
			if e.Default {
				if defaultRoute != "" {
					blame(name, []string{"envoy", "default"}, defaultRoute, []string{"envoy", "default"}, "%s takes Envoy's default route too; one service may")
				}
				defaultRoute = name
			}
		}
		for _, pn := range sortedKeys(s.Ports) {
			p := s.Ports[pn]
			if prev, dup := ports[p]; dup {
				cur := owner{name, pn}
				f, l := loc(cur.svc, "ports", cur.port)
				// Blame the side the operator wrote in this node's file, which
				// is where the fix belongs.
				if pf, pl := loc(prev.svc, "ports", prev.port); pf == n.File && f != n.File {
					cur, prev, f, l = prev, cur, pf, pl
				}
				es.add(f, l, "services."+cur.svc+".ports."+cur.port, "port %d is also used by %s (ports.%s); two services cannot listen on one port", p, prev.svc, prev.port)
				continue
			}
			ports[p] = owner{name, pn}
		}
		for i, d := range s.DependsOn {
			if _, local := n.Services[d]; !local && !cat.HasService(d) {
				f, l := loc(name, "depends_on", strconv.Itoa(i))
				es.add(f, l, "services."+name+".depends_on", "unknown service %q", d)
			}
		}
	}
	levels, err := n.Graph().Levels()
	if err != nil {
		first := strings.Split(strings.TrimPrefix(err.Error(), "dependency cycle: "), " -> ")[0]
		f, l := loc(first, "depends_on")
		es.add(f, l, "services."+first+".depends_on", "%v", err)
		return
	}
	n.Levels = levels
}

// templateData is what a service's command, environment and paths may refer to.
type templateData struct {
	Name, User, LauncherDir, LogRoot, LogDir, Node, Ports string
}

func (n *Node) expand(es *Errors, s *Service, loc func(path ...string) (string, int)) {
	ports := make([]string, 0, len(s.Ports))
	for _, p := range s.PortNumbers() {
		ports = append(ports, strconv.Itoa(p))
	}
	data := templateData{Name: s.Name, User: s.User, LauncherDir: n.Agent.LauncherDir, LogRoot: n.Agent.LogRoot, Node: n.Agent.Node, Ports: strings.Join(ports, ",")}
	funcs := template.FuncMap{
		"port": func(name string) (int, error) {
			if p, ok := s.Ports[name]; ok {
				return p, nil
			}
			return 0, fmt.Errorf("service has no port named %q", name)
		},
		"var": func(name string) (string, error) {
			if v, ok := n.Agent.Vars[name]; ok {
				return v, nil
			}
			return "", fmt.Errorf("no variable %q in the agent's vars", name)
		},
	}
	exp := func(text string, path ...string) string {
		if !strings.Contains(text, "{{") {
			return text
		}
		t, err := template.New("").Funcs(funcs).Option("missingkey=error").Parse(text)
		var buf bytes.Buffer
		if err == nil {
			err = t.Execute(&buf, data)
		}
		if err != nil {
			f, l := loc(path...)
			es.add(f, l, "services."+s.Name+dotted(path), "template %q: %v", text, cleanTemplateErr(err))
			return text
		}
		return buf.String()
	}
	s.LogDir = exp(s.LogDir, "log_dir")
	data.LogDir = s.LogDir
	s.WorkDir = exp(s.WorkDir, "workdir")
	for i := range s.Command {
		s.Command[i] = exp(s.Command[i], "command", strconv.Itoa(i))
	}
	for _, k := range sortedKeys(s.Env) {
		s.Env[k] = exp(s.Env[k], "env", k)
	}
	for i := range s.EnvFiles {
		s.EnvFiles[i] = exp(s.EnvFiles[i], "env_files", strconv.Itoa(i))
	}
	for _, k := range sortedKeys(s.Credentials) {
		s.Credentials[k] = exp(s.Credentials[k], "credentials", k)
	}
	for i := range s.Checks {
		c := &s.Checks[i]
		for j := range c.Command {
			c.Command[j] = exp(c.Command[j], "checks", strconv.Itoa(i), "command", strconv.Itoa(j))
		}
		c.Path = exp(c.Path, "checks", strconv.Itoa(i), "path")
		c.Pattern = exp(c.Pattern, "checks", strconv.Itoa(i), "pattern")
		c.FatalPattern = exp(c.FatalPattern, "checks", strconv.Itoa(i), "fatal_pattern")
	}
}

func cleanTemplateErr(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		return msg[i+2:]
	}
	return msg
}

// ServiceNames returns the node's services sorted by name.
func (n *Node) ServiceNames() []string {
	return sortedKeys(n.Services)
}

// validateAPI checks api: and the tls files the TCP API needs.
func (n *Node) validateAPI(es *Errors, src *source, org origins) {
	a := n.Agent.API
	a.validate(es, src, org, "api", "10.0.0.5:8130")
	if a.Listen == "" {
		return
	}
	// A missing file is blamed on the tls section, or on api.listen
	// that needs it when there is no tls section at all.
	_, at := locate(org, src.root, src.file, "api", "listen")
	if tn, _ := mapValue(src.root, "tls"); tn != nil {
		_, at = locate(org, src.root, src.file, "tls")
	}
	for _, f := range []struct{ key, val string }{{"ca", n.Agent.TLS.CA}, {"cert", n.Agent.TLS.Cert}, {"key", n.Agent.TLS.Key}} {
		if f.val == "" {
			es.add(src.file, at, "tls."+f.key, "required with api.listen: the TCP API speaks mutual TLS only")
		}
	}
}

// validateWorkers checks workers.listen and insecure_tcp.
func (n *Node) validateWorkers(es *Errors, src *source, org origins) {
	w := n.Agent.Workers
	_, line := locate(org, src.root, src.file, "workers", "listen")
	if !w.InsecureTCP {
		if w.Listen != "" && w.Listen != WorkersOff {
			es.add(src.file, line, "workers.listen", "%q: the TCP endpoint cannot tell who calls, so any local process could route workers; register over workers.socket, or set workers.insecure_tcp: true to keep it knowingly", w.Listen)
		}
		return
	}
	if w.Listen == WorkersOff {
		es.add(src.file, line, "workers.listen", "off, but workers.insecure_tcp is true: give it a loopback host:port (e.g. 127.0.0.1:8131)")
		return
	}
	host, _, err := SplitHostPort(w.Listen)
	if err != nil {
		es.add(src.file, line, "workers.listen", "%q is not host:port (e.g. 127.0.0.1:8131)", w.Listen)
		return
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		es.add(src.file, line, "workers.listen", "%q is not a loopback address: anyone who reaches it can route workers in Envoy (use 127.0.0.1:PORT)", w.Listen)
	}
}

// wildcard reports whether host listens on every address.
func wildcard(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// SplitHostPort parses an address such as 10.0.0.5:7946.
func SplitHostPort(hp string) (string, int, error) {
	host, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number 0-65535", p)
	}
	return host, port, nil
}
