package monit

import (
	"fmt"
	"os/user"
	"regexp"
	"strconv"
	"strings"
)

// program is a start, stop or restart program as monit's grammar gives it.
type program struct {
	argv        []string
	user, group string
	timeout     int // seconds; 0 when not given
	tok         token
}

// check is an "if failed port|unixsocket" test.
type check struct {
	typ      string
	host     string
	port     int
	path     string
	status   int
	statusOp string
	timeout  int
	retries  int
	tls      bool
	failures int // 0: one failure is enough
	within   int
	action   string
	tok      token
}

// limit is an "if mem|cpu > N" test.
type limit struct {
	bytes   uint64
	percent float64
	cycles  int
	action  string
	tok     token
}

// rateLimit is "if N restarts within M cycles then ...".
type rateLimit struct {
	count, cycles int
	action        string
	tok           token
}

// service is one "check process" as parsed, before cycles become
// durations (the poll interval is known only at the end of the file).
type service struct {
	name                string
	tok                 token
	pidfile, match      string
	headTok             token
	start, stop, restrt *program
	checks              []check
	mem, cpu            *limit
	restarts            *rateLimit
	onMissing           string
	onMissingTok        token
	deps                []string
	depTok              token
	groups              []string
	groupToks           []token
	mode, onBoot        string
	modeTok, onBootTok  token
	every               int
	everyTok            token
}

// declared is any service monit would define, for dependency checks.
type declared struct {
	typ  string
	tok  token
	deps []string
	dtok []token
	svc  *service
}

type parser struct {
	toks       []token
	i          int
	errs       *Errors
	services   []*service
	names      map[string]*declared
	order      []string
	notApplied []Statement
	interval   int // seconds; 0 when no set daemon
	startDelay int
	cur        *service
}

// abort unwinds a statement that could not be parsed; the parser goes on
// at the next statement so that one run reports every bad statement.
type abort struct{}

var eofTok = token{kind: tEOF}

func (p *parser) peek() token {
	if p.i < len(p.toks) {
		return p.toks[p.i]
	}
	if n := len(p.toks); n > 0 {
		t := p.toks[n-1]
		return token{kind: tEOF, file: t.file, line: t.line, col: t.col + len(t.raw), off: t.end, end: t.end}
	}
	return eofTok
}

func (p *parser) next() token {
	t := p.peek()
	if p.i < len(p.toks) {
		p.i++
	}
	return t
}

func isWord(t token, kw string) bool { return t.kind == tWord && t.text == kw }

func describe(t token) string {
	switch t.kind {
	case tEOF:
		return "end of file"
	case tProgram:
		return fmt.Sprintf("%s program", t.text)
	case tCheck:
		return "check " + t.text
	}
	return fmt.Sprintf("%q", t.raw)
}

func fileName(t token) string {
	if t.file == nil {
		return "-"
	}
	return t.file.name
}

func (p *parser) fail(t token, format string, args ...any) {
	col := 0
	if t.file != nil {
		col = t.col
	}
	p.errs.add(fileName(t), t.line, col, format, args...)
	panic(abort{})
}

func (p *parser) expectWord(kw, what string) token {
	t := p.next()
	if !isWord(t, kw) {
		p.fail(t, "expected %s, found %s", what, describe(t))
	}
	return t
}

// nextOneOf takes the word after keyword, which must be one of three.
func (p *parser) nextOneOf(keyword, a, b, c string) token {
	t := p.next()
	if !isWord(t, a) && !isWord(t, b) && !isWord(t, c) {
		p.fail(t, "expected %s, %s or %s after %s, found %s", a, b, c, keyword, describe(t))
	}
	return t
}

func (p *parser) number(what string) (int, token) {
	t := p.next()
	if t.kind != tNumber {
		p.fail(t, "expected %s (a number), found %s", what, describe(t))
	}
	n, err := strconv.ParseInt(t.text, 10, 32)
	if err != nil {
		p.fail(t, "%s %s is too large", what, t.text)
	}
	return int(n), t
}

// atStatement reports whether t begins a top-level statement.
func atStatement(t token) bool {
	return t.kind == tEOF || t.kind == tCheck || isWord(t, kwSet)
}

