package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/version"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// monit's command line has two exit codes: 0, and 1 for everything that
// went wrong (bad arguments, unknown service or group, no daemon, a failed
// validate). Measured with monit 5.33; dhctl's own 2 is never used here.
const (
	monitExitOK   = 0
	monitExitFail = 1
)

// MonitName is the program name under which dhctl acts as monit's command
// line (a /usr/bin/monit symlink or alternative pointing at dhctl).
const MonitName = "monit"

// The actions monit's command line takes that dhctl monit answers.
const (
	monitStart     = "start"
	monitStop      = "stop"
	monitRestart   = "restart"
	monitMonitor   = "monitor"
	monitUnmonitor = "unmonitor"
	monitSummary   = "summary"
	monitStatus    = "status"
	monitReload    = "reload"
	monitValidate  = "validate"
	monitQuit      = "quit"
	monitAll       = "all"
)

var monitControls = map[string]pb.Action{
	monitStart:     pb.Action_ACTION_START,
	monitStop:      pb.Action_ACTION_STOP,
	monitRestart:   pb.Action_ACTION_RESTART,
	monitMonitor:   pb.Action_ACTION_MONITOR,
	monitUnmonitor: pb.Action_ACTION_UNMONITOR,
}

// errReported is an exit whose message was already printed in monit's
// words; Execute adds nothing.
var errReported = errors.New("reported")

// Args maps a process's argv to dhctl's arguments: called as monit (through
// a symlink), dhctl is `dhctl monit`.
func Args(argv []string) []string {
	if len(argv) == 0 {
		return nil
	}
	if filepath.Base(argv[0]) == MonitName {
		return append([]string{MonitName}, argv[1:]...)
	}
	return argv[1:]
}

// monitArgs is a parsed monit command line.
type monitArgs struct {
	action     string
	names      []string
	group      string
	batch      bool // -B: no box table, no colours
	syntaxOnly bool // -t
	version    bool // -V
	help       bool // -h
	socket     string
	// ignored are the options monit takes that mean nothing here (its
	// control, log, pid and state files): accepted so scripts keep working,
	// each told on stderr.
	ignored []string
}

// monitUsageError is a command line monit would refuse, in monit's words.
type monitUsageError string

func (e monitUsageError) Error() string { return string(e) }

// parseMonitArgs reads monit's command line as its getopt does: options
// anywhere (glibc permutes), grouped (-Bv), with their argument attached or
// next (-gweb, -g web); the first other word is the action, the rest names.
func parseMonitArgs(args []string) (monitArgs, error) {
	var a monitArgs
	var words []string
	for i := 0; i < len(args); i++ {
		arg := args[i]
		switch {
		case arg == "--":
			words = append(words, args[i+1:]...)
			i = len(args)
			continue
		case arg == "--socket" || strings.HasPrefix(arg, "--socket="):
			// dhctl's own flag, before or after monit: cobra hands it over
			// unparsed because monit's options are not cobra's.
			v, ok := strings.CutPrefix(arg, "--socket=")
			if !ok {
				if i+1 >= len(args) {
					return a, monitUsageError("Option --socket requires an argument")
				}
				i++
				v = args[i]
			}
			a.socket = v
			continue
		case arg == "--help":
			a.help = true
			continue
		case arg == "--version":
			a.version = true
			continue
		case strings.HasPrefix(arg, "--"):
			return a, monitUsageError(fmt.Sprintf("Invalid option -- %s  (-h will show valid options)", strings.TrimPrefix(arg, "--")))
		case len(arg) < 2 || arg[0] != '-':
			words = append(words, arg)
			continue
		}
		for j := 1; j < len(arg); j++ {
			opt := arg[j]
			switch opt {
			case 'c', 'd', 'g', 'l', 'p', 's':
				v := arg[j+1:]
				if v == "" {
					if i+1 >= len(args) {
						return a, monitUsageError(fmt.Sprintf("Option -%c requires an argument", opt))
					}
					i++
					v = args[i]
				}
				switch opt {
				case 'g':
					a.group = v
				case 'd':
					return a, monitUsageError("-d: dhctl monit runs no daemon; dhagent is the daemon (systemctl start dhagent)")
				default:
					a.ignored = append(a.ignored, fmt.Sprintf("-%c %s", opt, v))
				}
				j = len(arg)
			case 'B':
				a.batch = true
			case 't':
				a.syntaxOnly = true
			case 'V':
				a.version = true
			case 'h':
				a.help = true
			case 'v', 'I', 'i', 'H', 'r':
				// Verbose, foreground, id and hash options change nothing
				// in what the agent answers.
			default:
				return a, monitUsageError(fmt.Sprintf("Invalid option -- %c  (-h will show valid options)", opt))
			}
		}
	}
	if len(words) > 0 {
		a.action, a.names = words[0], words[1:]
	}
	if a.help || a.version || a.syntaxOnly {
		return a, nil
	}
	switch a.action {
	case "":
		return a, monitUsageError("dhctl monit runs no daemon: dhagent is the daemon (systemctl start dhagent); give an action such as summary")
	case monitSummary, monitStatus, monitReload, monitValidate:
	case monitQuit:
		return a, monitUsageError("quit: dhctl monit does not stop dhagent, which keeps the services running; use systemctl stop dhagent")
	default:
		if _, ok := monitControls[a.action]; !ok {
			return a, monitUsageError(fmt.Sprintf("Invalid argument -- %s  (-h will show valid arguments)", a.action))
		}
		if len(a.names) == 0 && a.group == "" {
			return a, monitUsageError(fmt.Sprintf("Please specify a service name or 'all' after %s", a.action))
		}
	}
	return a, nil
}

