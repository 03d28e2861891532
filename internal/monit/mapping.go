package monit

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// agent.yaml service fields the importer writes.
const (
	fPidfile        = "pidfile"
	fMatch          = "match"
	fStart          = "start"
	fStop           = "stop"
	fRestartProgram = "restart_program"
	fCommand        = "command"
	fUser           = "user"
	fGroup          = "group"
	fTimeout        = "timeout"
	fStartTimeout   = "start_timeout"
	fStopTimeout    = "stop_timeout"
	fChecks         = "checks"
	fType           = "type"
	fHost           = "host"
	fPort           = "port"
	fPath           = "path"
	fExpectStatus   = "expect_status"
	fExpectStatusOp = "expect_status_op"
	fInterval       = "interval"
	fFailures       = "failures"
	fWithin         = "within"
	fRetries        = "retries"
	fAction         = "action"
	fTLS            = "tls"
	fLimits         = "limits"
	fMemory         = "memory"
	fMemoryPercent  = "memory_percent"
	fMemoryCycles   = "memory_cycles"
	fMemoryAction   = "memory_action"
	fCPUPercent     = "cpu_percent"
	fCPUCycles      = "cpu_cycles"
	fCPUAction      = "cpu_action"
	fRestart        = "restart"
	fLimit          = "limit"
	fWindow         = "window"
	fLimitAction    = "limit_action"
	fOnMissing      = "on_missing"
	fDependsOn      = "depends_on"
	fGroups         = "groups"
	fMode           = "mode"
	fOnBoot         = "on_boot"
)

const (
	tagStr   = "!!str"
	tagInt   = "!!int"
	tagFloat = "!!float"
	tagBool  = "!!bool"
)

// monitNetTimeout is monit's default connection timeout.
const monitNetTimeout = 5 * time.Second

type mapper struct {
	im      *Import
	p       *parser
	origins map[*yaml.Node]string
	notes   []Statement
}

func (m *mapper) node(kind yaml.Kind, tag, value string, t token) *yaml.Node {
	n := &yaml.Node{Kind: kind, Tag: tag, Value: value, Line: t.line, Column: t.col}
	m.origins[n] = fileName(t)
	return n
}

func (m *mapper) mapping(t token) *yaml.Node { return m.node(yaml.MappingNode, "!!map", "", t) }
func (m *mapper) seq(t token) *yaml.Node     { return m.node(yaml.SequenceNode, "!!seq", "", t) }

func (m *mapper) put(mp *yaml.Node, key string, val *yaml.Node, t token) {
	mp.Content = append(mp.Content, m.node(yaml.ScalarNode, tagStr, key, t), val)
}

func (m *mapper) str(mp *yaml.Node, key, v string, t token) {
	m.put(mp, key, m.node(yaml.ScalarNode, tagStr, v, t), t)
}

func (m *mapper) int(mp *yaml.Node, key string, v int, t token) {
	m.put(mp, key, m.node(yaml.ScalarNode, tagInt, strconv.Itoa(v), t), t)
}

func (m *mapper) float(mp *yaml.Node, key string, v float64, t token) {
	tag := tagFloat
	if v == float64(int64(v)) {
		tag = tagInt // written as 160, not !!float 160
	}
	m.put(mp, key, m.node(yaml.ScalarNode, tag, strconv.FormatFloat(v, 'f', -1, 64), t), t)
}

func (m *mapper) strs(mp *yaml.Node, key string, vs []string, t token) {
	s := m.seq(t)
	for _, v := range vs {
		s.Content = append(s.Content, m.node(yaml.ScalarNode, tagStr, v, t))
	}
	m.put(mp, key, s, t)
}