func (p *parser) parse() {
	for p.peek().kind != tEOF {
		p.statement()
	}
	p.checkDepends()
}

func (p *parser) statement() {
	start := p.i
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(abort); !ok {
				panic(r)
			}
			// Resynchronise at the next top-level statement.
			if p.i == start {
				p.i++
			}
			for !atStatement(p.peek()) {
				p.i++
			}
		}
	}()
	t := p.peek()
	switch {
	case t.kind == tCheck:
		p.check()
	case isWord(t, kwSet):
		p.set()
	default:
		p.fail(t, "expected check, set or include, found %s", describe(t))
	}
}

// setNotApplied are the set statements with no bearing on supervision.
var setNotApplied = map[string]bool{
	"httpd": true, "mailserver": true, "alert": true, "logfile": true, "log": true, "pidfile": true,
	"idfile": true, "statefile": true, "eventqueue": true, "mail-format": true, "limits": true,
	"ssl": true, "onreboot": true, "init": true, "terminal": true, "fips": true, "mmonit": true,
	"expectbuffer": true,
}

const maxPoll = 31556952 // monit's limit: one year

func (p *parser) set() {
	first := p.next()
	w := p.next()
	switch {
	case isWord(w, kwDaemon):
		n, nt := p.number("the poll interval in seconds")
		if n <= 0 || n > maxPoll {
			p.fail(nt, "the poll interval %d is invalid (expected 1 to %d seconds)", n, maxPoll)
		}
		p.interval = n
		p.startDelay = 0
		if isWord(p.peek(), kwStart) {
			p.next()
			p.expectWord(kwDelay, "delay (set daemon N with start delay N)")
			p.startDelay, _ = p.number("the start delay in seconds")
		}
	case w.kind == tWord && setNotApplied[w.text]:
		p.skipBody()
		p.addNotApplied(first, p.toks[p.i-1])
	default:
		p.fail(w, "expected daemon, httpd, mailserver, alert, log, logfile, pidfile, idfile, statefile, eventqueue, mail-format, limits, ssl, onreboot, init, terminal or mmonit after set, found %s", describe(w))
	}
}

// skipBody passes over the tokens of a statement that is not applied, up
// to the next top-level statement; braces are passed whole because mail
// formats and ssl options hold free text.
func (p *parser) skipBody() {
	depth := 0
	for {
		t := p.peek()
		if t.kind == tEOF || (depth == 0 && atStatement(t)) {
			return
		}
		if t.kind == tChar && t.text == "{" {
			depth++
		}
		if t.kind == tChar && t.text == "}" && depth > 0 {
			depth--
		}
		p.i++
	}
}

func (p *parser) addNotApplied(from, to token) {
	text := from.raw
	if from.file != nil && from.file == to.file && to.end >= from.off && to.end <= len(from.file.data) {
		text = string(from.file.data[from.off:to.end])
	}
	p.notApplied = append(p.notApplied, Statement{File: fileName(from), Line: from.line, Text: strings.Join(strings.Fields(text), " ")})
}

