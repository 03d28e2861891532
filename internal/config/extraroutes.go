package config

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/dhvisor/dhvisor/internal/properties"
)

// ExtraRoute is one site route Envoy gets besides Deephaven's own, from
// Deephaven's envoy.xds.extra.routes.<name>.* properties (as the
// configuration server sees them) or from the coordinator's
// envoy.extra_routes.
type ExtraRoute struct {
	Name          string
	Host          string
	Port          int
	Prefix        string // as written, e.g. /grafana
	PrefixRewrite string // default "/"
	TLS           bool   // default true
	// ExactPrefix false (the default) matches the prefix both with and
	// without a trailing "/".
	ExactPrefix bool
	Origin      string // file:line it came from, for messages
}

// ExtraRoutePropertyPrefix starts every Deephaven property of an extra
// route: envoy.xds.extra.routes.<name>.<key>.
const ExtraRoutePropertyPrefix = "envoy.xds.extra.routes."

// routeKeys are a route's keys as Deephaven's properties spell them and as
// coordinator.yaml does. The property spelling is the canonical one.
var routeKeys = []struct{ prop, yaml string }{
	{"host", "host"},
	{"port", "port"},
	{"prefix", "prefix"},
	{"prefixRewrite", "prefix_rewrite"},
	{"tls", "tls"},
	{"exactPrefix", "exact_prefix"},
}

// reservedPrefixes are refused as an extra route's prefix, also with a
// trailing "/". under: anything below prefix+"/" is refused too, because a
// longer prefix there would take part of the owner's traffic.
var reservedPrefixes = []struct {
	prefix, owner string
	under         bool
}{
	{"/", "", false},
	{"/worker", "", true},
	{"/cus", "", false},
	{"/comm", "", false},
	{"/iris", "", true},
	{"/iriside", "web_api_service", true},
	{"/acl", "the ACL write server (db_acl_write_server)", true},
	{"/io.deephaven.proto.auth.grpc.AuthApi", "the authentication server's gRPC API", true},
	{"/io.deephaven.proto.controller.grpc.ControllerApi", "the controller's gRPC API", true},
}

// routeSyntax is how one kind of file spells the keys of its routes, so the
// rules below report each problem under the key as the operator wrote it.
type routeSyntax struct {
	base string // the routes' key: envoy.xds.extra.routes or envoy.extra_routes
	yaml bool   // spell keys the coordinator.yaml way
}

var (
	propertySyntax = routeSyntax{base: strings.TrimSuffix(ExtraRoutePropertyPrefix, ".")}
	yamlSyntax     = routeSyntax{base: "envoy.extra_routes", yaml: true}
)

func (s routeSyntax) spell(canonical string) string {
	for _, k := range routeKeys {
		if k.prop == canonical {
			if s.yaml {
				return k.yaml
			}
			return k.prop
		}
	}
	return canonical
}

// key is the full key of one of a route's keys, e.g.
// envoy.xds.extra.routes.grafana.host.
func (s routeSyntax) key(name, canonical string) string {
	if canonical == "" {
		return s.base + "." + name
	}
	return s.base + "." + name + "." + s.spell(canonical)
}

func (s routeSyntax) known() string {
	var out []string
	for _, k := range routeKeys {
		out = append(out, s.spell(k.prop))
	}
	return strings.Join(out, ", ")
}

// canonical maps a key as written to the property spelling, or "".
func (s routeSyntax) canonical(written string) string {
	for _, k := range routeKeys {
		if written == s.spell(k.prop) {
			return k.prop
		}
	}
	return ""
}

// unknownKey reports a key that is not one of a route's, suggesting the
// known key it differs from only in case or underscores, the usual typo.
func (s routeSyntax) unknownKey(es *Errors, file string, line int, name, written string) {
	hint := ""
	fold := func(k string) string { return strings.ToLower(strings.ReplaceAll(k, "_", "")) }
	for _, k := range routeKeys {
		if fold(written) == fold(k.prop) {
			hint = fmt.Sprintf("; did you mean %s?", s.spell(k.prop))
		}
	}
	es.add(file, line, s.base+"."+name+"."+written, "unknown key (expected one of %s)%s", s.known(), hint)
}