func (m *mapper) service(s *service) Service {
	m.origins = map[*yaml.Node]string{}
	every := max(s.every, 1)
	cycle := m.im.Interval * time.Duration(every)
	dur := func(cycles int) string { return (time.Duration(cycles) * cycle).String() }
	n := m.mapping(s.tok)
	if s.pidfile != "" {
		m.str(n, fPidfile, s.pidfile, s.headTok)
	} else {
		m.str(n, fMatch, s.match, s.headTok)
	}
	for _, pr := range []struct {
		key string
		p   *program
	}{{fStart, s.start}, {fStop, s.stop}, {fRestartProgram, s.restrt}} {
		if pr.p == nil {
			continue
		}
		pm := m.mapping(pr.p.tok)
		m.strs(pm, fCommand, pr.p.argv, pr.p.tok)
		if pr.p.user != "" {
			m.str(pm, fUser, pr.p.user, pr.p.tok)
		}
		if pr.p.group != "" {
			m.str(pm, fGroup, pr.p.group, pr.p.tok)
		}
		if pr.p.timeout > 0 {
			m.str(pm, fTimeout, (time.Duration(pr.p.timeout) * time.Second).String(), pr.p.tok)
		}
		m.put(n, pr.key, pm, pr.p.tok)
	}
	if p := s.start; p != nil && p.timeout > 0 {
		m.str(n, fStartTimeout, (time.Duration(p.timeout) * time.Second).String(), p.tok)
	}
	if p := s.stop; p != nil && p.timeout > 0 {
		m.str(n, fStopTimeout, (time.Duration(p.timeout) * time.Second).String(), p.tok)
	}
	if p := s.start; p != nil && p.user != "" {
		// The start program's user is the one the daemon runs as, so its
		// pidfile must name a process of that user.
		m.str(n, fUser, p.user, p.tok)
		if p.group != "" {
			m.str(n, fGroup, p.group, p.tok)
		}
	}
	if len(s.checks) > 0 {
		cs := m.seq(s.checks[0].tok)
		for _, c := range s.checks {
			cm := m.mapping(c.tok)
			m.str(cm, fType, c.typ, c.tok)
			if c.host != "" {
				m.str(cm, fHost, c.host, c.tok)
			}
			if c.typ != "unix" {
				m.int(cm, fPort, c.port, c.tok)
			}
			if c.path != "" {
				m.str(cm, fPath, c.path, c.tok)
			}
			if c.status != 0 {
				m.int(cm, fExpectStatus, c.status, c.tok)
				if c.statusOp != opEQ {
					m.str(cm, fExpectStatusOp, c.statusOp, c.tok)
				}
			}
			if c.tls {
				m.put(cm, fTLS, m.node(yaml.ScalarNode, tagBool, "true", c.tok), c.tok)
			}
			timeout := min(monitNetTimeout, cycle)
			if c.timeout > 0 {
				timeout = time.Duration(c.timeout) * time.Second
			}
			m.str(cm, fTimeout, timeout.String(), c.tok)
			m.str(cm, fInterval, cycle.String(), c.tok)
			// monit acts on the first failure unless a rate says otherwise.
			m.int(cm, fFailures, max(c.failures, 1), c.tok)
			if c.within > c.failures {
				m.int(cm, fWithin, c.within, c.tok)
			}
			if c.retries > 0 {
				m.int(cm, fRetries, c.retries, c.tok)
			}
			m.str(cm, fAction, c.action, c.tok)
			cs.Content = append(cs.Content, cm)
		}
		m.put(n, fChecks, cs, s.checks[0].tok)
	}
	if s.mem != nil || s.cpu != nil {
		first := s.mem
		if first == nil || (s.cpu != nil && s.cpu.tok.off < first.tok.off) {
			first = s.cpu
		}
		lm := m.mapping(first.tok)
		if l := s.mem; l != nil {
			if l.percent > 0 {
				m.float(lm, fMemoryPercent, l.percent, l.tok)
			} else {
				m.str(lm, fMemory, byteSize(l.bytes), l.tok)
			}
			m.int(lm, fMemoryCycles, l.cycles, l.tok)
			m.str(lm, fMemoryAction, l.action, l.tok)
		}
		if l := s.cpu; l != nil {
			// monit's process CPU is a share of all the host's CPUs;
			// dhvisor's 100 is one full core.
			m.float(lm, fCPUPercent, l.percent*float64(hostCPUs()), l.tok)
			m.int(lm, fCPUCycles, l.cycles, l.tok)
			m.str(lm, fCPUAction, l.action, l.tok)
		}
		m.str(lm, fInterval, cycle.String(), first.tok)
		m.put(n, fLimits, lm, first.tok)
	}
	if s.restarts != nil || s.onMissing != "" {
		t := s.onMissingTok
		if s.restarts != nil {
			t = s.restarts.tok
		}
		rm := m.mapping(t)
		if r := s.restarts; r != nil {
			m.int(rm, fLimit, r.count, r.tok)
			m.str(rm, fWindow, dur(r.cycles), r.tok)
			m.str(rm, fLimitAction, r.action, r.tok)
		}
		if s.onMissing != "" {
			m.str(rm, fOnMissing, s.onMissing, s.onMissingTok)
		}
		m.put(n, fRestart, rm, t)
	}
	var deps []string
	for _, d := range s.deps {
		if decl := m.p.names[d]; decl != nil && decl.svc == nil {
			m.notes = append(m.notes, Statement{File: fileName(s.depTok), Line: s.depTok.line,
				Text: fmt.Sprintf("depends on %s (check %s %s is not supervised; the dependency is dropped)", d, decl.typ, d)})
			continue
		}
		deps = append(deps, d)
	}
	if len(deps) > 0 {
		m.strs(n, fDependsOn, deps, s.depTok)
	}
	if len(s.groups) > 0 {
		gs := m.seq(s.groupToks[0])
		for i, g := range s.groups {
			gs.Content = append(gs.Content, m.node(yaml.ScalarNode, tagStr, g, s.groupToks[i]))
		}
		m.put(n, fGroups, gs, s.groupToks[0])
	}
	if s.mode != "" {
		m.str(n, fMode, s.mode, s.modeTok)
	}
	if s.onBoot != "" {
		m.str(n, fOnBoot, s.onBoot, s.onBootTok)
	}
	return Service{Name: s.name, File: fileName(s.tok), Line: s.tok.line, Node: n, Origins: m.origins}
}