func (p *parser) check() {
	ct := p.next()
	nt := p.next()
	if nt.kind != tName {
		p.fail(nt, "expected a service name after check %s, found %s", ct.text, describe(nt))
	}
	name := nt.text
	if d, ok := p.names[name]; ok {
		p.fail(nt, "service name conflict: %s is already defined at %s:%d", name, fileName(d.tok), d.tok.line)
	}
	decl := &declared{typ: ct.text, tok: nt}
	p.names[name] = decl
	p.order = append(p.order, name)
	if ct.text != ckProcess {
		// Not supervised; its dependencies still count, as monit checks them.
		for !atStatement(p.peek()) {
			t := p.next()
			if t.kind == tDepends {
				decl.deps = append(decl.deps, t.args...)
				for range t.args {
					decl.dtok = append(decl.dtok, t)
				}
			}
			if t.kind == tChar && t.text == "{" {
				p.i--
				p.skipBraces()
			}
		}
		p.addNotApplied(ct, p.toks[p.i-1])
		return
	}
	s := &service{name: name, tok: ct}
	p.cur = s
	decl.svc = s
	h := p.next()
	switch {
	case isWord(h, kwPidfile) || isWord(h, kwPath):
		pt := p.next()
		if pt.kind != tPath {
			p.fail(pt, "expected the pidfile's absolute path after %s, found %s", h.raw, describe(pt))
		}
		s.pidfile, s.headTok = pt.text, h
	case isWord(h, kwMatching):
		rt := p.next()
		if rt.kind != tString && rt.kind != tPath && rt.kind != tWord && rt.kind != tNumber && rt.kind != tReal {
			p.fail(rt, "expected a regular expression after matching, found %s", describe(rt))
		}
		re := rt.text
		if rt.kind == tWord {
			re = rt.raw
		}
		if err := checkRegex(re); err != "" {
			p.fail(rt, "matching %q: %s", re, err)
		}
		s.match, s.headTok = re, h
	default:
		p.fail(h, "expected with pidfile PATH, path PATH or matching REGEX after check process %s, found %s", name, describe(h))
	}
	p.services = append(p.services, s)
	for !atStatement(p.peek()) {
		p.processOption(s, decl)
	}
}

func (p *parser) skipBraces() {
	depth := 0
	for p.peek().kind != tEOF {
		t := p.next()
		if t.kind == tChar && t.text == "{" {
			depth++
		}
		if t.kind == tChar && t.text == "}" {
			depth--
			if depth <= 0 {
				return
			}
		}
	}
}

// checkRegex refuses what monit's regcomp (POSIX extended) refuses and
// what Go's regexp, which the agent matches with, would read otherwise.
func checkRegex(re string) string {
	if strings.Contains(re, "(?") {
		return "(? is not POSIX extended regular expression syntax (monit refuses it too)"
	}
	for i := 0; i < len(re)-1; i++ {
		if re[i] != '\\' {
			continue
		}
		c := re[i+1]
		i++
		switch {
		case strings.IndexByte("wWsSbB", c) >= 0:
		case isAlnum(c) || c == '<' || c == '>' || c == '`' || c == '\'':
			return fmt.Sprintf("\\%c has no meaning dhvisor can keep (Go's regexp differs from glibc's here)", c)
		}
	}
	if _, err := regexp.Compile(re); err != nil {
		return err.Error()
	}
	return ""
}

func (p *parser) processOption(s *service, decl *declared) {
	t := p.peek()
	switch {
	case t.kind == tProgram:
		p.next()
		if t.text == kwExec {
			p.fail(t, "exec is an action (then exec \"...\"), not a program of the service")
		}
		prog := p.program(t)
		slot := map[string]**program{kwStart: &s.start, kwStop: &s.stop, kwRestart: &s.restrt}[t.text]
		if *slot != nil {
			p.fail(t, "a second %s program (the first is at line %d): dhvisor refuses to drop one silently", t.text, (*slot).tok.line)
		}
		*slot = prog
	case isWord(t, kwIf):
		p.ifTest(s)
	case isWord(t, kwStart) || isWord(t, kwStop) || isWord(t, kwRestart):
		p.fail(t, "expected a double-quoted program after %s (%s program = \"/path/to/program args\")", t.raw, t.text)
	case t.kind == tDepends:
		p.next()
		if len(t.args) == 0 {
			p.fail(t, "expected service names after depends on")
		}
		s.deps = append(s.deps, t.args...)
		s.depTok = t
		decl.deps = append(decl.deps, t.args...)
		for range t.args {
			decl.dtok = append(decl.dtok, t)
		}
	case t.kind == tGroup:
		p.next()
		s.groups = append(s.groups, t.text)
		s.groupToks = append(s.groupToks, t)
	case isWord(t, kwMode):
		p.next()
		m := p.nextOneOf(kwMode, kwActive, kwPassive, kwManual)
		s.mode, s.modeTok = m.text, t
	case t.kind == tEvery:
		p.next()
		switch {
		case strings.HasPrefix(t.text, "cron:"):
			p.addNotApplied(t, t)
		case t.text == kwCycle:
			p.fail(t, "expected every N cycles")
		default:
			n, err := strconv.Atoi(t.text)
			p.expectWord(kwCycle, "cycles (every N cycles)")
			if err != nil || n < 1 || n > maxPoll {
				p.fail(t, "every %s cycles: expected 1 or more cycles", t.text)
			}
			s.every, s.everyTok = n, t
		}
	case isWord(t, kwOnreboot):
		p.next()
		m := p.nextOneOf(kwOnreboot, kwStart, kwNostart, kwLaststate)
		s.onBoot, s.onBootTok = m.text, t
	case isWord(t, kwAlert) || isWord(t, kwNoAlert):
		p.next()
		m := p.next()
		if m.kind != tMail {
			p.fail(m, "expected a mail address after %s, found %s", t.raw, describe(m))
		}
		p.skipAlertOptions()
		p.addNotApplied(t, p.toks[p.i-1])
	default:
		p.fail(t, "expected start, stop, restart, if, depends on, group, mode, every, onreboot or alert in check process %s, found %s", s.name, describe(t))
	}
}