// rawRoute is one route's keys as written, before the rules are applied.
type rawRoute struct {
	name string
	file string
	line int               // of its first key
	vals map[string]rawVal // by canonical key
}

type rawVal struct {
	value string
	file  string // with includefiles, a route's keys may come from several files
	line  int
}

func routeNameOK(name string) bool {
	if name == "" {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-') {
			return false
		}
	}
	return true
}

// build applies the rules to one route: defaults as Deephaven documents
// them (port 443 with TLS else 80, prefixRewrite "/", tls true, exactPrefix
// false), and every check. ok is false when anything was refused.
func (s routeSyntax) build(es *Errors, r *rawRoute) (ExtraRoute, bool) {
	before := len(*es)
	// Every key's problem is reported in the file that key came from.
	bad := func(canonical string, line int, format string, args ...any) {
		file := r.file
		if v, ok := r.vals[canonical]; ok && v.line == line {
			file = v.file
		}
		es.add(file, line, s.key(r.name, canonical), format, args...)
	}
	get := func(k string) (string, int, bool) {
		v, ok := r.vals[k]
		if !ok {
			return "", r.line, false
		}
		return strings.TrimSpace(v.value), v.line, true
	}
	boolean := func(k string, def bool) bool {
		v, line, ok := get(k)
		if !ok {
			return def
		}
		switch strings.ToLower(v) {
		case "true":
			return true
		case "false":
			return false
		}
		bad(k, line, "%q is not true or false", v)
		return def
	}
	rt := ExtraRoute{Name: r.name, Origin: fmt.Sprintf("%s:%d", r.file, r.line)}
	if !routeNameOK(r.name) {
		bad("", r.line, "route name %q cannot be used in an Envoy cluster name (expected letters, digits, '_', '.' and '-')", r.name)
	}
	host, line, ok := get("host")
	switch {
	case !ok || host == "":
		bad("host", line, "missing: the host name or address Envoy sends the route's requests to (e.g. grafana.example.com)")
	case strings.Contains(host, "/") || strings.ContainsAny(host, " \t") || strings.Count(host, ":") == 1:
		bad("host", line, "%q is not a host name or address (the port goes in %s, the path in %s)", host, s.spell("port"), s.spell("prefix"))
	}
	rt.Host = strings.Trim(host, "[]")
	rt.TLS = boolean("tls", true)
	rt.ExactPrefix = boolean("exactPrefix", false)
	rt.Port = 80
	if rt.TLS {
		rt.Port = 443
	}
	if v, line, ok := get("port"); ok {
		if n, err := strconv.Atoi(v); err != nil || n < 1 || n > 65535 {
			bad("port", line, "%q is not a port number (expected 1-65535)", v)
		} else {
			rt.Port = n
		}
	}
	prefix, line, ok := get("prefix")
	rt.Prefix = prefix
	switch {
	case !ok || prefix == "":
		bad("prefix", line, "missing: the path prefix Envoy routes by (e.g. /%s)", r.name)
	case prefix[0] != '/':
		bad("prefix", line, "%q must start with /", prefix)
	default:
		if msg := reservedPrefix(prefix); msg != "" {
			bad("prefix", line, "%s", msg)
		}
	}
	rt.PrefixRewrite = "/"
	if v, line, ok := get("prefixRewrite"); ok {
		if v == "" || v[0] != '/' {
			bad("prefixRewrite", line, "%q must start with / (it replaces the prefix in the path sent upstream)", v)
		} else {
			rt.PrefixRewrite = v
		}
	}
	return rt, len(*es) == before
}

