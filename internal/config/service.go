package config

import (
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/dhvisor/dhvisor/internal/envfile"
)

// Service is one supervised Deephaven service as the agent runs it: the
// shipped definition with the node's defaults and overrides applied and its
// templates expanded.
type Service struct {
	Name        string   `yaml:"-"`
	Description string   `yaml:"description"`
	Enabled     *bool    `yaml:"enabled"`
	Runtime     string   `yaml:"runtime"`
	Output      string   `yaml:"output"`
	User        string   `yaml:"user"`
	Group       string   `yaml:"group"`
	Command     []string `yaml:"command"`
	// Env is the service's own environment. It is written in agent.yaml,
	// which every local user may read: secrets go in EnvFiles or
	// Credentials.
	Env map[string]string `yaml:"env"`
	// EnvFiles are files of KEY=VALUE lines (systemd's EnvironmentFile=
	// syntax) that the agent reads as root at each start and hands to the
	// process, later files winning over earlier ones and over Env. Each
	// must be a secret file: root's, 0600 or 0640 of group root.
	EnvFiles []string `yaml:"env_files"`
	// Credentials (runtime systemd) are systemd's LoadCredential=: by
	// name, a root-only file systemd copies into the unit's
	// $CREDENTIALS_DIRECTORY, readable by the service alone.
	Credentials map[string]string `yaml:"credentials"`
	WorkDir     string            `yaml:"workdir"`
	LogDir      string            `yaml:"log_dir"`
	Ports       map[string]int    `yaml:"ports"`
	DependsOn   []string          `yaml:"depends_on"`
	// External are what the service needs that dhvisor does not run.
	External []External `yaml:"external"`
	// DependencyWait bounds how long the agent, starting the service on
	// its own (its start, a reload), waits for a dependency configured on
	// another node or an external one; then it starts the service anyway.
	// nil: DefaultDependencyWait; 0: no wait.
	DependencyWait *Duration     `yaml:"dependency_wait"`
	Checks         []Check       `yaml:"checks"`
	StartGrace     Duration      `yaml:"start_grace"`
	StopTimeout    Duration      `yaml:"stop_timeout"`
	Restart        RestartPolicy `yaml:"restart"`
	Limits         Limits        `yaml:"limits"`

	// A daemonizing service (monit's process model) gives Start: a
	// program that returns once the service runs in the background. The
	// agent then follows the process that Pidfile names (or the one whose
	// command line Match matches) and stops it with Stop, if given, then
	// signals. Without Start the agent runs Command in the foreground.
	Start          *Program `yaml:"start"`
	Stop           *Program `yaml:"stop"`
	RestartProgram *Program `yaml:"restart_program"` // restart: is the restart policy
	Pidfile        string   `yaml:"pidfile"`
	Match          string   `yaml:"match"`
	// StartTimeout bounds a daemonizing start: the start program must
	// exit and the pidfile name the new process within it (monit's start
	// timeout, 30s by default).
	StartTimeout Duration `yaml:"start_timeout"`

	// Groups name sets of services an operator acts on together (monit's
	// group statement: dhctl restart -g GROUP).
	Groups []string `yaml:"groups"`
	// Mode is monit's: active (the agent starts, stops and restarts it),
	// passive (only watched and alerted on, never started or restarted)
	// or manual (active, but only once an operator starts it).
	Mode string `yaml:"mode"`
	// OnBoot is what the agent does with the service after the host
	// rebooted: start it, leave it stopped (nostart), or keep what the
	// operator last asked for (laststate, the default).
	OnBoot string `yaml:"on_boot"`
	// Envoy is how Envoy reaches the service, for the services Envoy
	// routes to; nil for the others.
	Envoy *EnvoyUpstream `yaml:"envoy"`
	// Container is set for a service that runs as a container (runtime
	// docker): only Envoy, from agent.yaml's envoy: section.
	Container *Container `yaml:"-"`

	// Origin is where the service was defined and last overridden, for
	// messages about the service as a whole.
	Origin string `yaml:"-"`
}

// EnvoyUpstream is how Envoy reaches a service: the coordinator makes it an
// EDS cluster of the service's healthy instances on that port, and routes
// to it what its routes say.
type EnvoyUpstream struct {
	Port  string `yaml:"port"`  // a name from ports:
	TLS   bool   `yaml:"tls"`   // Envoy speaks TLS to the service
	HTTP2 bool   `yaml:"http2"` // HTTP/2 upstream (gRPC); else HTTP/1.1 (websocket upgrades)
	// Routes are the path prefixes Envoy sends to the service (a gRPC
	// service's is /package.Service/).
	Routes []string `yaml:"routes"`
	// Default makes the service take every request no other route takes.
	Default bool `yaml:"default"`
}