func (p *parser) skipAlertOptions() {
	for {
		t := p.peek()
		switch {
		case t.kind == tChar && t.text == "{":
			p.skipBraces()
		case isWord(t, kwNot) || isWord(t, "mail-format") || isWord(t, "reminder") || isWord(t, kwCycle) ||
			t.kind == tNumber || t.kind == tEvery:
			p.next()
		default:
			return
		}
	}
}

func (p *parser) program(t token) *program {
	if len(t.args) == 0 {
		p.fail(t, "the %s program is empty (expected \"/path/to/program args...\")", t.text)
	}
	prog := &program{argv: t.args, tok: t}
	p.userOptions(&prog.user, &prog.group)
	if isWord(p.peek(), kwTimeout) {
		p.next()
		n, nt := p.number("the timeout")
		p.expectWord(kwSecond, "seconds after the timeout")
		if n <= 0 {
			p.fail(nt, "timeout %d seconds: a program needs at least 1 second (monit 5.33 takes 0, dhvisor refuses it)", n)
		}
		prog.timeout = n
	}
	return prog
}

func (p *parser) userOptions(u, g *string) {
	for {
		t := p.peek()
		switch {
		case isWord(t, kwUID):
			p.next()
			*u = p.lookup(p.next(), true)
		case isWord(t, kwGID):
			p.next()
			*g = p.lookup(p.next(), false)
		default:
			return
		}
	}
}

// lookup resolves a user or group as monit does (by name or number) and
// refuses one that does not exist on this machine, as monit -t does.
func (p *parser) lookup(t token, isUser bool) string {
	what := map[bool]string{true: "user", false: "group"}[isUser]
	var v string
	switch t.kind {
	case tWord:
		v = t.raw
	case tString, tNumber:
		v = t.text
	default:
		p.fail(t, "expected a %s name or number, found %s", what, describe(t))
	}
	if t.kind == tNumber {
		if isUser {
			u, err := user.LookupId(v)
			if err != nil {
				p.fail(t, "requested uid %s not found on the system", v)
			}
			return u.Username
		}
		g, err := user.LookupGroupId(v)
		if err != nil {
			p.fail(t, "requested gid %s not found on the system", v)
		}
		return g.Name
	}
	if isUser {
		if _, err := user.Lookup(v); err != nil {
			p.fail(t, "requested user %s not found on the system", v)
		}
		return v
	}
	if _, err := user.LookupGroup(v); err != nil {
		p.fail(t, "requested group %s not found on the system", v)
	}
	return v
}

const maxCycles = 64 // monit's BITMAP_MAX

// rate parses [N cycles | N times within M cycles]; 0,0 when absent.
func (p *parser) rate() (count, cycles int) {
	if p.peek().kind != tNumber {
		return 0, 0
	}
	n1, t1 := p.number("the number of cycles")
	if p.peek().kind == tNumber {
		n2, t2 := p.number("the number of cycles")
		p.expectWord(kwCycle, "cycles (N times within M cycles)")
		if n2 < 1 || n2 > maxCycles {
			p.fail(t2, "the number of cycles must be between 1 and %d", maxCycles)
		}
		if n1 < 1 || n1 > n2 {
			p.fail(t1, "%d times within %d cycles: the number of events must be between 1 and the number of cycles", n1, n2)
		}
		return n1, n2
	}
	p.expectWord(kwCycle, "cycles (for N cycles)")
	if n1 < 1 || n1 > maxCycles {
		p.fail(t1, "the number of cycles must be between 1 and %d", maxCycles)
	}
	return n1, n1
}