// reservedPrefix says why prefix cannot be an extra route's, or "".
func reservedPrefix(prefix string) string {
	p := prefix
	if len(p) > 1 {
		p = strings.TrimSuffix(p, "/")
	}
	var deephaven []string
	for _, r := range reservedPrefixes {
		if r.owner == "" {
			deephaven = append(deephaven, r.prefix)
		}
	}
	for _, r := range reservedPrefixes {
		if p != r.prefix && !(r.under && strings.HasPrefix(p, r.prefix+"/")) {
			continue
		}
		under := ""
		if p != r.prefix {
			under = " is under " + r.prefix + "/, which"
		}
		if r.owner == "" {
			return fmt.Sprintf("%q%s is reserved by Deephaven (reserved: %s and anything under /worker/ and /iris/)", prefix, under, strings.Join(deephaven, ", "))
		}
		return fmt.Sprintf("%q%s is taken by dhvisor's built-in route to %s", prefix, under, r.owner)
	}
	return ""
}

// prefixKey is what two routes must not share: a prefix with and without
// its trailing "/" is the same route for Envoy (exactPrefix false matches
// both), so it counts once.
func prefixKey(prefix string) string {
	if len(prefix) > 1 {
		return strings.TrimSuffix(prefix, "/")
	}
	return prefix
}

// buildRoutes applies the rules to every route, and refuses two routes on
// one prefix. The result is sorted by name.
func (s routeSyntax) buildRoutes(es *Errors, raws []*rawRoute) []ExtraRoute {
	sort.Slice(raws, func(i, j int) bool { return raws[i].name < raws[j].name })
	var out []ExtraRoute
	byPrefix := map[string]ExtraRoute{}
	for _, r := range raws {
		rt, ok := s.build(es, r)
		if !ok {
			continue
		}
		if prev, dup := byPrefix[prefixKey(rt.Prefix)]; dup {
			file, line := r.file, r.line
			if v, ok := r.vals["prefix"]; ok {
				file, line = v.file, v.line
			}
			es.add(file, line, s.key(r.name, "prefix"), "%q is already the prefix of route %q (%s); two routes cannot share a prefix", rt.Prefix, prev.Name, prev.Origin)
			continue
		}
		byPrefix[prefixKey(rt.Prefix)] = rt
		out = append(out, rt)
	}
	return out
}

// ExtraRoutesProcess is the process whose view of Deephaven's properties
// gives the extra routes: Deephaven's configuration server builds Envoy's
// routes from envoy.xds.extra.routes.*, so a route written in another
// process's scope is not one Envoy would get.
const ExtraRoutesProcess = "configuration_server"

// ExtraRoutesScope is the configuration server's scope on a host with
// these names (see properties.LocalHosts): the service.name and
// process.name Deephaven's launcher gives it.
func ExtraRoutesScope(hosts []string) properties.Context {
	return properties.Context{Hosts: hosts, Props: properties.ProcessProps(ExtraRoutesProcess)}
}

// exactAlias is accepted for exactPrefix in properties files.
const exactAlias = "exact"

