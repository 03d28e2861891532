package config

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// ExtraRoute is one site route Envoy gets besides Deephaven's own, from
// Deephaven's envoy.xds.extra.routes.<name>.* properties or from the
// coordinator's envoy.extra_routes.
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
	bad := func(canonical string, line int, format string, args ...any) {
		es.add(r.file, line, s.key(r.name, canonical), format, args...)
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
			line := r.line
			if v, ok := r.vals["prefix"]; ok {
				line = v.line
			}
			es.add(r.file, line, s.key(r.name, "prefix"), "%q is already the prefix of route %q (%s); two routes cannot share a prefix", rt.Prefix, prev.Name, prev.Origin)
			continue
		}
		byPrefix[prefixKey(rt.Prefix)] = rt
		out = append(out, rt)
	}
	return out
}

// ParseExtraRoutes reads the envoy.xds.extra.routes.<name>.<key> properties
// of a Deephaven properties file (file names it in messages) and ignores
// every other property. Every problem is reported, with the file, the line
// and the full key; any problem refuses the whole file. The routes are
// sorted by name; each one's Origin is the line of its first key.
//
// The file is read as Deephaven reads properties: key=value, key: value or
// key value; # and ! comment lines; a line ending in an odd number of
// backslashes continues on the next; Java's escapes (\t, \n, \uXXXX, \=,
// ...); the latest definition of a key wins. Deephaven's own syntax is
// recognised but not evaluated: a scope line ([service.name=x] {, or any
// line starting with "[") and lines of only braces are skipped, so keys
// inside a scope block count as if written outside it (a route is for
// Envoy, whichever service's scope it is written in); includefiles= is an
// ordinary key here and the included files are not read. Values are trimmed
// of surrounding whitespace.
func ParseExtraRoutes(file string, data []byte) ([]ExtraRoute, error) {
	var es Errors
	byName := map[string]*rawRoute{}
	var raws []*rawRoute
	forEachProperty(data, func(line int, key, value string) {
		rest, ok := strings.CutPrefix(key, ExtraRoutePropertyPrefix)
		if !ok {
			return
		}
		i := strings.LastIndexByte(rest, '.')
		if i <= 0 || i == len(rest)-1 {
			es.add(file, line, key, "expected %s<name>.<key>, <key> one of %s", ExtraRoutePropertyPrefix, propertySyntax.known())
			return
		}
		name, written := rest[:i], rest[i+1:]
		r := byName[name]
		if r == nil {
			r = &rawRoute{name: name, file: file, line: line, vals: map[string]rawVal{}}
			byName[name] = r
			raws = append(raws, r)
		}
		k := propertySyntax.canonical(written)
		if k == "" {
			propertySyntax.unknownKey(&es, file, line, name, written)
			return
		}
		r.vals[k] = rawVal{value: value, line: line}
	})
	routes := propertySyntax.buildRoutes(&es, raws)
	if len(es) > 0 {
		return nil, es
	}
	return routes, nil
}

// LoadExtraRoutes returns every extra route of a coordinator: those of its
// envoy.extra_routes and those of its envoy.extra_routes_file, read now, so
// the coordinator re-reads the file with it when the file changes. A route
// name or a prefix used in both places is refused, naming both origins.
func LoadExtraRoutes(c *Coordinator) ([]ExtraRoute, error) {
	routes := append([]ExtraRoute(nil), c.Envoy.Routes...)
	f := c.Envoy.ExtraRoutesFile
	if f == "" {
		return routes, nil
	}
	data, err := os.ReadFile(f)
	if err != nil {
		return nil, Errors{{File: f, Msg: fmt.Sprintf("cannot read the extra routes file (envoy.extra_routes_file): %v", err)}}
	}
	fromFile, err := ParseExtraRoutes(f, data)
	if err != nil {
		return nil, err
	}
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
			r.vals[c] = rawVal{value: val, line: kk.Line}
		}
		raws = append(raws, r)
	}
	return yamlSyntax.buildRoutes(es, raws)
}

// forEachProperty calls fn with each key and value of a Java-style
// properties file, and the line its entry starts on. Deephaven's scope
// lines and lone braces are skipped (see ParseExtraRoutes).
func forEachProperty(data []byte, fn func(line int, key, value string)) {
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		start := i + 1
		l := strings.TrimLeft(strings.TrimSuffix(lines[i], "\r"), " \t\f")
		if l == "" || l[0] == '#' || l[0] == '!' {
			continue // a comment never continues
		}
		for continues(l) && i+1 < len(lines) {
			i++
			l = l[:len(l)-1] + strings.TrimLeft(strings.TrimSuffix(lines[i], "\r"), " \t\f")
		}
		if continues(l) {
			l = l[:len(l)-1] // a continuation at the end of the file
		}
		if l[0] == '[' || strings.Trim(l, "{} \t\f") == "" {
			continue
		}
		key, value := splitProperty(l)
		fn(start, key, value)
	}
}

// continues reports whether a line ends in an odd number of backslashes.
func continues(l string) bool {
	n := 0
	for i := len(l) - 1; i >= 0 && l[i] == '\\'; i-- {
		n++
	}
	return n%2 == 1
}

// splitProperty splits a logical line as java.util.Properties does: the
// key ends at the first unescaped '=', ':' or white space; white space and
// one '=' or ':' after it are separators.
func splitProperty(l string) (key, value string) {
	end := len(l)
	for i := 0; i < len(l); i++ {
		c := l[i]
		if c == '\\' {
			i++
			continue
		}
		if c == '=' || c == ':' || c == ' ' || c == '\t' || c == '\f' {
			end = i
			break
		}
	}
	rest := strings.TrimLeft(l[end:], " \t\f")
	if rest != "" && (rest[0] == '=' || rest[0] == ':') {
		rest = strings.TrimLeft(rest[1:], " \t\f")
	}
	return unescapeProperty(l[:end]), unescapeProperty(rest)
}

// unescapeProperty undoes Java's properties escapes: \t \n \r \f, \uXXXX,
// and a backslash before any other character stands for that character.
func unescapeProperty(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		i++
		switch s[i] {
		case 't':
			b.WriteByte('\t')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 'f':
			b.WriteByte('\f')
		case 'u':
			if i+4 < len(s) {
				if r, err := strconv.ParseUint(s[i+1:i+5], 16, 32); err == nil {
					b.WriteRune(rune(r))
					i += 4
					continue
				}
			}
			b.WriteByte('u')
		default:
			_, size := utf8.DecodeRuneInString(s[i:])
			b.WriteString(s[i : i+size])
			i += size - 1
		}
	}
	return b.String()
}