var actions = map[string]bool{kwAlert: true, kwRestart: true, kwStart: true, kwStop: true, kwUnmonitor: true, kwIgnore: true}

// action parses what follows then.
func (p *parser) action() (string, token) {
	t := p.next()
	switch {
	case t.kind == tWord && actions[t.text]:
		return t.text, t
	case t.kind == tProgram && t.text == kwExec:
		if len(t.args) == 0 {
			p.fail(t, "the exec program is empty")
		}
		var u, g string
		p.userOptions(&u, &g)
		if isWord(p.peek(), kwTimeout) {
			p.next()
			p.number("the timeout")
			p.expectWord(kwSecond, "seconds after the timeout")
		}
		if isWord(p.peek(), kwRepeat) {
			p.next()
			if p.next().kind != tEvery {
				p.fail(t, "expected repeat every [N] cycles")
			}
			if isWord(p.peek(), kwCycle) {
				p.next()
			}
		}
		return kwExec, t
	}
	p.fail(t, "expected an action (alert, restart, start, stop, unmonitor, exec or ignore), found %s", describe(t))
	return "", t
}

func (p *parser) then() {
	p.expectWord(kwThen, "then")
}

// recovery parses [else action | else if recovered|passed|succeeded [rate] then action].
func (p *parser) recovery(words ...string) {
	if !isWord(p.peek(), kwElse) {
		return
	}
	p.next()
	if isWord(p.peek(), kwIf) {
		p.next()
		w := p.next()
		ok := false
		for _, x := range words {
			ok = ok || isWord(w, x)
		}
		if !ok {
			p.fail(w, "expected %s after else if, found %s", strings.Join(words, " or "), describe(w))
		}
		p.rate()
		p.then()
	}
	p.action()
}

var successWords = []string{"recovered", "passed", kwSucceeded}

// skipTests are process tests monit knows that have no dhvisor mapping.
var skipTests = map[string]bool{
	"changed": true, "uptime": true, "thread": true, "child": true, "read": true, "write": true, "disk": true,
	"filedescriptors": true, "security": true, kwExist: true, kwSucceeded: true,
}

func (p *parser) ifTest(s *service) {
	ift := p.next()
	t := p.peek()
	switch {
	case isWord(t, kwFailed):
		p.next()
		if n := p.peek(); isWord(n, kwHost) || isWord(n, kwPort) || isWord(n, kwUnix) {
			p.connection(s, ift)
			return
		}
		p.skipTest(ift)
	case isWord(t, kwNot):
		p.next()
		p.expectWord(kwExist, "exist (if does not exist)")
		c, _ := p.rate()
		p.then()
		a, at := p.action()
		p.recovery(successWords...)
		switch a {
		case kwRestart, kwStart:
			s.onMissing = kwRestart
		case kwAlert:
			s.onMissing = kwAlert
		default:
			p.fail(at, "if does not exist then %s: dhvisor restarts or alerts on a missing process", a)
		}
		s.onMissingTok = ift
		if c > 1 {
			p.addNotApplied(ift, p.toks[p.i-1])
		}
	case t.kind == tNumber:
		n, nt := p.number("restarts")
		p.expectWord(kwRestart, "restarts (if N restarts within M cycles)")
		m, mt := p.number("the number of cycles")
		p.expectWord(kwCycle, "cycles")
		p.then()
		a := p.next()
		var act string
		switch {
		case isWord(a, kwTimeout) || isWord(a, kwUnmonitor):
			act = "fail"
		case isWord(a, kwAlert):
			act = kwAlert
		case a.kind == tWord && actions[a.text], a.kind == tProgram && a.text == kwExec:
			p.i--
			p.action()
			p.fail(a, "if %d restarts within %d cycles then %s: dhvisor gives up (unmonitor, timeout) or alerts", n, m, a.text)
		default:
			p.fail(a, "expected timeout, unmonitor or alert, found %s", describe(a))
		}
		if n < 1 {
			p.fail(nt, "%d restarts: expected at least 1", n)
		}
		if m < 1 {
			p.fail(mt, "%d cycles: expected at least 1", m)
		}
		if s.restarts != nil {
			p.fail(ift, "a second restart limit (the first is at line %d)", s.restarts.tok.line)
		}
		s.restarts = &rateLimit{count: n, cycles: m, action: act, tok: ift}
	case isWord(t, kwMem) || isWord(t, kwTotalMem) || isWord(t, kwCPU) || isWord(t, kwTotalCPU):
		p.resource(s, ift)
	case t.kind == tWord && (skipTests[t.text] || strings.HasPrefix(t.text, "loadavg")):
		p.skipTest(ift)
	default:
		p.fail(t, "expected failed, does not exist, N restarts, mem, totalmem, cpu, totalcpu or another process test after if, found %s", describe(t))
	}
}