// ParseExtraRoutes reads the envoy.xds.extra.routes.<name>.<key> properties
// of a Deephaven properties file (file names it in messages; open reads its
// includefiles) as the process of scope sees them (ExtraRoutesScope), and
// ignores every other property. The file is read by Deephaven's rules
// (package properties): keys in a scope that does not match are not there,
// a key is split from its value only at = or :, not at a blank. Every
// problem is reported, with the file, the line and the full key; any
// problem refuses the whole file. The routes are sorted by name; each
// one's Origin is the place of its first key.
func ParseExtraRoutes(file string, data []byte, open properties.Opener, scope properties.Context) ([]ExtraRoute, error) {
	f, err := properties.Parse(file, data, open)
	if err != nil {
		return nil, err
	}
	props, err := f.Eval(scope)
	if err != nil {
		return nil, err
	}
	var keys []string
	for k := range props {
		if strings.HasPrefix(k, ExtraRoutePropertyPrefix) {
			keys = append(keys, k)
		}
	}
	// In the order they were assigned, so a route's first key is its
	// origin, problems are listed as they appear, and of exact and
	// exactPrefix the later holds.
	sort.Slice(keys, func(i, j int) bool { return props[keys[i]].Seq < props[keys[j]].Seq })
	var es Errors
	byName := map[string]*rawRoute{}
	var raws []*rawRoute
	for _, key := range keys {
		v := props[key]
		file, line := v.Pos.File, v.Pos.Line
		rest := strings.TrimPrefix(key, ExtraRoutePropertyPrefix)
		i := strings.LastIndexByte(rest, '.')
		if i <= 0 || i == len(rest)-1 {
			es.add(file, line, key, "expected %s<name>.<key>, <key> one of %s", ExtraRoutePropertyPrefix, propertySyntax.known())
			continue
		}
		name, written := rest[:i], rest[i+1:]
		r := byName[name]
		if r == nil {
			r = &rawRoute{name: name, file: file, line: line, vals: map[string]rawVal{}}
			byName[name] = r
			raws = append(raws, r)
		}
		k := propertySyntax.canonical(written)
		if written == exactAlias {
			k = "exactPrefix"
		}
		if k == "" {
			propertySyntax.unknownKey(&es, file, line, name, written)
			continue
		}
		r.vals[k] = rawVal{value: v.Value, file: file, line: line}
	}
	routes := propertySyntax.buildRoutes(&es, raws)
	if len(es) > 0 {
		return nil, es
	}
	return routes, nil
}

// LoadExtraRoutes returns every extra route of a coordinator.yaml: those of
// its envoy.extra_routes and those of its envoy.extra_routes_file, read now
// (and its includefiles, relative to it), evaluated as the configuration
// server on this host would see them (ExtraRoutesScope of
// properties.LocalHosts, bounded by ctx). See MergeExtraRoutes.
func LoadExtraRoutes(ctx context.Context, c *Coordinator) ([]ExtraRoute, error) {
	f := c.Envoy.ExtraRoutesFile
	if f == "" {
		return MergeExtraRoutes(c.Envoy.Routes, nil)
	}
	data, err := os.ReadFile(f)
	if err != nil {
		return nil, Errors{{File: f, Msg: fmt.Sprintf("cannot read the extra routes file (envoy.extra_routes_file): %v", err)}}
	}
	fromFile, err := ParseExtraRoutes(f, data, properties.OpenFile, ExtraRoutesScope(properties.LocalHosts(ctx)))
	if err != nil {
		return nil, err
	}
	return MergeExtraRoutes(c.Envoy.Routes, fromFile)
}

// MergeExtraRoutes joins coordinator.yaml's envoy.extra_routes and the
// routes of its envoy.extra_routes_file: a route name or a prefix used in
// both places is refused, naming both origins. Sorted by name.
func MergeExtraRoutes(inYAML, fromFile []ExtraRoute) ([]ExtraRoute, error) {
	routes := append([]ExtraRoute(nil), inYAML...)
	var es Errors
	byName := map[string]ExtraRoute{}
	byPrefix := map[string]ExtraRoute{}
	for _, r := range routes {
		byName[r.Name], byPrefix[prefixKey(r.Prefix)] = r, r
	}
	for _, r := range fromFile {
		file, line := splitOrigin(r.Origin)
		if prev, dup := byName[r.Name]; dup {
			es.add(file, line, propertySyntax.key(r.Name, ""), "route %q is also defined in coordinator.yaml at %s; define it in one place", r.Name, prev.Origin)
			continue
		}
		if prev, dup := byPrefix[prefixKey(r.Prefix)]; dup {
			es.add(file, line, propertySyntax.key(r.Name, "prefix"), "%q is already the prefix of route %q (%s); two routes cannot share a prefix", r.Prefix, prev.Name, prev.Origin)
			continue
		}
		routes = append(routes, r)
	}
	if len(es) > 0 {
		return nil, es
	}
	sort.Slice(routes, func(i, j int) bool { return routes[i].Name < routes[j].Name })
	return routes, nil
}

