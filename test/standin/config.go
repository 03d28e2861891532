package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// faultEnv lets a supervisor config inject faults without changing the
// command line it starts the stand-in with.
const faultEnv = "DH_STANDIN_FAULT"

// Fault kinds. start-delay and exit-at-start act before the ports are open,
// so they can only come from flags or the environment.
const (
	kindCrash       = "crash"
	kindExitAtStart = "exit-at-start"
	kindHang        = "hang"
	kindUnhealthy   = "unhealthy"
	kindHealthy     = "healthy"
	kindGrow        = "grow"
	kindStartDelay  = "start-delay"
)

type fault struct {
	kind string
	arg  string // as given, for logs

	code  int           // crash, exit-at-start
	kill  bool          // crash: SIGKILL itself instead of exiting
	after time.Duration // crash
	rate  int64         // grow: bytes per second
	max   int64         // grow: stop at this many bytes; 0 means no cap
	delay time.Duration // start-delay
}

func (f fault) String() string {
	if f.arg == "" {
		return f.kind
	}
	return f.kind + ":" + f.arg
}

func (f fault) startOnly() bool {
	return f.kind == kindExitAtStart || f.kind == kindStartDelay
}

// parseFaults reads the DH_STANDIN_FAULT syntax: kind[:arg], several
// separated by ';' (',' is taken by the crash and grow arguments).
func parseFaults(s string) ([]fault, error) {
	var out []fault
	for _, spec := range strings.Split(s, ";") {
		spec = strings.TrimSpace(spec)
		if spec == "" {
			continue
		}
		kind, arg, _ := strings.Cut(spec, ":")
		f, err := parseFault(strings.TrimSpace(kind), strings.TrimSpace(arg))
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

func parseFault(kind, arg string) (fault, error) {
	f := fault{kind: kind, arg: arg}
	var err error
	switch kind {
	case kindHang, kindUnhealthy, kindHealthy:
		if arg != "" {
			err = errors.New("takes no argument")
		}
	case kindCrash:
		f.code, f.kill, f.after, err = parseCrashArg(arg)
	case kindExitAtStart:
		f.code = 1
		if arg != "" {
			f.code, err = parseExitCode(arg)
		}
	case kindStartDelay:
		f.delay, err = parseDuration(arg)
	case kindGrow:
		f.rate, f.max, err = parseGrowArg(arg)
	default:
		return f, fmt.Errorf("unknown fault %q (want crash, exit-at-start, hang, unhealthy, healthy, grow or start-delay)", kind)
	}
	if err != nil {
		return f, fmt.Errorf("fault %s: %w", f, err)
	}
	return f, nil
}

// parseCrashArg takes comma-separated parts in any order: an exit code or
// KILL, and a delay, so "3", "2s", "KILL,500ms" all work.
func parseCrashArg(arg string) (code int, kill bool, after time.Duration, err error) {
	code = 1
	if arg == "" {
		return code, false, 0, nil
	}
	for _, part := range strings.Split(arg, ",") {
		part = strings.TrimSpace(part)
		switch {
		case isSignalKill(part):
			kill = true
		case part != "" && unicode.IsLetter(rune(part[len(part)-1])):
			if after, err = parseDuration(part); err != nil {
				return 0, false, 0, err
			}
		default:
			if code, err = parseExitCode(part); err != nil {
				return 0, false, 0, err
			}
		}
	}
	return code, kill, after, nil
}

// Only SIGKILL is offered: the Go runtime turns most other self-sent
// signals into a traceback and exit 2, which would not look like a kill.
func isSignalKill(s string) bool {
	switch strings.ToUpper(s) {
	case "KILL", "SIGKILL":
		return true
	}
	return false
}

func parseExitCode(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 255 {
		return 0, fmt.Errorf("bad exit code %q (want 0..255)", s)
	}
	return n, nil
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("bad duration %q", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("negative duration %q", s)
	}
	return d, nil
}

// parseGrowArg reads RATE[,MAX], e.g. "20MiB/s,200MiB".
func parseGrowArg(arg string) (rate, max int64, err error) {
	rateStr, maxStr, hasMax := strings.Cut(arg, ",")
	if rate, err = parseRate(strings.TrimSpace(rateStr)); err != nil {
		return 0, 0, err
	}
	if hasMax {
		if max, err = parseSize(strings.TrimSpace(maxStr)); err != nil {
			return 0, 0, err
		}
	}
	return rate, max, nil
}

// parseRate reads SIZE[/PERIOD] as bytes per second; PERIOD is a Go
// duration, with a bare unit meaning one of it ("/s", "/100ms", "/m").
func parseRate(s string) (int64, error) {
	sizeStr, per, hasPer := strings.Cut(s, "/")
	size, err := parseSize(sizeStr)
	if err != nil {
		return 0, err
	}
	period := time.Second
	if hasPer {
		if per != "" && !unicode.IsDigit(rune(per[0])) {
			per = "1" + per
		}
		period, err = time.ParseDuration(per)
		if err != nil || period <= 0 {
			return 0, fmt.Errorf("bad rate period in %q", s)
		}
	}
	rate := float64(size) / period.Seconds()
	if rate < 1 || rate > math.MaxInt64/2 {
		return 0, fmt.Errorf("rate %q out of range", s)
	}
	return int64(rate), nil
}

// parseSize accepts KB/MB/GB as powers of 1000, KiB/MiB/GiB and the JVM's
// bare k/m/g as powers of 1024, case-insensitively.
func parseSize(s string) (int64, error) {
	i := strings.IndexFunc(s, func(r rune) bool {
		return !(unicode.IsDigit(r) || r == '.')
	})
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	n, err := strconv.ParseFloat(num, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
		"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
		"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	}[strings.ToLower(unit)]
	if mult == 0 {
		return 0, fmt.Errorf("bad size unit in %q", s)
	}
	v := n * mult
	if v > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q too large", s)
	}
	return int64(v), nil
}

type config struct {
	name        string
	addr        string
	ports       []int
	startDelay  time.Duration
	termDelay   time.Duration
	exitAtStart int     // negative: don't
	faults      []fault // applied in order once the ports are open
	record      string
	appLog      string // directory of the Deephaven-style application log
	release     string // the package release the binary came from, for upgrade tests
	pidfile     string
	logFile     string
	daemonize   bool
	// launcher daemonizes the way Deephaven's launcher and JVM do: the
	// launcher returns at once, the JVM writes its own pidfile and refuses
	// to start while one exists.
	launcher bool
	grpc     bool   // every port also answers any gRPC method (h2c)
	worker   string // plays this query worker: implies grpc
	// registerSocket is the agent's workers socket the stand-in registers
	// its fake workers on, as a dispatcher registerAs; registerWorkers of
	// them, at its first port.
	registerSocket  string
	registerAs      string
	registerWorkers int
}

type portsFlag struct{ ports *[]int }

func (p portsFlag) String() string {
	if p.ports == nil {
		return ""
	}
	s := make([]string, len(*p.ports))
	for i, n := range *p.ports {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func (p portsFlag) Set(v string) error {
	// An empty list is a service without ports (a tailer), so one command
	// template can start every service.
	if strings.TrimSpace(v) == "" {
		return nil
	}
	for _, s := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("bad port %q", s)
		}
		*p.ports = append(*p.ports, n)
	}
	return nil
}

// crashFlag is a bool flag so that a bare --crash means exit code 1, while
// --crash=3 or --crash=KILL pick another way to die.
type crashFlag struct {
	set  bool
	code int
	kill bool
}

func (c *crashFlag) IsBoolFlag() bool { return true }

func (c *crashFlag) String() string {
	switch {
	case c == nil || !c.set:
		return ""
	case c.kill:
		return "KILL"
	}
	return strconv.Itoa(c.code)
}

func (c *crashFlag) Set(v string) error {
	switch {
	case v == "true":
		*c = crashFlag{set: true, code: 1}
	case v == "false":
		*c = crashFlag{}
	case isSignalKill(v):
		*c = crashFlag{set: true, kill: true}
	default:
		code, err := parseExitCode(v)
		if err != nil {
			return err
		}
		*c = crashFlag{set: true, code: code}
	}
	return nil
}

// parseConfig reads flags, then layers the environment's faults on top, so
// a supervisor can inject a fault into an otherwise fixed command line.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (*config, error) {
	cfg := &config{}
	fs := flag.NewFlagSet("standin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: standin [flags]\n\nA test fixture that plays a Deephaven JVM service (see the package doc).\n"+
			"Faults can also be set with %s=kind[:arg][;kind[:arg]...] and at runtime with POST /fault/<kind>[?arg=ARG].\n\n", faultEnv)
		fs.PrintDefaults()
	}
	var (
		crash     crashFlag
		crashWait time.Duration
		hang      bool
		unhealthy bool
		grow      string
		growMax   string
	)
	fs.StringVar(&cfg.name, "name", "standin", "service `name`, used in responses, logs and the record file")
	fs.StringVar(&cfg.addr, "addr", "127.0.0.1", "`host` to listen on")
	fs.Var(portsFlag{&cfg.ports}, "port", "TCP `port` to serve HTTP on; repeatable; 0 picks a free one")
	fs.Var(portsFlag{&cfg.ports}, "ports", "comma-separated `list` of ports, added to --port")
	fs.DurationVar(&cfg.startDelay, "start-delay", 0, "wait this `duration` before listening, like a slow JVM start")
	fs.IntVar(&cfg.exitAtStart, "exit-at-start", -1, "exit with this `code` before listening (negative: don't)")
	fs.Var(&crash, "crash", "crash once listening: bare for exit code 1, =`CODE` for another, =KILL to SIGKILL itself")
	fs.DurationVar(&crashWait, "crash-after", 0, "crash this `duration` after listening (implies --crash)")
	fs.BoolVar(&hang, "hang", false, "accept connections but never answer HTTP, and ignore SIGTERM")
	fs.BoolVar(&unhealthy, "unhealthy", false, "answer /health with 503")
	fs.StringVar(&grow, "grow", "", "allocate and touch memory at `RATE[,MAX]`, e.g. 20MiB/s or 20MiB/s,200MiB")
	fs.StringVar(&growMax, "grow-max", "", "stop --grow at this `size`, e.g. 200MiB")
	fs.DurationVar(&cfg.termDelay, "term-delay", 0, "on SIGTERM wait this `duration` before closing the ports and exiting")
	fs.StringVar(&cfg.record, "record", "", "append start/stop lines to this `file`")
	fs.StringVar(&cfg.appLog, "app-log", "", "write Deephaven's lifecycle lines (NAME INITIALIZING, NAME RUNNING once listening) to <Prefix>.log.current in this `directory`, as the JVM does")
	fs.StringVar(&cfg.release, "release", "", "the package `release` this binary came from: shown by GET / and added to record lines as a fifth field")
	fs.StringVar(&cfg.pidfile, "pidfile", "", "write the service's pid to this `file`")
	fs.StringVar(&cfg.logFile, "log", "", "append logs to this `file` instead of stderr")
	fs.BoolVar(&cfg.daemonize, "daemonize", false, "fork into the background in a new session; exit 0 once listening")
	fs.BoolVar(&cfg.launcher, "launcher", false, "daemonize as Deephaven's launcher does: fork into the background in a new session and exit 0 at once; "+
		"the background process writes --pidfile itself, and refuses to start (exit 1) while that file exists")
	fs.BoolVar(&cfg.grpc, "grpc", false, "every port also answers any gRPC method (HTTP/2 without TLS) with an empty message and response headers "+
		headerName+" (--name), "+headerPort+", "+headerMethod+" and, with --worker, "+headerWorker)
	fs.StringVar(&cfg.worker, "worker", "", "play the query worker `NAME` a dispatcher started: --grpc on --listen; --name defaults to NAME")
	fs.StringVar(&cfg.registerSocket, "register-socket", "", "register fake query workers as a dispatcher on the agent's workers socket at `PATH` once listening, and again every 10 s")
	fs.StringVar(&cfg.registerAs, "register-as", getenv("DHVISOR_SERVICE"), "the dispatcher `NAME` --register-socket registers as (default: $DHVISOR_SERVICE, the service the agent runs)")
	fs.IntVar(&cfg.registerWorkers, "register-workers", 2, "how many fake workers --register-socket registers (`N`), named <dispatcher>-w<i>, at the first port")
	var listen string
	fs.StringVar(&listen, "listen", "", "`HOST:PORT` to listen on, instead of --addr and --port")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if listen != "" {
		if set["addr"] || set["port"] || set["ports"] {
			return nil, errors.New("--listen replaces --addr, --port and --ports")
		}
		host, port, err := net.SplitHostPort(listen)
		n, perr := strconv.Atoi(port)
		if err != nil || perr != nil || n < 0 || n > 65535 {
			return nil, fmt.Errorf("--listen %q: want HOST:PORT", listen)
		}
		cfg.addr, cfg.ports = host, []int{n}
	}
	if cfg.worker != "" {
		if strings.IndexFunc(cfg.worker, unicode.IsSpace) >= 0 {
			return nil, fmt.Errorf("--worker %q: must be without spaces", cfg.worker)
		}
		if listen == "" {
			return nil, errors.New("--worker needs --listen HOST:PORT, the address the dispatcher registers for it")
		}
		cfg.grpc = true
		if !set["name"] {
			cfg.name = cfg.worker
		}
	}
	if cfg.registerSocket != "" {
		if cfg.registerAs == "" || strings.ContainsAny(cfg.registerAs, " /:") {
			return nil, fmt.Errorf("--register-as %q: a dispatcher service name (or $DHVISOR_SERVICE) is needed with --register-socket", cfg.registerAs)
		}
		if cfg.registerWorkers < 0 || cfg.registerWorkers > 20000 {
			return nil, fmt.Errorf("--register-workers %d: want 0-20000", cfg.registerWorkers)
		}
		if len(cfg.ports) == 0 {
			return nil, errors.New("--register-socket needs a --port for the workers to be at")
		}
	}
	if cfg.launcher && (cfg.daemonize || cfg.pidfile == "") {
		return nil, errors.New("--launcher needs --pidfile and excludes --daemonize")
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flag values that are optional need '=', e.g. --crash=3)", fs.Arg(0))
	}
	if strings.IndexFunc(cfg.release, unicode.IsSpace) >= 0 {
		return nil, fmt.Errorf("--release %q: must be without spaces, it is a field of the record file", cfg.release)
	}
	if cfg.name == "" || strings.IndexFunc(cfg.name, unicode.IsSpace) >= 0 {
		return nil, fmt.Errorf("--name %q: must be non-empty without spaces, it is a field of the record file", cfg.name)
	}
	seen := map[int]bool{}
	for _, p := range cfg.ports {
		if p != 0 && seen[p] {
			return nil, fmt.Errorf("port %d given twice", p)
		}
		seen[p] = true
	}
	for _, d := range []time.Duration{cfg.startDelay, cfg.termDelay, crashWait} {
		if d < 0 {
			return nil, fmt.Errorf("negative duration %v", d)
		}
	}
	if cfg.exitAtStart > 255 {
		return nil, fmt.Errorf("--exit-at-start %d: want 0..255", cfg.exitAtStart)
	}

	if unhealthy {
		cfg.faults = append(cfg.faults, fault{kind: kindUnhealthy})
	}
	if hang {
		cfg.faults = append(cfg.faults, fault{kind: kindHang})
	}
	if grow != "" {
		f, err := parseFault(kindGrow, grow)
		if err != nil {
			return nil, fmt.Errorf("--grow: %w", err)
		}
		if growMax != "" {
			if f.max, err = parseSize(growMax); err != nil {
				return nil, fmt.Errorf("--grow-max: %w", err)
			}
			f.arg = strings.SplitN(grow, ",", 2)[0] + "," + growMax
		}
		cfg.faults = append(cfg.faults, f)
	} else if growMax != "" {
		return nil, errors.New("--grow-max needs --grow")
	}
	if crash.set || crashWait > 0 {
		f := fault{kind: kindCrash, code: crash.code, kill: crash.kill, after: crashWait}
		if !crash.set {
			f.code = 1
		}
		f.arg = crash.String()
		if crashWait > 0 {
			f.arg = strings.TrimPrefix(f.arg+","+crashWait.String(), ",")
		}
		cfg.faults = append(cfg.faults, f)
	}

	envFaults, err := parseFaults(getenv(faultEnv))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", faultEnv, err)
	}
	for _, f := range envFaults {
		switch f.kind {
		case kindStartDelay:
			cfg.startDelay = f.delay
		case kindExitAtStart:
			cfg.exitAtStart = f.code
		default:
			cfg.faults = append(cfg.faults, f)
		}
	}
	return cfg, nil
}