// skipTest passes over a test dhvisor does not apply: up to then, the
// action, and the recovery.
func (p *parser) skipTest(ift token) {
	for !isWord(p.peek(), kwThen) {
		if atStatement(p.peek()) || isWord(p.peek(), kwIf) {
			p.fail(p.peek(), "expected then, found %s", describe(p.peek()))
		}
		p.next()
	}
	p.then()
	p.action()
	p.recovery(append(successWords, kwFailed)...)
	p.addNotApplied(ift, p.toks[p.i-1])
}

var otherProtocols = map[string]bool{
	"default": true, "apache-status": true, "clamav": true, "dns": true, "dwp": true, "fail2ban": true, "ftp": true,
	"gps": true, "imap": true, "imaps": true, "ldap2": true, "ldap3": true, "lmtp": true, "memcache": true,
	"mongodb": true, "mqtt": true, "mysql": true, "mysqls": true, "nntp": true, "ntp3": true, "pgsql": true,
	"pop": true, "pops": true, "postfix-policy": true, "radius": true, "rdate": true, "redis": true, "rsync": true,
	"sieve": true, "sip": true, "smtp": true, "smtps": true, "spamassassin": true, "ssh": true, "tns": true,
	"websocket": true,
}

var operators = map[string]bool{opGT: true, opGE: true, opLT: true, opLE: true, opEQ: true, opNE: true}