// Check is one health check. Type is process, tcp, udp, unix, http, https,
// grpc, exec or log.
type Check struct {
	Name          string   `yaml:"name"`
	Type          string   `yaml:"type"`
	Host          string   `yaml:"host"`
	Port          string   `yaml:"port"` // a name from ports: or a number
	Path          string   `yaml:"path"`
	ExpectStatus  int      `yaml:"expect_status"`
	ExpectBody    string   `yaml:"expect_body"`
	TLS           bool     `yaml:"tls"`
	TLSSkipVerify bool     `yaml:"tls_skip_verify"`
	CAFile        string   `yaml:"ca_file"`
	GRPCService   string   `yaml:"grpc_service"`
	Command       []string `yaml:"command"`
	Interval      Duration `yaml:"interval"`
	Timeout       Duration `yaml:"timeout"`
	Failures      int      `yaml:"failures"`  // failures before the service is bad
	Successes     int      `yaml:"successes"` // consecutive successes before it is good again
	// Within counts Failures among the last Within probes instead of in a
	// row (monit's "N times within M cycles"); 0 means in a row.
	Within int `yaml:"within"`
	// Retries is how many more attempts one probe makes before it counts
	// as failed (monit's retry).
	Retries int `yaml:"retries"`
	// ExpectStatusOp compares the HTTP status with ExpectStatus: one of
	// = != < > <= >= (monit's status [operator] N); empty means =.
	ExpectStatusOp string `yaml:"expect_status_op"`
	// Action is what a bad check does: restart (the default) or alert.
	Action string `yaml:"action"`
	// Pattern is the regular expression (RE2) of the line a log check
	// waits for in the file at Path, written since the service started;
	// FatalPattern, when set, is a line that fails it.
	Pattern      string `yaml:"pattern"`
	FatalPattern string `yaml:"fatal_pattern"`
}

// RestartPolicy follows the design: restart at once after a run longer than
// MinUptime, else back off exponentially with jitter up to BackoffMax; Limit
// restarts within Window leave the service Failed (not monitored), as monit's
// "if 5 restarts within 5 cycles then unmonitor" does.
type RestartPolicy struct {
	MinUptime          Duration `yaml:"min_uptime"`
	BackoffInitial     Duration `yaml:"backoff_initial"`
	BackoffMax         Duration `yaml:"backoff_max"`
	Limit              int      `yaml:"limit"` // 0: never give up
	Window             Duration `yaml:"window"`
	PermanentExitCodes []int    `yaml:"permanent_exit_codes"`
	// LimitAction is what reaching Limit does: fail (Failed, not
	// monitored, an alert; monit's unmonitor or timeout) or alert (an
	// alert, and the restarts go on).
	LimitAction string `yaml:"limit_action"`
	// OnMissing is what a process that ended (or was never found) does:
	// restart (the default) or alert (monit's "if does not exist then
	// alert": reported, not restarted).
	OnMissing string `yaml:"on_missing"`
}

// Limits are monit-style resource tests: over the limit for Cycles samples in
// a row restarts the service. Zero disables a limit.
type Limits struct {
	Memory        ByteSize `yaml:"memory"`
	MemoryPercent float64  `yaml:"memory_percent"` // of the host's memory
	MemoryCycles  int      `yaml:"memory_cycles"`
	MemoryAction  string   `yaml:"memory_action"` // restart (the default) or alert
	CPUPercent    float64  `yaml:"cpu_percent"`   // 100 = one full core
	CPUCycles     int      `yaml:"cpu_cycles"`
	CPUAction     string   `yaml:"cpu_action"` // restart (the default) or alert
	Interval      Duration `yaml:"interval"`   // sampling period, also feeds status
}

// Check types.
const (
	CheckProcess = "process"
	CheckTCP     = "tcp"
	CheckHTTP    = "http"
	CheckHTTPS   = "https"
	CheckGRPC    = "grpc"
	CheckExec    = "exec"
	CheckUDP     = "udp"  // a datagram sent, an answer or no ICMP refusal
	CheckUnix    = "unix" // a connection to the unix socket at path
	CheckLog     = "log"  // a line matching pattern in the file at path
)

