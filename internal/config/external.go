package config

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// External is something a service needs that dhvisor does not supervise
// (etcd, a database): the agent waits for it before starting the service,
// as it waits for a dependency on another node. Exactly one of TCP, HTTP and
// Systemd says how to tell it is there.
type External struct {
	Name string `yaml:"name"`
	// TCP is host:port: it is there once a connection opens.
	TCP string `yaml:"tcp"`
	// HTTP is an http:// or https:// URL: it is there once a GET answers
	// with Expect (default 200).
	HTTP          string `yaml:"http"`
	Expect        int    `yaml:"expect"`
	CAFile        string `yaml:"ca_file"`
	TLSSkipVerify bool   `yaml:"tls_skip_verify"`
	// Systemd is a unit of this host: it is there once the unit is active.
	Systemd string `yaml:"systemd"`
	// IfInstalled waits for a systemd unit only on hosts where it is
	// installed (the unit file exists): a node that does not run it
	// has nothing to wait for.
	IfInstalled bool `yaml:"if_installed"`
}

// Kinds of external dependency, by the field that gives the target.
const (
	ExternalTCP     = "tcp"
	ExternalHTTP    = "http"
	ExternalSystemd = "systemd"
)

// Kind is which of tcp, http and systemd the dependency uses ("" if none).
func (e *External) Kind() string {
	switch {
	case e.TCP != "":
		return ExternalTCP
	case e.HTTP != "":
		return ExternalHTTP
	case e.Systemd != "":
		return ExternalSystemd
	}
	return ""
}

// Target is what is probed: the address, URL or unit.
func (e *External) Target() string {
	return e.TCP + e.HTTP + e.Systemd
}

// DefaultDependencyWait is how long a service waits, at the agent's own
// start, for a dependency on another node or an external one.
const DefaultDependencyWait = 5 * time.Minute

// maxDependencyWait bounds dependency_wait: past a day, a node that never
// starts its services is a worse surprise than one that starts them early.
const maxDependencyWait = 24 * time.Hour

// DependencyWaitOr is the service's dependency_wait, or the default.
func (s *Service) DependencyWaitOr() time.Duration {
	if s.DependencyWait == nil {
		return DefaultDependencyWait
	}
	return s.DependencyWait.D()
}

// systemdUnitName is what systemd accepts as a unit name (systemd.unit(5):
// ASCII letters, digits, ":-_.\@", and a type suffix).
var systemdUnitName = regexp.MustCompile(`^[A-Za-z0-9:_.\\@-]+\.(service|socket|target|mount|device|path|timer|swap|slice|scope|automount)$`)

// validateExternal checks the service's external: entries and
// dependency_wait.
func (s *Service) validateExternal(bad func(format string, args []any, path ...string)) {
	if s.DependencyWait != nil && s.DependencyWait.D() > maxDependencyWait {
		bad("dependency_wait %s is too long (expected at most %s; 0s starts without waiting)", []any{s.DependencyWait.D(), maxDependencyWait}, "dependency_wait")
	}
	seen := map[string]int{}
	for i := range s.External {
		e := &s.External[i]
		at := func(field string) []string {
			if field == "" {
				return []string{"external", strconv.Itoa(i)}
			}
			return []string{"external", strconv.Itoa(i), field}
		}
		switch {
		case e.Name == "":
			bad("an external dependency needs a name (e.g. name: etcd)", nil, at("")...)
		case strings.ContainsAny(e.Name, " \t\r\n"):
			bad("name %q must not contain spaces", []any{e.Name}, at("name")...)
		default:
			if prev, dup := seen[e.Name]; dup {
				bad("name %q is also external.%d's", []any{e.Name, prev}, at("name")...)
			}
			seen[e.Name] = i
		}
		n := 0
		for _, v := range []string{e.TCP, e.HTTP, e.Systemd} {
			if v != "" {
				n++
			}
		}
		if n != 1 {
			bad("give exactly one of tcp: host:port, http: URL or systemd: UNIT (got %d)", []any{n}, at("")...)
			continue
		}
		if e.IfInstalled && e.Kind() != ExternalSystemd {
			bad("if_installed is for systemd units only (this one is %s)", []any{e.Kind()}, at("if_installed")...)
		}
		if e.Kind() != ExternalHTTP {
			for _, f := range []struct {
				key string
				set bool
			}{{"expect", e.Expect != 0}, {"ca_file", e.CAFile != ""}, {"tls_skip_verify", e.TLSSkipVerify}} {
				if f.set {
					bad("%s is for http dependencies only (this one is %s)", []any{f.key, e.Kind()}, at(f.key)...)
				}
			}
		}
		switch e.Kind() {
		case ExternalTCP:
			host, port, err := SplitHostPort(e.TCP)
			if err != nil || host == "" || port == 0 {
				bad("tcp %q is not host:port (e.g. 127.0.0.1:2379)", []any{e.TCP}, at("tcp")...)
			}
		case ExternalHTTP:
			u, err := url.Parse(e.HTTP)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				bad("http %q is not an http:// or https:// URL with a host", []any{e.HTTP}, at("http")...)
			} else if u.Scheme == "http" && (e.CAFile != "" || e.TLSSkipVerify) {
				bad("ca_file and tls_skip_verify are for https URLs", nil, at("http")...)
			}
			if e.Expect == 0 {
				e.Expect = 200
			} else if e.Expect < 100 || e.Expect > 599 {
				bad("expect %d is not an HTTP status", []any{e.Expect}, at("expect")...)
			}
		case ExternalSystemd:
			if !systemdUnitName.MatchString(e.Systemd) {
				bad("systemd %q is not a unit name (e.g. dh-etcd.service)", []any{e.Systemd}, at("systemd")...)
			}
		}
	}
}

// Describe is the dependency as status shows it: "etcd (systemd dh-etcd.service)".
func (e *External) Describe() string {
	return fmt.Sprintf("%s (%s %s)", e.Name, e.Kind(), e.Target())
}