func (p *parser) connection(s *service, ift token) {
	c := check{tok: ift, typ: "tcp"}
	if isWord(p.peek(), kwHost) {
		p.next()
		h := p.next()
		switch h.kind {
		case tWord, tNumber, tReal:
			c.host = h.raw
		case tString:
			c.host = h.text
		default:
			p.fail(h, "expected a host name after host, found %s", describe(h))
		}
	}
	var portTok token
	switch t := p.next(); {
	case isWord(t, kwPort):
		c.port, portTok = p.number("the port")
	case isWord(t, kwUnix):
		pt := p.next()
		if pt.kind != tPath {
			p.fail(pt, "expected the socket's absolute path after unixsocket, found %s", describe(pt))
		}
		if c.host != "" {
			p.fail(t, "expected port after host (a unix socket has no host)")
		}
		c.typ, c.path = "unix", pt.text
	default:
		p.fail(t, "expected port N or unixsocket PATH, found %s", describe(t))
	}
	proto, sockType := "", ""
	retry, retryTok := -1, token{}
	for {
		t := p.peek()
		if isWord(t, kwThen) || t.kind == tNumber {
			break
		}
		p.next()
		switch {
		case isWord(t, kwIPv4) || isWord(t, kwIPv6):
			// The address family follows from host; nothing to keep.
		case isWord(t, kwType):
			v := p.next()
			if !isWord(v, kwTCP) && !isWord(v, kwTCPSSL) && !isWord(v, kwUDP) {
				p.fail(v, "expected tcp, tcpssl or udp after type, found %s", describe(v))
			}
			sockType = v.text
		case isWord(t, kwProtocol):
			v := p.next()
			if v.kind != tWord || !(v.text == kwHTTP || v.text == kwHTTPS || otherProtocols[v.text]) {
				p.fail(v, "expected a protocol (http, https, ...) after protocol, found %s", describe(v))
			}
			proto = v.text
			if proto != kwHTTP && proto != kwHTTPS {
				p.addNotApplied(t, v)
			}
		case isWord(t, kwRequest):
			v := p.next()
			if proto != kwHTTP && proto != kwHTTPS {
				p.fail(t, "request needs protocol http or https before it")
			}
			if v.kind != tPath && v.kind != tString && v.kind != tWord {
				p.fail(v, "expected the request path, found %s", describe(v))
			}
			c.path = v.text
			if v.kind == tWord {
				c.path = v.raw
			}
		case isWord(t, kwStatus):
			if proto != kwHTTP && proto != kwHTTPS {
				p.fail(t, "status needs protocol http or https before it")
			}
			op := opEQ
			if v := p.peek(); v.kind == tWord && operators[v.text] {
				op = v.text
				p.next()
			}
			n, nt := p.number("the HTTP status")
			if n < 100 || n > 599 {
				p.fail(nt, "status %d is not an HTTP status (expected 100-599; monit takes it, dhvisor refuses it)", n)
			}
			c.status, c.statusOp = n, op
		case isWord(t, kwTimeout):
			n, nt := p.number("the timeout")
			p.expectWord(kwSecond, "seconds after the timeout")
			if n <= 0 {
				p.fail(nt, "timeout %d seconds: a check needs at least 1 second", n)
			}
			c.timeout = n
		case isWord(t, kwRetry):
			retry, retryTok = p.numberAfter(t)
		case isWord(t, kwSSL):
			c.tls = true
			if v := p.peek(); v.kind == tChar && v.text == "{" {
				p.skipBraces()
			}
		case isWord(t, "send") || isWord(t, "expect") || isWord(t, "username") || isWord(t, "password") ||
			isWord(t, "hostheader") || isWord(t, "checksum") || isWord(t, "address") || isWord(t, "content"):
			v := p.next()
			if v.kind != tString && v.kind != tWord && v.kind != tPath && v.kind != tMail {
				p.fail(v, "expected a string after %s, found %s", t.raw, describe(v))
			}
			p.addNotApplied(t, v)
		case isWord(t, "method"):
			v := p.next()
			if !isWord(v, "get") && !isWord(v, "head") {
				p.fail(v, "expected get or head after method, found %s", describe(v))
			}
		default:
			p.fail(t, "expected a connection option (host, type, protocol, request, status, timeout, retry, ssl) or then, found %s", describe(t))
		}
	}
	c.failures, c.within = p.rate()
	p.then()
	a, at := p.action()
	p.recovery(successWords...)
	if c.typ != "unix" && (c.port < 1 || c.port > 65535) {
		p.fail(portTok, "port %d is out of range (expected 1-65535; monit takes it, dhvisor refuses it)", c.port)
	}
	if retry == 0 {
		p.fail(retryTok, "retry 0 makes no attempt at all (expected 1 or more; monit takes it, dhvisor refuses it)")
	}
	if retry > 0 {
		c.retries = retry - 1 // monit's retry counts every attempt, dhvisor's retries the extra ones
	}
	switch {
	case c.typ == "unix":
		if sockType == kwUDP {
			p.fail(ift, "a unix datagram socket check is not supported (dhvisor connects to stream sockets)")
		}
	case proto == kwHTTPS || (proto == kwHTTP && (c.tls || sockType == kwTCPSSL)):
		c.typ = "https"
	case proto == kwHTTP:
		c.typ = "http"
	case sockType == kwUDP:
		c.typ = "udp"
	default:
		c.tls = c.tls || sockType == kwTCPSSL
	}
	if c.typ == "https" || c.typ == "http" {
		c.tls = false
	}
	if a != kwRestart && a != kwAlert {
		p.fail(at, "then %s: dhvisor acts on a failed check by restart or alert (monit takes it, dhvisor refuses it)", a)
	}
	c.action = a
	s.checks = append(s.checks, c)
}