// Actions: what a bad check, a resource limit or a missing process does.
const (
	ActionRestart = "restart"
	ActionAlert   = "alert"
	ActionFail    = "fail" // restart.limit_action: give up (Failed)
)

// Modes (monit's mode statement).
const (
	ModeActive  = "active"
	ModePassive = "passive"
	ModeManual  = "manual"
)

// What a service does after a reboot (monit's onreboot).
const (
	OnBootStart     = "start"
	OnBootNoStart   = "nostart"
	OnBootLastState = "laststate"
)

// RuntimeExec runs services as child processes of the agent.
const RuntimeExec = "exec"

// RuntimeSystemd runs each service as a transient unit in dhvisor.slice.
const RuntimeSystemd = "systemd"

// Outputs: where a service's stdout and stderr go.
const (
	OutputFile    = "file"    // <log_dir>/<name>.log.YYYY-MM-DD, the start date
	OutputJournal = "journal" // the systemd journal (runtime systemd)
)

// IsEnabled reports whether the node should run the service.
func (s *Service) IsEnabled() bool { return s.Enabled == nil || *s.Enabled }

// LogCheckNames returns the names of the service's log checks.
func (s *Service) LogCheckNames() []string {
	var out []string
	for _, c := range s.Checks {
		if c.Type == CheckLog {
			out = append(out, c.Name)
		}
	}
	return out
}