const monitUsage = `Usage: monit [options]+ [command]
dhctl monit: monit 5.33's command line, answered by the local dhagent.

Options are as follows:
 -g name       Set group name for monit commands start, stop, restart,
               monitor, unmonitor, status and summary
 -c file       Accepted and ignored: services come from the agent's
               configuration (agent.yaml and the monit files it includes)
 -l, -p, -s    Accepted and ignored, as -c
 -t            Check the agent's configuration syntax
 -B            Batch mode: no box table and no colours
 -v, -I        Accepted and ignored
 -V            Print version number and exit
 -h            Print this text and exit

Optional commands are as follows:
 start all             - Start all services
 start <name>          - Only start the named service
 stop all              - Stop all services
 stop <name>           - Stop the named service
 restart all           - Stop and start all services
 restart <name>        - Only restart the named service
 monitor all           - Enable monitoring of all services
 monitor <name>        - Only enable monitoring of the named service
 unmonitor all         - Disable monitoring of all services
 unmonitor <name>      - Only disable monitoring of the named service
 reload                - Make the agent re-read its configuration
 status [name]         - Print full status information for service(s)
 summary [name]        - Print short status information for service(s)
 validate              - Exit 1 if a monitored service is not OK

Exit status: 0, or 1 on any error, as monit's.
`

func (o *options) monitCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "monit [OPTIONS] ACTION [NAME|all]",
		Short: "monit's command line (summary, status, start/stop/restart/monitor/unmonitor NAME|all, -g GROUP, reload, validate, -t) over the local agent",
		Long: `dhctl monit answers monit 5.33's command line from the local dhagent, with
monit's layout for summary and status and monit's exit codes (0, or 1), so
Deephaven's scripts and runbooks keep working. Linked or installed as
/usr/bin/monit (update-alternatives or a symlink), dhctl acts as this
command. The agent socket is DHVISOR_SOCKET's, or --socket.` + "\n\n" + monitUsage,
		DisableFlagParsing: true,
		// monit's own words come as arguments; only "import" is dhctl's.
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := o.runMonit(cmd.Context(), args); code != monitExitOK {
				return &exitError{code: code, err: errReported}
			}
			return nil
		},
	}
	c.AddCommand(o.monitImportCmd())
	return c
}