// byteSize writes a size config.ParseByteSize reads back exactly.
func byteSize(b uint64) string {
	for _, u := range []struct {
		suffix string
		mult   uint64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b >= u.mult && b%u.mult == 0 {
			return strconv.FormatUint(b/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatUint(b, 10)
}

// YAML writes the services as agent.yaml's services: section, each field
// with a comment naming the monit file:line it came from.
func (im *Import) YAML() ([]byte, error) {
	root := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	svcs := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	key := &yaml.Node{Kind: yaml.ScalarNode, Tag: tagStr, Value: "services"}
	head := fmt.Sprintf("Imported from monit control files (poll interval %s):", im.Interval)
	for _, f := range im.Files {
		head += "\n  " + f
	}
	if len(im.NotApplied) > 0 {
		head += "\nNot applied:"
		for _, s := range im.NotApplied {
			head += "\n  " + s.String()
		}
	}
	key.HeadComment = printable(head)
	root.Content = append(root.Content, key, svcs)
	for _, s := range im.Services {
		k := &yaml.Node{Kind: yaml.ScalarNode, Tag: tagStr, Value: s.Name, LineComment: printable(fmt.Sprintf("%s:%d", s.File, s.Line))}
		svcs.Content = append(svcs.Content, k, commented(s.Node, s.Origins))
	}
	doc := &yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{root}}
	return yaml.Marshal(doc)
}

// commented copies n with each mapping key's line comment naming the
// monit file:line of its value.
func commented(n *yaml.Node, origins map[*yaml.Node]string) *yaml.Node {
	c := *n
	c.Content = make([]*yaml.Node, len(n.Content))
	for i, ch := range n.Content {
		c.Content[i] = commented(ch, origins)
	}
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(c.Content); i += 2 {
			v := n.Content[i+1]
			if v.Kind == yaml.ScalarNode {
				c.Content[i+1].LineComment = printable(fmt.Sprintf("%s:%d", origins[v], v.Line))
			} else if v.Kind == yaml.SequenceNode && allScalars(v) {
				c.Content[i+1].Style = yaml.FlowStyle
				c.Content[i+1].LineComment = printable(fmt.Sprintf("%s:%d", origins[v], v.Line))
			}
		}
	}
	return &c
}

func allScalars(n *yaml.Node) bool {
	for _, c := range n.Content {
		if c.Kind != yaml.ScalarNode {
			return false
		}
	}
	return true
}

// printable escapes what a YAML comment cannot hold (control and
// non-printing characters), keeping the line breaks of a head comment.
func printable(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r == '\n' || (unicode.IsPrint(r) && r != utf8.RuneError) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRune(r)
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}
