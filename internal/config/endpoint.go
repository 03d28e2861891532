package config

import (
	"strconv"
	"strings"
)

// Endpoint is a TCP API's address: where to listen, and what peers dial.
// The agent API, the coordinator's cluster API and its raft transport all
// take one.
type Endpoint struct {
	Listen    string `yaml:"listen"`    // host:port, e.g. 0.0.0.0:8130
	Advertise string `yaml:"advertise"` // host:port peers dial; required when listen's host is a wildcard
}

// Addr is the address peers dial, given the one the listener got (which
// resolves a port 0): advertise if set, else the listener's.
func (e Endpoint) Addr(bound string) string {
	if e.Advertise != "" {
		return e.Advertise
	}
	return bound
}

// validate checks the endpoint under key name (api, raft); example is an
// address to show in messages.
func (e Endpoint) validate(es *Errors, src *source, org origins, name, example string) {
	line := func(path ...string) int {
		_, l := locate(org, src.root, src.file, path...)
		return l
	}
	if e.Listen != "" {
		if host, _, err := SplitHostPort(e.Listen); err != nil {
			es.add(src.file, line(name, "listen"), name+".listen", "%q is not host:port (e.g. %s)", e.Listen, example)
		} else if e.Advertise == "" && wildcard(host) {
			es.add(src.file, line(name, "listen"), name+".advertise", "required when %s.listen (%q) is on every address: peers need one address to dial (e.g. %s)", name, e.Listen, example)
		}
	}
	if e.Advertise != "" {
		if msg := notDialable(e.Advertise, example); msg != "" {
			es.add(src.file, line(name, "advertise"), name+".advertise", "%s", msg)
		}
		if e.Listen == "" {
			es.add(src.file, line(name, "advertise"), name+".listen", "advertise needs listen (the address to serve on)")
		}
	}
}

// notDialable says why v cannot be dialled by peers, or "".
func notDialable(v, example string) string {
	host, port, err := SplitHostPort(v)
	switch {
	case err != nil:
		return strconv.Quote(v) + " is not host:port (e.g. " + example + ")"
	case wildcard(host) || port == 0:
		return strconv.Quote(v) + ": peers dial it, so it needs a host and a port (e.g. " + example + ")"
	}
	return ""
}

// validate checks gossip: (agents and coordinators alike).
func (g Gossip) validate(es *Errors, src *source, org origins) {
	gn, _ := mapValue(src.root, "gossip")
	at := func(path ...string) int {
		_, l := locate(org, gn, src.file, path...)
		return l
	}
	hostPort := func(v string, path ...string) {
		if _, _, err := SplitHostPort(v); err != nil {
			es.add(src.file, at(path...), "gossip."+strings.Join(path, "."), "%q is not host:port (e.g. 10.0.0.5:7946)", v)
		}
	}
	if g.Bind != "" {
		hostPort(g.Bind, "bind")
	}
	if g.Advertise != "" {
		hostPort(g.Advertise, "advertise")
	}
	for i, s := range g.Seeds {
		hostPort(s, "seeds", strconv.Itoa(i))
	}
	if !g.Enabled() && (len(g.Seeds) > 0 || g.KeyFile != "" || g.Advertise != "") {
		es.add(src.file, at(), "gossip.bind", "seeds, advertise and key_file need bind (the address to gossip on)")
	}
}