// runMonit runs one monit command line and returns monit's exit code.
func (o *options) runMonit(ctx context.Context, args []string) int {
	a, err := parseMonitArgs(args)
	if err != nil {
		fmt.Fprintln(o.errOut, err)
		return monitExitFail
	}
	if a.socket != "" {
		o.socket = a.socket
	}
	for _, ig := range a.ignored {
		fmt.Fprintf(o.errOut, "dhctl monit: %s ignored: services come from the agent's configuration\n", ig)
	}
	switch {
	case a.help:
		fmt.Fprint(o.out, monitUsage)
		return monitExitOK
	case a.version:
		fmt.Fprintf(o.out, "This is dhctl monit %s, monit 5.33's command line for dhagent\n", version.Version)
		return monitExitOK
	case a.syntaxOnly:
		return o.monitSyntax(ctx)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	c, closeConn, err := o.client(ctx)
	if err != nil {
		return o.monitNoAgent(a)
	}
	defer closeConn()
	if a.action == monitReload {
		return o.monitReload(ctx, c)
	}
	resp, err := c.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		if status.Code(err) == codes.Unavailable {
			return o.monitNoAgent(a)
		}
		fmt.Fprintln(o.errOut, rpcError(err))
		return monitExitFail
	}
	if act, ok := monitControls[a.action]; ok {
		return o.monitControl(ctx, c, resp, a, act)
	}
	svcs, msg := monitSelect(resp, a, time.Now())
	if msg != "" {
		fmt.Fprintln(o.errOut, msg)
		return monitExitFail
	}
	banner := monitBanner(resp.AgentVersion, time.Since(time.UnixMilli(resp.AgentStartedUnixMs)))
	tty := !a.batch && isTerminal(o.out)
	switch a.action {
	case monitSummary:
		writeMonitSummary(o.out, banner, svcs, tty)
	case monitStatus:
		writeMonitStatus(o.out, banner, svcs, tty)
	case monitValidate:
		writeMonitStatus(o.out, banner, svcs, tty)
		if bad := monitErrors(svcs); len(bad) > 0 {
			fmt.Fprintf(o.errOut, "not OK: %s\n", strings.Join(bad, ", "))
			return monitExitFail
		}
	}
	return monitExitOK
}

// monitNoAgent answers as monit does when its daemon does not run: reload
// says so and still exits 0; everything else fails.
func (o *options) monitNoAgent(a monitArgs) int {
	if a.action == monitReload {
		fmt.Fprintln(o.out, "Reinitializing dhagent")
		fmt.Fprintf(o.errOut, "dhagent is not running (no agent on %s)\n", o.socket)
		return monitExitOK
	}
	fmt.Fprintf(o.errOut, "dhctl monit: the dhagent daemon is not running (no agent on %s)\n", o.socket)
	return monitExitFail
}

func (o *options) monitReload(ctx context.Context, c pb.AgentClient) int {
	fmt.Fprintln(o.out, "Reinitializing dhagent")
	if _, err := c.Reload(ctx, &pb.ReloadRequest{}); err != nil {
		if status.Code(err) == codes.Unavailable {
			fmt.Fprintf(o.errOut, "dhagent is not running (no agent on %s)\n", o.socket)
			return monitExitOK
		}
		// monit refuses a bad control file at its command line's start, so
		// a reload of a bad configuration fails there too.
		fmt.Fprintln(o.errOut, status.Convert(err).Message())
		return monitExitFail
	}
	return monitExitOK
}

// monitSyntax is -t: the agent's configuration (the file the running agent
// read, else the packaged default) is loaded as the agent would load it.
func (o *options) monitSyntax(ctx context.Context) int {
	file := config.DefaultAgentPath
	_ = o.call(ctx, 5*time.Second, func(ctx context.Context, c pb.AgentClient) error {
		resp, err := c.Status(ctx, &pb.StatusRequest{})
		if err == nil && resp.ConfigFile != "" {
			file = resp.ConfigFile
		}
		return err
	})
	if _, err := config.LoadAgent(file); err != nil {
		fmt.Fprintln(o.errOut, err)
		return monitExitFail
	}
	fmt.Fprintln(o.out, "Control file syntax OK")
	return monitExitOK
}

