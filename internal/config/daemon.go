package config

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Program is one of a daemonizing service's start, stop and restart
// programs, as monit runs them: an absolute path and its arguments, run
// as User and Group (the service's own when empty), within Timeout.
type Program struct {
	Command []string `yaml:"command"`
	User    string   `yaml:"user"`
	Group   string   `yaml:"group"`
	// Timeout bounds the program's run; when zero, a start or restart
	// program has the service's start_timeout and a stop program its
	// stop_timeout.
	Timeout Duration `yaml:"timeout"`
}

// UnmarshalYAML takes a program as a list (the command alone) or as a
// mapping with its command, user, group and timeout.
func (p *Program) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.SequenceNode {
		var argv []string
		if err := n.Decode(&argv); err != nil {
			return err
		}
		*p = Program{Command: argv}
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: expected a program: a list [/path/to/program, args...] or {command: [...], user: U, group: G, timeout: 30s}", n.Line)
	}
	type plain Program
	return n.Decode((*plain)(p))
}

// Daemonizing reports whether the service starts through a start program
// and is followed through its pidfile or command line.
func (s *Service) Daemonizing() bool { return s.Start != nil }

// Followed reports whether the agent finds the service's process through
// a pidfile or a command-line match rather than as its own child.
func (s *Service) Followed() bool { return s.Pidfile != "" || s.Match != "" }

// IsPassive reports whether the agent only watches the service.
func (s *Service) IsPassive() bool { return s.Mode == ModePassive }

// CannotStart reports whether the agent has no way to start the service:
// followed through a pidfile without a start program (monit accepts such a
// check process and only watches it, as in mode passive).
func (s *Service) CannotStart() bool {
	return s.Followed() && s.Start == nil && len(s.Command) == 0
}

// ProgramTimeout is how long p may run: its own timeout, else def.
func ProgramTimeout(p *Program, def time.Duration) time.Duration {
	if p != nil && p.Timeout > 0 {
		return p.Timeout.D()
	}
	return def
}

func (s *Service) applyDaemonDefaults() {
	setDur(&s.StartTimeout, 30*time.Second)
	if s.User == "" && s.Start != nil && s.Start.User != "" {
		// The start program's user is the one the daemon runs as (monit's
		// "start program = ... as uid U"): its pidfile must name a
		// process of that user.
		s.User, s.Group = s.Start.User, s.Start.Group
	}
	if s.Mode == "" {
		s.Mode = ModeActive
	}
	if s.OnBoot == "" {
		s.OnBoot = OnBootLastState
	}
	r := &s.Restart
	if r.LimitAction == "" {
		r.LimitAction = ActionFail
	}
	if r.OnMissing == "" {
		r.OnMissing = ActionRestart
	}
	l := &s.Limits
	if l.MemoryAction == "" {
		l.MemoryAction = ActionRestart
	}
	if l.CPUAction == "" {
		l.CPUAction = ActionRestart
	}
	for i := range s.Checks {
		if s.Checks[i].Action == "" {
			s.Checks[i].Action = ActionRestart
		}
	}
}

// validateDaemon checks the fields of the daemonizing process model.
func (s *Service) validateDaemon(bad func(format string, args []any, path ...string)) {
	oneOf := func(v string, allowed []string, path ...string) {
		for _, a := range allowed {
			if v == a {
				return
			}
		}
		bad("%q is not one of %s", []any{v, strings.Join(allowed, ", ")}, path...)
	}
	oneOf(s.Mode, []string{ModeActive, ModePassive, ModeManual}, "mode")
	oneOf(s.OnBoot, []string{OnBootStart, OnBootNoStart, OnBootLastState}, "on_boot")
	oneOf(s.Restart.LimitAction, []string{ActionFail, ActionAlert}, "restart", "limit_action")
	oneOf(s.Restart.OnMissing, []string{ActionRestart, ActionAlert}, "restart", "on_missing")
	oneOf(s.Limits.MemoryAction, []string{ActionRestart, ActionAlert}, "limits", "memory_action")
	oneOf(s.Limits.CPUAction, []string{ActionRestart, ActionAlert}, "limits", "cpu_action")
	if p := s.Limits.MemoryPercent; p < 0 || p > 100 {
		bad("memory_percent %g is out of range (expected 0-100, of the host's memory)", []any{p}, "limits", "memory_percent")
	}
	for i, g := range s.Groups {
		if g == "" || strings.ContainsAny(g, " \t\r\n,") {
			bad("group %q must be a non-empty word (no spaces or commas)", []any{g}, "groups", fmt.Sprint(i))
		}
	}
	for name, p := range map[string]*Program{"start": s.Start, "stop": s.Stop, "restart_program": s.RestartProgram} {
		if p == nil {
			continue
		}
		switch {
		case len(p.Command) == 0 || p.Command[0] == "":
			bad("the program needs a command (an absolute path and its arguments)", nil, name, "command")
		case !filepath.IsAbs(p.Command[0]):
			bad("%q is not an absolute path (a program runs without a shell or PATH search, as monit runs it)", []any{p.Command[0]}, name, "command", "0")
		}
	}
	if s.Pidfile != "" && s.Match != "" {
		bad("give pidfile or match, not both (monit's check process takes one)", nil, "match")
	}
	if s.Pidfile != "" && !filepath.IsAbs(s.Pidfile) {
		bad("%q is not an absolute path", []any{s.Pidfile}, "pidfile")
	}
	if s.Match != "" {
		if _, err := regexp.Compile(s.Match); err != nil {
			bad("%q is not a regular expression: %v", []any{s.Match, err}, "match")
		}
	}
	switch {
	case s.Container != nil:
		if s.Start != nil || s.Followed() {
			bad("the Envoy container is run by the container engine, not by start programs or pidfiles", nil, "start")
		}
	case s.Start != nil:
		if !s.Followed() {
			bad("a start program returns once the service runs in the background: give pidfile (or match) to follow it", nil, "pidfile")
		}
		if len(s.Command) > 0 {
			bad("give command (run in the foreground) or start (a program that daemonizes), not both", nil, "command")
		}
	default:
		for name, p := range map[string]*Program{"stop": s.Stop, "restart_program": s.RestartProgram} {
			if p != nil {
				bad("%s needs a start program (the daemonizing process model)", []any{name}, name)
			}
		}
	}
	if s.StartTimeout.D() < 100*time.Millisecond {
		bad("start_timeout %s is too short (expected at least 100ms)", []any{s.StartTimeout.D()}, "start_timeout")
	}
}

// validateCheckOptions checks the fields monit's tests brought to checks.
func (c *Check) validateOptions(bad func(format string, args []any, path ...string)) {
	switch c.Action {
	case ActionRestart, ActionAlert:
	default:
		bad("action %q is not one of restart, alert", []any{c.Action}, "action")
	}
	switch c.ExpectStatusOp {
	case "", "=", "==", "!=", "<", ">", "<=", ">=":
	default:
		bad("expect_status_op %q is not one of = != < > <= >=", []any{c.ExpectStatusOp}, "expect_status_op")
	}
	if c.ExpectStatusOp != "" && c.ExpectStatus == 0 {
		bad("expect_status_op needs expect_status", nil, "expect_status_op")
	}
	if c.Within != 0 && c.Within < c.Failures {
		bad("within %d is fewer probes than failures %d", []any{c.Within, c.Failures}, "within")
	}
	if c.Retries < 0 {
		bad("retries must not be negative", nil, "retries")
	}
}