// CheckExtraRoutes applies the rules a parsed route already passed to
// routes that come from elsewhere (the raft log): every route complete,
// its prefix not reserved, no name or prefix twice. It names the first
// problem.
func CheckExtraRoutes(routes []ExtraRoute) error {
	names := map[string]bool{}
	prefixes := map[string]string{}
	for _, r := range routes {
		switch {
		case !routeNameOK(r.Name):
			return fmt.Errorf("route name %q cannot be used in an Envoy cluster name", r.Name)
		case names[r.Name]:
			return fmt.Errorf("route %q twice", r.Name)
		case r.Host == "" || strings.ContainsAny(r.Host, "/ \t"):
			return fmt.Errorf("route %q: host %q is not a host name or address", r.Name, r.Host)
		case r.Port < 1 || r.Port > 65535:
			return fmt.Errorf("route %q: port %d is not 1-65535", r.Name, r.Port)
		case r.Prefix == "" || r.Prefix[0] != '/':
			return fmt.Errorf("route %q: prefix %q must start with /", r.Name, r.Prefix)
		case r.PrefixRewrite == "" || r.PrefixRewrite[0] != '/':
			return fmt.Errorf("route %q: prefixRewrite %q must start with /", r.Name, r.PrefixRewrite)
		}
		if msg := reservedPrefix(r.Prefix); msg != "" {
			return fmt.Errorf("route %q: %s", r.Name, msg)
		}
		if prev, dup := prefixes[prefixKey(r.Prefix)]; dup {
			return fmt.Errorf("route %q: %q is already the prefix of route %q", r.Name, r.Prefix, prev)
		}
		names[r.Name] = true
		prefixes[prefixKey(r.Prefix)] = r.Name
	}
	return nil
}

func splitOrigin(origin string) (string, int) {
	i := strings.LastIndexByte(origin, ':')
	if i < 0 {
		return origin, 0
	}
	n, err := strconv.Atoi(origin[i+1:])
	if err != nil {
		return origin, 0
	}
	return origin[:i], n
}

// parseYAMLRoutes reads envoy.extra_routes of coordinator.yaml (n, its
// value; nil when absent): a mapping of route name to the route's keys,
// checked by the same rules as Deephaven's properties.
func parseYAMLRoutes(es *Errors, file string, n *yaml.Node) []ExtraRoute {
	if n == nil || n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		es.add(file, n.Line, yamlSyntax.base, "expected a mapping of route names to their keys (e.g. grafana: {host: grafana.example.com, prefix: /grafana})")
		return nil
	}
	var raws []*rawRoute
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		r := &rawRoute{name: k.Value, file: file, line: k.Line, vals: map[string]rawVal{}}
		if v.Kind != yaml.MappingNode {
			es.add(file, v.Line, yamlSyntax.key(r.name, ""), "expected a mapping of the route's keys (%s)", yamlSyntax.known())
			continue
		}
		for j := 0; j+1 < len(v.Content); j += 2 {
			kk, vv := v.Content[j], v.Content[j+1]
			c := yamlSyntax.canonical(kk.Value)
			if c == "" {
				yamlSyntax.unknownKey(es, file, kk.Line, r.name, kk.Value)
				continue
			}
			if vv.Kind != yaml.ScalarNode {
				es.add(file, vv.Line, yamlSyntax.key(r.name, c), "expected a single value, not a list or mapping")
				continue
			}
			val := vv.Value
			if vv.Tag == "!!null" {
				val = ""
			}
			r.vals[c] = rawVal{value: val, file: file, line: kk.Line}
		}
		raws = append(raws, r)
	}
	return yamlSyntax.buildRoutes(es, raws)
}