// PortNumbers returns the service's ports sorted by number.
func (s *Service) PortNumbers() []int {
	out := make([]int, 0, len(s.Ports))
	for _, p := range s.Ports {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

// ResolvePort turns a check's port (a name from ports: or a number) into a number.
func (s *Service) ResolvePort(p string) (int, error) {
	if n, ok := s.Ports[p]; ok {
		return n, nil
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q is neither a port name of this service (%s) nor a number 1-65535", p, portNames(s.Ports))
	}
	return n, nil
}

func portNames(m map[string]int) string {
	if len(m) == 0 {
		return "it has none"
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return fmt.Sprint(names)
}

func (s *Service) applyDefaults() {
	if s.Runtime == "" {
		s.Runtime = RuntimeExec
	}
	if s.Output == "" {
		s.Output = OutputFile
	}
	setDur(&s.StartGrace, 120*time.Second)
	setDur(&s.StopTimeout, 30*time.Second)
	r := &s.Restart
	setDur(&r.MinUptime, 30*time.Second)
	setDur(&r.BackoffInitial, time.Second)
	setDur(&r.BackoffMax, time.Minute)
	setDur(&r.Window, 5*time.Minute)
	l := &s.Limits
	setInt(&l.MemoryCycles, 3)
	setInt(&l.CPUCycles, 3)
	setDur(&l.Interval, 5*time.Second)
	if len(s.Checks) == 0 {
		s.Checks = []Check{{Type: CheckProcess}}
	}
	for i := range s.Checks {
		c := &s.Checks[i]
		if c.Name == "" {
			c.Name = c.Type
			switch {
			case c.Port != "":
				c.Name += ":" + c.Port
			case c.Type == CheckLog && c.Path != "":
				c.Name += ":" + filepath.Base(c.Path)
			}
		}
		if c.Host == "" {
			c.Host = "127.0.0.1"
		}
		setDur(&c.Interval, 5*time.Second)
		setDur(&c.Timeout, min(2*time.Second, c.Interval.D()))
		setInt(&c.Failures, 3)
		setInt(&c.Successes, 1)
	}
	s.applyDaemonDefaults()
}

func setDur(d *Duration, def time.Duration) {
	if *d == 0 {
		*d = Duration(def)
	}
}

func setInt(i *int, def int) {
	if *i == 0 {
		*i = def
	}
}

// validate reports problems confined to one service; loc finds the file and
// line of a field below services.<name>.
func (s *Service) validate(es *Errors, loc func(path ...string) (string, int)) {
	bad := func(format string, args []any, path ...string) {
		f, l := loc(path...)
		es.add(f, l, "services."+s.Name+dotted(path), format, args...)
	}
	switch {
	case s.Runtime == RuntimeDocker && s.Container == nil:
		bad("runtime %q is only for the Envoy container, which agent.yaml's envoy: section configures", []any{s.Runtime}, "runtime")
	case s.Runtime != RuntimeExec && s.Runtime != RuntimeSystemd && s.Runtime != RuntimeDocker:
		bad("runtime %q is not supported (expected %s or %s)", []any{s.Runtime, RuntimeExec, RuntimeSystemd}, "runtime")
	}
	switch {
	case s.Output != "" && s.Output != OutputFile && s.Output != OutputJournal:
		bad("output %q is not supported (expected %s or %s)", []any{s.Output, OutputFile, OutputJournal}, "output")
	case s.Output == OutputJournal && s.Runtime != RuntimeSystemd:
		bad("output journal needs runtime systemd (this service's runtime is %s)", []any{s.Runtime}, "output")
	}
	s.validateDaemon(bad)
	s.validateExternal(bad)
	if s.Container == nil && !s.Daemonizing() && !(s.IsPassive() && s.Followed()) && (len(s.Command) == 0 || s.Command[0] == "") {
		bad("a command is required (the program and its arguments, e.g. [/usr/illumon/latest/bin/iris, run, %s])", []any{s.Name}, "command")
	}
	s.validateSecrets(bad)
	for name, p := range s.Ports {
		if p < 1 || p > 65535 {
			bad("port %d is out of range (expected 1-65535)", []any{p}, "ports", name)
		}
	}
	for _, d := range s.DependsOn {
		if d == s.Name {
			bad("a service cannot depend on itself", nil, "depends_on")
		}
	}
	if s.StopTimeout.D() < 100*time.Millisecond {
		bad("stop_timeout %s is too short (expected at least 100ms)", []any{s.StopTimeout.D()}, "stop_timeout")
	}
	r := s.Restart
	if r.BackoffMax < r.BackoffInitial {
		bad("backoff_max %s is below backoff_initial %s", []any{r.BackoffMax.D(), r.BackoffInitial.D()}, "restart", "backoff_max")
	}
	if r.Limit < 0 {
		bad("limit %d must be 0 (never give up) or more", []any{r.Limit}, "restart", "limit")
	}
	for _, c := range r.PermanentExitCodes {
		if c < 0 || c > 255 {
			bad("exit code %d is out of range (expected 0-255)", []any{c}, "restart", "permanent_exit_codes")
		}
	}
	if s.Limits.CPUPercent < 0 {
		bad("cpu_percent must not be negative", nil, "limits", "cpu_percent")
	}
	if e := s.Envoy; e != nil {
		if e.Port == "" {
			bad("missing: the name of the port Envoy reaches the service on (ports: %s)", []any{portNames(s.Ports)}, "envoy", "port")
		} else if _, ok := s.Ports[e.Port]; !ok {
			bad("%q is not a port name of this service (%s)", []any{e.Port, portNames(s.Ports)}, "envoy", "port")
		}
		seen := map[string]bool{}
		for i, r := range e.Routes {
			at := []string{"envoy", "routes", strconv.Itoa(i)}
			switch {
			case r == "/":
				bad("%q would take every request: set envoy.default: true instead", []any{r}, at...)
			case !strings.HasPrefix(r, "/") || strings.ContainsAny(r, " \t\r\n?#"):
				bad("%q is not a path prefix (expected /something, no spaces, ? or #)", []any{r}, at...)
			case strings.HasPrefix(r, "/worker/"):
				bad("%q: /worker/ is the query workers' (routed by their dispatchers)", []any{r}, at...)
			case seen[r]:
				bad("%q is listed twice", []any{r}, at...)
			}
			seen[r] = true
		}
	}
	for i := range s.Checks {
		s.Checks[i].validate(s, es, func(path ...string) (string, int) {
			return loc(append([]string{"checks", strconv.Itoa(i)}, path...)...)
		}, "services."+s.Name+".checks."+strconv.Itoa(i))
	}
}

func (c *Check) validate(s *Service, es *Errors, loc func(path ...string) (string, int), field string) {
	bad := func(format string, args []any, path ...string) {
		f, l := loc(path...)
		es.add(f, l, field+dotted(path), format, args...)
	}
	needPort := false
	switch c.Type {
	case CheckProcess:
	case CheckTCP, CheckGRPC:
		needPort = true
	case CheckHTTP, CheckHTTPS:
		needPort = true
		if c.Path == "" {
			c.Path = "/"
		}
		if c.Path[0] != '/' {
			bad("path %q must start with /", []any{c.Path}, "path")
		}
		if c.ExpectStatus != 0 && (c.ExpectStatus < 100 || c.ExpectStatus > 599) {
			bad("expect_status %d is not an HTTP status", []any{c.ExpectStatus}, "expect_status")
		}
	case CheckExec:
		if len(c.Command) == 0 {
			bad("an exec check needs a command", nil, "command")
		}
	case CheckUDP:
		needPort = true
	case CheckUnix:
		if !strings.HasPrefix(c.Path, "/") {
			bad("a unix check needs the socket's absolute path (path: /run/x.sock)", nil, "path")
		}
	case CheckLog:
		c.validateLog(bad)
	case "":
		bad("type is required (one of %s)", []any{checkTypeList}, "type")
	default:
		bad("unknown check type %q (expected one of %s)", []any{c.Type, checkTypeList}, "type")
	}
	if c.Type != CheckLog {
		for _, f := range []struct{ key, val string }{{"pattern", c.Pattern}, {"fatal_pattern", c.FatalPattern}} {
			if f.val != "" {
				bad("%s is for log checks only (this is a %s check)", []any{f.key, c.Type}, f.key)
			}
		}
	}
	c.validateOptions(bad)
	if needPort {
		if c.Port == "" {
			bad("a %s check needs a port (a name from ports: or a number)", []any{c.Type}, "port")
		} else if _, err := s.ResolvePort(c.Port); err != nil {
			bad("%v", []any{err}, "port")
		}
	}
	if c.Timeout > c.Interval {
		bad("timeout %s is longer than interval %s", []any{c.Timeout.D(), c.Interval.D()}, "timeout")
	}
	if c.Failures < 1 || c.Successes < 1 {
		bad("failures and successes must be at least 1", nil)
	}
}

const checkTypeList = "process, tcp, udp, unix, http, https, grpc, exec, log"

// validateLog checks a log check's file and its patterns.
func (c *Check) validateLog(bad func(format string, args []any, path ...string)) {
	if !filepath.IsAbs(c.Path) {
		bad("a log check needs the log file's absolute path (path: \"{{.LogDir}}/Prefix.log.current\"), got %q", []any{c.Path}, "path")
	}
	if c.Pattern == "" {
		bad("a log check needs pattern: the regular expression of the line it waits for", nil, "pattern")
	}
	for _, f := range []struct{ key, val string }{{"pattern", c.Pattern}, {"fatal_pattern", c.FatalPattern}} {
		if f.val == "" {
			continue
		}
		if _, err := regexp.Compile(f.val); err != nil {
			bad("%s %q is not a regular expression: %v", []any{f.key, f.val, err}, f.key)
		}
	}
}

// validateSecrets checks env:, env_files: and credentials:. The files are
// read at each start, as root: whoever validates may not be able to.
func (s *Service) validateSecrets(bad func(format string, args []any, path ...string)) {
	for _, k := range sortedKeys(s.Env) {
		if err := envfile.CheckName(k); err != nil {
			bad("%v", []any{err}, "env", k)
		} else if err := envfile.CheckValue(s.Env[k]); err != nil {
			bad("%v", []any{err}, "env", k)
		}
		if k == ServiceEnv || k == OwnerEnv {
			bad("%s is dhvisor's own mark of the processes it starts", []any{k}, "env", k)
		}
	}
	seen := map[string]bool{}
	for i, f := range s.EnvFiles {
		at := []string{"env_files", strconv.Itoa(i)}
		switch {
		case !filepath.IsAbs(f):
			bad("%q is not an absolute path (expected e.g. /etc/dhvisor/secrets/%s.env)", []any{f, s.Name}, at...)
		case seen[f]:
			bad("%s is listed twice", []any{f}, at...)
		}
		seen[f] = true
	}
	if len(s.Credentials) > 0 && s.Runtime != RuntimeSystemd {
		bad("credentials are systemd's LoadCredential= and need runtime systemd (this service's runtime is %s): use env_files", []any{s.Runtime}, "credentials")
	}
	for _, name := range sortedKeys(s.Credentials) {
		p := s.Credentials[name]
		switch {
		case name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) > 255:
			bad("%q is not a credential name (a file name in $CREDENTIALS_DIRECTORY: no /, not . or ..)", []any{name}, "credentials", name)
		case !filepath.IsAbs(p):
			bad("%q is not an absolute path", []any{p}, "credentials", name)
		}
	}
}

// ServiceEnv and OwnerEnv mark every process the agent starts, whatever
// the runtime, with its service name and its agent; a service's own
// variables cannot set them.
const (
	ServiceEnv = "DHVISOR_SERVICE"
	OwnerEnv   = "DHVISOR_AGENT"
)

func dotted(path []string) string {
	s := ""
	for _, p := range path {
		s += "." + p
	}
	return s
}