// monitControl sends start, stop, restart, monitor or unmonitor to the agent
// and returns without waiting, as monit's command line hands the action to
// its daemon and returns; scripts that wait poll summary or status.
func (o *options) monitControl(ctx context.Context, c pb.AgentClient, resp *pb.StatusResponse, a monitArgs, act pb.Action) int {
	targets := a.names
	if a.group != "" {
		targets = monitGroup(resp, a.group)
		if len(targets) == 0 {
			fmt.Fprintf(o.errOut, "Group '%s' not found\n", a.group)
			return monitExitFail
		}
	} else if !slices.Contains(targets, monitAll) {
		for _, n := range targets {
			if monitFind(resp, n) == nil {
				fmt.Fprintf(o.errOut, "There is no service named \"%s\"\n", n)
				return monitExitFail
			}
		}
	} else {
		targets = []string{monitAll}
	}
	st, err := c.Control(ctx, &pb.ControlRequest{Action: act, Services: targets})
	if err != nil {
		fmt.Fprintln(o.errOut, status.Convert(err).Message())
		return monitExitFail
	}
	code := monitExitOK
	for {
		p, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return code
		}
		if err != nil {
			fmt.Fprintln(o.errOut, status.Convert(err).Message())
			return monitExitFail
		}
		if p.Failed {
			fmt.Fprintf(o.errOut, "'%s' %s failed -- %s\n", p.Service, a.action, p.Message)
			code = monitExitFail
		}
	}
}

func monitFind(resp *pb.StatusResponse, name string) *pb.ServiceStatus {
	for _, s := range resp.Services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// monitGroup lists the group's services in the agent's start order.
func monitGroup(resp *pb.StatusResponse, group string) []string {
	var out []string
	for _, s := range resp.Services {
		if slices.Contains(s.Groups, group) {
			out = append(out, s.Name)
		}
	}
	return out
}

// monitSelect picks what summary, status and validate show, as monit does:
// a named service alone (only the first name counts), a group's services,
// or every service with the node itself as monit's system service (first
// in summary, last in status). The message is monit's when nothing matches.
func monitSelect(resp *pb.StatusResponse, a monitArgs, now time.Time) ([]monitService, string) {
	var picked []*pb.ServiceStatus
	withSystem := false
	switch {
	case len(a.names) > 0 && a.names[0] != monitAll:
		s := monitFind(resp, a.names[0])
		if s == nil {
			return nil, fmt.Sprintf("Service '%s' not found", a.names[0])
		}
		picked = []*pb.ServiceStatus{s}
	case a.group != "":
		for _, n := range monitGroup(resp, a.group) {
			picked = append(picked, monitFind(resp, n))
		}
		if len(picked) == 0 {
			return nil, fmt.Sprintf("Service group '%s' not found", a.group)
		}
	default:
		picked = resp.Services
		withSystem = true
	}
	var out []monitService
	for _, s := range picked {
		out = append(out, toMonitService(s, now))
	}
	if withSystem {
		sys := monitService{name: resp.Node, kind: monitSystem, status: monitOK, monitoring: monitMonitored,
			mode: monitModeActive, onReboot: monitOnReboot(""), collected: now}
		if a.action == monitSummary {
			out = append([]monitService{sys}, out...)
		} else {
			out = append(out, sys)
		}
	}
	return out, ""
}

func toMonitService(s *pb.ServiceStatus, now time.Time) monitService {
	word := monitStatusWord(s)
	m := monitService{name: s.Name, kind: monitProcess, status: word, monitoring: monitMonitoringWord(word),
		mode: monitMode(s.Mode), onReboot: monitOnReboot(s.OnBoot), collected: now}
	if s.Pid != 0 && m.monitoring == monitMonitored {
		m.proc = readMonitProc(s, now)
	}
	return m
}

// monitErrors names the monitored services validate fails on: monit's
// validate exits 1 when a check of a monitored service fails.
func monitErrors(svcs []monitService) []string {
	var bad []string
	for _, s := range svcs {
		switch s.status {
		case monitOK, monitInitializing, monitNotMonitored:
		default:
			bad = append(bad, s.name)
		}
	}
	return bad
}