func (p *parser) numberAfter(t token) (int, token) {
	n, nt := p.number(t.raw)
	return n, nt
}

// Monit's units are powers of 1024.
var units = map[string]uint64{kwB: 1, kwKB: 1 << 10, kwMB: 1 << 20, kwGB: 1 << 30}

func (p *parser) resource(s *service, ift token) {
	kt := p.next()
	op := opEQ
	if v := p.peek(); v.kind == tWord && operators[v.text] {
		op = v.text
		p.next()
	}
	vt := p.next()
	if vt.kind != tNumber && vt.kind != tReal {
		p.fail(vt, "expected a number after %s %s, found %s", kt.raw, op, describe(vt))
	}
	val, _ := strconv.ParseFloat(vt.text, 64)
	l := &limit{tok: ift}
	isMem := kt.text == kwMem || kt.text == kwTotalMem
	u := p.peek()
	switch {
	case isWord(u, kwPercent):
		p.next()
		l.percent = val
	case isMem && u.kind == tWord && units[u.text] != 0:
		p.next()
		l.bytes = uint64(val * float64(units[u.text]))
	case isMem:
		l.bytes = uint64(val)
	default:
		p.fail(u, "expected %% after %s %s %s, found %s", kt.raw, op, vt.raw, describe(u))
	}
	if n := p.peek(); n.kind == tWord && (n.text == kwMem || n.text == kwTotalMem || n.text == kwCPU || n.text == kwTotalCPU ||
		n.text == "thread" || n.text == "child" || n.text == "read" || n.text == "write" || n.text == "disk" || strings.HasPrefix(n.text, "loadavg")) {
		p.fail(n, "one condition per if: dhvisor does not combine %s with %s (monit takes it, dhvisor refuses it)", kt.raw, n.raw)
	}
	count, cycles := p.rate()
	p.then()
	a, at := p.action()
	p.recovery(successWords...)
	if op != opGT && op != opGE {
		p.fail(kt, "%s %s: dhvisor's limits are upper bounds (expected > or >=; monit takes it, dhvisor refuses it)", kt.raw, op)
	}
	if count != cycles {
		p.fail(ift, "%d times within %d cycles: dhvisor's resource limits count cycles in a row (expected for N cycles; monit takes it, dhvisor refuses it)", count, cycles)
	}
	if a != kwRestart && a != kwAlert {
		p.fail(at, "then %s: dhvisor acts on a resource limit by restart or alert (monit takes it, dhvisor refuses it)", a)
	}
	l.cycles, l.action = max(cycles, 1), a
	if l.percent > 100 && isMem {
		p.fail(vt, "%g%% of the host's memory is over 100%%", l.percent)
	}
	slot := &s.cpu
	if isMem {
		slot = &s.mem
	}
	if *slot != nil {
		p.fail(ift, "a second %s limit (the first is at line %d): dhvisor keeps one per service", map[bool]string{true: "memory", false: "cpu"}[isMem], (*slot).tok.line)
	}
	*slot = l
}

// checkDepends refuses dependencies on services that are not defined and
// dependency loops, as monit does.
func (p *parser) checkDepends() {
	for _, n := range p.order {
		d := p.names[n]
		for i, dep := range d.deps {
			if _, ok := p.names[dep]; !ok {
				t := d.dtok[i]
				p.errs.add(fileName(t), t.line, t.col, "depending service %q is not defined in the control file", dep)
			}
		}
	}
	if len(*p.errs) > 0 {
		return
	}
	state := map[string]int{}
	var visit func(n string) bool
	visit = func(n string) bool {
		switch state[n] {
		case 1:
			return false
		case 2:
			return true
		}
		state[n] = 1
		for _, dep := range p.names[n].deps {
			if !visit(dep) {
				return false
			}
		}
		state[n] = 2
		return true
	}
	for _, n := range p.order {
		if !visit(n) {
			t := p.names[n].tok
			p.errs.add(fileName(t), t.line, t.col, "found a depend loop in the control file involving the service %q", n)
			return
		}
	}
}
