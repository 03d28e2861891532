package monit

import (
	"strings"
)

// tokKind tells the parser what a lexeme is. The lexer follows monit
// 5.33's flex lexer (src/l.l): the same character classes, the same
// noise words dropped, and the same start conditions that make a
// service name, a dependency list, a group name or a program's argument
// list one token, because monit's grammar depends on them (a keyword is
// a service name right after "check process", and a start program is
// split into arguments by the lexer, not by a shell).
type tokKind int

const (
	tEOF     tokKind = iota
	tWord            // a bare word: a keyword or a plain string
	tNumber          // digits
	tReal            // digits.digits
	tPath            // /... or "/..." ('/...')
	tString          // a quoted string not starting with /
	tMail            // user@host
	tURL             // scheme://...
	tChar            // one character monit returns as itself ({ } : @ ...)
	tCheck           // "check TYPE": Text is the type, the next token the name
	tName            // a service name after tCheck
	tDepends         // "depends on a, b": Args are the names
	tGroup           // "group NAME": Text is the name
	tEvery           // "every": Text is the number, cron spec or "cycle"
	tProgram         // start|stop|restart|exec "...": Text is which, Args the argv
)

type token struct {
	kind  tokKind
	text  string // lower-cased canonical keyword for tWord, value otherwise
	raw   string // the lexeme as written
	quote bool   // tString/tPath came quoted
	args  []string
	file  *srcFile
	line  int
	col   int
	off   int // byte offset of the lexeme in file.data
	end   int
}

type srcFile struct {
	name string
	data []byte
}

// Character classes of monit's lexer.
func isWS(c byte) bool  { return c == ' ' || c == '\r' || c == '\t' }
func isWWS(c byte) bool { return isWS(c) || c == ';' || c == ',' || c == '(' || c == ')' }

// isStr is monit's {str}: [^\000-\041@:{}"';(),%].
func isStr(c byte) bool {
	if c <= 0x21 {
		return false
	}
	switch c {
	case '@', ':', '{', '}', '"', '\'', ';', '(', ')', ',', '%':
		return false
	}
	return true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isAlnum(c byte) bool {
	return isDigit(c) || (c|0x20 >= 'a' && c|0x20 <= 'z')
}

// noise are the words monit's lexer drops wherever they stand alone.
var noise = map[string]bool{}

func init() {
	for _, w := range strings.Fields(`is as are for via on only with within without program programs and has
		using use the to sum than usage was times but of or does per in last rate capacity activity option options`) {
		noise[w] = true
	}
}

// aliases maps the spellings monit accepts for one keyword to one name.
var aliases = map[string]string{
	"portnumber": kwPort, "unixsocket": kwUnix, "unix": kwUnix, "proto": kwProtocol, "protocol": kwProtocol,
	"restarts": kwRestart, "cycles": kwCycle, "memory": kwMem, "totalmem": kwTotalMem, "totalmemory": kwTotalMem,
	"totalcpu": kwTotalCPU, "exists": kwExist, "nonexists": "nonexist", "threads": "thread", "children": "child",
	"timestamp": "time", "execute": kwExec,
	"more": opGT, "greater": opGT, "gt": opGT, ">": opGT, "older": opGT,
	"ge": opGE, ">=": opGE, "less": opLT, "lt": opLT, "<": opLT, "newer": opLT, "le": opLE, "<=": opLE,
	"equal": opEQ, "eq": opEQ, "==": opEQ, "=": opEQ, "notequal": opNE, "ne": opNE, "!=": opNE,
	"match": kwMatching, "=~": kwMatching,
	"percent": kwPercent, "%": kwPercent,
	"byte": kwB, "bytes": kwB, "b": kwB, "kilobyte": kwKB, "kilobytes": kwKB, "megabyte": kwMB, "megabytes": kwMB,
	"gigabyte": kwGB, "gigabytes": kwGB,
	"millisecond": "ms", "milliseconds": "ms", "second": kwSecond, "seconds": kwSecond, "s": kwSecond,
	"minute": "minute", "minutes": "minute", "m": "minute", "hour": "hour", "hours": "hour", "h": "hour",
	"day": "day", "days": "day", "month": "month", "months": "month",
}

// Keywords the parser looks for.
const (
	kwSet       = "set"
	kwDaemon    = "daemon"
	kwStart     = "start"
	kwStop      = "stop"
	kwRestart   = "restart"
	kwExec      = "exec"
	kwDelay     = "delay"
	kwIf        = "if"
	kwThen      = "then"
	kwElse      = "else"
	kwFailed    = "failed"
	kwSucceeded = "succeeded"
	kwHost      = "host"
	kwPort      = "port"
	kwUnix      = "unixsocket"
	kwType      = "type"
	kwTCP       = "tcp"
	kwTCPSSL    = "tcpssl"
	kwUDP       = "udp"
	kwProtocol  = "protocol"
	kwHTTP      = "http"
	kwHTTPS     = "https"
	kwRequest   = "request"
	kwStatus    = "status"
	kwTimeout   = "timeout"
	kwRetry     = "retry"
	kwSecond    = "second"
	kwCycle     = "cycle"
	kwNot       = "not"
	kwExist     = "exist"
	kwMem       = "mem"
	kwTotalMem  = "totalmem"
	kwCPU       = "cpu"
	kwTotalCPU  = "totalcpu"
	kwPercent   = "%"
	kwB         = "b"
	kwKB        = "kb"
	kwMB        = "mb"
	kwGB        = "gb"
	kwUID       = "uid"
	kwGID       = "gid"
	kwPidfile   = "pidfile"
	kwPath      = "path"
	kwMatching  = "matching"
	kwMode      = "mode"
	kwActive    = "active"
	kwPassive   = "passive"
	kwManual    = "manual"
	kwOnreboot  = "onreboot"
	kwNostart   = "nostart"
	kwLaststate = "laststate"
	kwAlert     = "alert"
	kwNoAlert   = "noalert"
	kwUnmonitor = "unmonitor"
	kwIgnore    = "ignore"
	kwSSL       = "ssl"
	kwIPv4      = "ipv4"
	kwIPv6      = "ipv6"
	kwRepeat    = "repeat"
	kwEvery     = "every"

	opGT = ">"
	opGE = ">="
	opLT = "<"
	opLE = "<="
	opEQ = "="
	opNE = "!="
)

// canon is the keyword a bare word stands for (lower case, aliases joined).
func canon(w string) string {
	l := strings.ToLower(w)
	if a, ok := aliases[l]; ok {
		return a
	}
	return l
}

// lexer turns one file into tokens; include statements are followed by
// the loader, which splices the included files' tokens in.
type lexer struct {
	f    *srcFile
	d    []byte
	pos  int
	line int
	col  int      // byte offset where the current line starts
	out  *[]token // shared with the files this one includes
	errs *Errors
	// include is called for "include GLOB" with the glob and its token.
	include func(glob string, at token)
}

func (lx *lexer) errAt(line, off int, format string, args ...any) {
	lx.errs.add(lx.f.name, line, off-lx.col+1, format, args...)
}

func (lx *lexer) emit(t token) {
	t.file = lx.f
	*lx.out = append(*lx.out, t)
}

func (lx *lexer) tok(kind tokKind, text string, start, line, col int) token {
	return token{kind: kind, text: text, raw: string(lx.d[start:lx.pos]), line: line, col: col, off: start, end: lx.pos}
}

func (lx *lexer) newline() {
	lx.line++
	lx.col = lx.pos
}

// run is the length of the {str} run at i.
func (lx *lexer) run(i int) int {
	j := i
	for j < len(lx.d) && isStr(lx.d[j]) {
		j++
	}
	return j - i
}

func (lx *lexer) lex() {
	d := lx.d
	for lx.pos < len(d) {
		c := d[lx.pos]
		start, line, col := lx.pos, lx.line, lx.pos-lx.col+1
		switch {
		case isWWS(c):
			lx.pos++
		case c == '\n':
			lx.pos++
			lx.newline()
		case c == '#':
			for lx.pos < len(d) && d[lx.pos] != '\n' {
				lx.pos++
			}
		case c == '\\' && lx.pos+1 < len(d) && d[lx.pos+1] == '\n':
			lx.pos += 2
			lx.newline()
		case c == '"' || c == '\'':
			lx.quoted(c, start, line, col)
		default:
			if isStr(c) {
				lx.word(start, line, col)
				continue
			}
			lx.pos++
			if c == '%' {
				lx.emit(lx.tok(tWord, kwPercent, start, line, col))
				continue
			}
			lx.emit(lx.tok(tChar, string(c), start, line, col))
		}
	}
}

// quoted lexes "..." or '...': a PATH when it starts with / (and holds
// no newline), a STRING otherwise (which may span lines).
func (lx *lexer) quoted(q byte, start, line, col int) {
	d := lx.d
	end := -1
	for i := start + 1; i < len(d); i++ {
		if d[i] == q {
			end = i
			break
		}
	}
	if end < 0 {
		lx.errAt(line, start, "unbalanced quotes: no closing %c", q)
		lx.pos = len(d)
		return
	}
	body := string(d[start+1 : end])
	lx.pos = end + 1
	kind := tString
	if strings.HasPrefix(body, "/") && !strings.Contains(body, "\n") {
		kind = tPath
	}
	t := lx.tok(kind, body, start, line, col)
	t.quote = true
	lx.emit(t)
	for i := start; i < end; i++ {
		if d[i] == '\n' {
			lx.line++
			lx.col = i + 1
		}
	}
}

// argStart matches monit's start{ws}?(program)?{ws}?([=]{ws}?)?["] (and
// its stop, restart and exec(ute) forms) at i and returns the keyword and
// the index just past the quote.
func (lx *lexer) argStart(i int) (string, int) {
	d := lx.d
	for _, kw := range []string{"restart", "start", "stop", "execute", "exec"} {
		if !hasFoldPrefix(d[i:], kw) {
			continue
		}
		j := i + len(kw)
		skip := func() {
			for j < len(d) && isWS(d[j]) {
				j++
			}
		}
		if kw == kwExec || kw == "execute" {
			skip()
		} else {
			skip()
			if hasFoldPrefix(d[j:], "program") {
				j += len("program")
			}
			skip()
			if j < len(d) && d[j] == '=' {
				j++
				skip()
			}
		}
		if j < len(d) && d[j] == '"' {
			return canon(kw), j + 1
		}
	}
	return "", 0
}

func hasFoldPrefix(b []byte, p string) bool {
	return len(b) >= len(p) && strings.EqualFold(string(b[:len(p)]), p)
}

func (lx *lexer) word(start, line, col int) {
	d := lx.d
	if kw, j := lx.argStart(start); kw != "" {
		lx.pos = j
		lx.arguments(kw, start, line, col)
		return
	}
	n := lx.run(start)
	w := string(d[start : start+n])
	lw := strings.ToLower(w)
	// scheme:// starts a URL (monit's URL_COND): up to white space.
	if isAllAlnum(w) && start+n+3 <= len(d) && string(d[start+n:start+n+3]) == "://" {
		j := start + n
		for j < len(d) && !isWS(d[j]) && d[j] != '\n' {
			j++
		}
		lx.pos = j
		lx.emit(lx.tok(tURL, string(d[start:j]), start, line, col))
		return
	}
	// user@host: monit's MAILADDR.
	if start+n < len(d) && d[start+n] == '@' && n > 0 {
		m := lx.run(start + n + 1)
		if m > 0 {
			lx.pos = start + n + 1 + m
			lx.emit(lx.tok(tMail, string(d[start:lx.pos]), start, line, col))
			return
		}
	}
	lx.pos = start + n
	switch {
	case lw == "check":
		if lx.check(start, line, col) {
			return
		}
	case lw == "depend" || lw == "depends":
		if lx.depends(start, line, col) {
			return
		}
	case lw == "group":
		if lx.group(start, line, col) {
			return
		}
	case lw == kwEvery:
		lx.every(start, line, col)
		return
	case lw == "not":
		// "not every" is one lexeme in monit.
		j := lx.pos
		for j < len(d) && d[j] == ' ' {
			j++
		}
		if j > lx.pos && hasFoldPrefix(d[j:], kwEvery) && (j+5 == len(d) || !isStr(d[j+5])) {
			lx.pos = j + 5
			lx.every(start, line, col)
			return
		}
	case lw == "total":
		// "total mem(ory)" and "total cpu" are one lexeme in monit.
		j := lx.pos
		if j < len(d) && d[j] == ' ' {
			j++
		}
		m := lx.run(j)
		if nx := strings.ToLower(string(d[j : j+m])); j > lx.pos && (nx == "mem" || nx == "memory" || nx == "cpu") {
			lx.pos = j + m
			lx.emit(lx.tok(tWord, canon("total"+nx), start, line, col))
			return
		}
	case lw == "include":
		lx.includeStmt(start, line, col)
		return
	}
	switch {
	case isAllDigits(w):
		lx.emit(lx.tok(tNumber, w, start, line, col))
	case isReal(w):
		lx.emit(lx.tok(tReal, w, start, line, col))
	case w[0] == '/':
		lx.emit(lx.tok(tPath, w, start, line, col))
	case noise[lw]:
	default:
		lx.emit(lx.tok(tWord, canon(w), start, line, col))
	}
}

func isAllDigits(w string) bool {
	for i := 0; i < len(w); i++ {
		if !isDigit(w[i]) {
			return false
		}
	}
	return w != ""
}

func isAllAlnum(w string) bool {
	for i := 0; i < len(w); i++ {
		if !isAlnum(w[i]) {
			return false
		}
	}
	return w != ""
}

func isReal(w string) bool {
	a, b, ok := strings.Cut(w, ".")
	return ok && isAllDigits(a) && isAllDigits(b)
}

// arguments lexes a program's argument list (monit's ARGUMENT_COND):
// words split on blanks and newlines, '...' one argument, up to the
// closing double quote. No shell is involved.
func (lx *lexer) arguments(kw string, start, line, col int) {
	d := lx.d
	var args []string
	for {
		if lx.pos >= len(d) {
			lx.errAt(line, start, "unbalanced quotes: the %s program's \" is never closed", kw)
			return
		}
		c := d[lx.pos]
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			lx.pos++
		case c == '\n':
			lx.pos++
			lx.newline()
		case c == '"':
			lx.pos++
			t := lx.tok(tProgram, kw, start, line, col)
			t.args = args
			lx.emit(t)
			return
		case c == '\'':
			end := -1
			for i := lx.pos + 1; i < len(d); i++ {
				if d[i] == '\'' {
					end = i
					break
				}
			}
			if end < 0 {
				lx.errAt(lx.line, lx.pos, "unbalanced quotes: no closing '")
				lx.pos = len(d)
				return
			}
			for i := lx.pos; i < end; i++ {
				if d[i] == '\n' {
					lx.line++
					lx.col = i + 1
				}
			}
			args = append(args, string(d[lx.pos+1:end]))
			lx.pos = end + 1
		default:
			j := lx.pos
			for j < len(d) && d[j] != ' ' && d[j] != '\t' && d[j] != '\n' && d[j] != '"' {
				j++
			}
			args = append(args, string(d[lx.pos:j]))
			lx.pos = j
		}
	}
}

// Service types after "check".
const (
	ckProcess = "process"
	ckProgram = "program"
)

var checkTypes = map[string]string{
	"file": "file", "filesystem": "filesystem", "device": "filesystem", "directory": "directory",
	"host": "host", "system": "system", "fifo": "fifo", "network": "network", ckProgram: ckProgram,
}

// blanksFrom returns the index of the first byte at or after j that is
// not a space or a tab: monit's {wws}*.
func (lx *lexer) blanksFrom(j int) int {
	for j < len(lx.d) && (lx.d[j] == ' ' || lx.d[j] == '\t') {
		j++
	}
	return j
}

// check lexes "check [TYPE] NAME" (monit's SERVICE_COND). A "check" not
// followed by a blank is an ordinary word, as in monit.
func (lx *lexer) check(start, line, col int) bool {
	d := lx.d
	j := lx.blanksFrom(lx.pos)
	if j == lx.pos {
		return false
	}
	typ := ckProcess
	m := lx.run(j)
	w := strings.ToLower(string(d[j : j+m]))
	switch {
	case (w == ckProcess || w == ckProgram) && j+m < len(d) && (d[j+m] == ' ' || d[j+m] == '\t'):
		typ = w
		j += m + 1
	case checkTypes[w] != "":
		typ = checkTypes[w]
		j += m
	}
	lx.pos = j
	lx.emit(lx.tok(tCheck, typ, start, line, col))
	// The name: blanks and newlines skipped, then a word or a quoted name.
	for lx.pos < len(d) && (isWS(d[lx.pos]) || d[lx.pos] == '\n') {
		if d[lx.pos] == '\n' {
			lx.pos++
			lx.newline()
			continue
		}
		lx.pos++
	}
	ns, nl, nc := lx.pos, lx.line, lx.pos-lx.col+1
	if lx.pos >= len(d) {
		return true
	}
	if q := d[lx.pos]; q == '"' || q == '\'' {
		k := quotedName(d, lx.pos)
		if k < 0 {
			lx.errAt(nl, ns, "unbalanced quotes in the service name")
			lx.pos = len(d)
			return true
		}
		lx.pos = k + 1
		lx.emit(lx.tok(tName, string(d[ns+1:k]), ns, nl, nc))
		return true
	}
	if n := lx.run(lx.pos); n > 0 {
		lx.pos += n
		lx.emit(lx.tok(tName, string(d[ns:lx.pos]), ns, nl, nc))
	}
	return true
}

// depends lexes "depend(s) [on] a, b" (monit's DEPEND_COND). The list
// ends where white space is followed by anything but a comma, exactly
// as monit's longest-match rules end it: "depends on a b" names only a.
func (lx *lexer) depends(start, line, col int) bool {
	d := lx.d
	j := lx.blanksFrom(lx.pos)
	if j == lx.pos {
		return false
	}
	if hasFoldPrefix(d[j:], "on") && (j+2 == len(d) || !isStr(d[j+2])) {
		j += 2
		j = lx.blanksFrom(j)
	}
	lx.pos = j
	t := lx.tok(tDepends, "depends", start, line, col)
	var names []string
	for lx.pos < len(d) {
		c := d[lx.pos]
		if isWWS(c) || c == '\n' {
			a := 0 // {wws}
			for lx.pos+a < len(d) && isWWS(d[lx.pos+a]) {
				a++
			}
			b := 0 // {wws}?[\n]{wws}?
			if k := lx.pos + a; k < len(d) && d[k] == '\n' {
				k++
				for k < len(d) && isWWS(d[k]) {
					k++
				}
				b = k - lx.pos
			}
			e := 0 // [ \r\n\t]+[^,]
			r := 0
			for lx.pos+r < len(d) && (isWS(d[lx.pos+r]) || d[lx.pos+r] == '\n') {
				r++
			}
			switch {
			case r > 0 && lx.pos+r < len(d) && d[lx.pos+r] != ',':
				e = r + 1
			case r >= 2:
				e = r
			}
			if e > a && e > b {
				// The list ends; the last character is given back.
				for k := lx.pos; k < lx.pos+e-1; k++ {
					if d[k] == '\n' {
						lx.line++
						lx.col = k + 1
					}
				}
				lx.pos += e - 1
				break
			}
			n := max(a, b)
			for k := lx.pos; k < lx.pos+n; k++ {
				if d[k] == '\n' {
					lx.line++
					lx.col = k + 1
				}
			}
			lx.pos += n
			continue
		}
		if c == '"' || c == '\'' {
			k := quotedName(d, lx.pos)
			if k < 0 {
				lx.errAt(lx.line, lx.pos, "unbalanced quotes in the dependency list")
				lx.pos = len(d)
				return true
			}
			names = append(names, string(d[lx.pos+1:k]))
			lx.pos = k + 1
			continue
		}
		if n := lx.run(lx.pos); n > 0 {
			names = append(names, string(d[lx.pos:lx.pos+n]))
			lx.pos += n
			continue
		}
		break
	}
	t.args = names
	t.end = lx.pos
	t.raw = string(d[start:lx.pos])
	lx.emit(t)
	return true
}

// group lexes "group NAME" (monit's STRING_COND: the name follows the
// blanks directly, bare or quoted).
func (lx *lexer) group(start, line, col int) bool {
	d := lx.d
	j := lx.blanksFrom(lx.pos)
	if j == lx.pos {
		return false
	}
	lx.pos = j
	if j < len(d) && (d[j] == '"' || d[j] == '\'') {
		n := lx.run(j + 1)
		if n == 0 || j+1+n >= len(d) || d[j+1+n] != d[j] {
			lx.errAt(line, j, "unbalanced quotes in the group name")
			lx.pos = len(d)
			return true
		}
		lx.pos = j + n + 2
		lx.emit(lx.tok(tGroup, string(d[j+1:j+1+n]), start, line, col))
		return true
	}
	n := lx.run(j)
	if n == 0 {
		lx.errAt(line, j, "expected a group name after group")
		return true
	}
	lx.pos = j + n
	lx.emit(lx.tok(tGroup, string(d[j:j+n]), start, line, col))
	return true
}

// every lexes "every N", "every cycle" or "every "cron"" (EVERY_COND).
func (lx *lexer) every(start, line, col int) {
	d := lx.d
	not := strings.HasPrefix(strings.ToLower(string(d[start:lx.pos])), "not")
	for lx.pos < len(d) && isWS(d[lx.pos]) {
		lx.pos++
	}
	t := func(text string) {
		tk := lx.tok(tEvery, text, start, line, col)
		if not {
			tk.args = []string{"not"}
		}
		lx.emit(tk)
	}
	switch {
	case lx.pos < len(d) && isDigit(d[lx.pos]):
		j := lx.pos
		for j < len(d) && isDigit(d[j]) {
			j++
		}
		num := string(d[lx.pos:j])
		lx.pos = j
		if !not {
			t(num)
			return
		}
	case lx.pos < len(d) && (d[lx.pos] == '"' || d[lx.pos] == '\''):
		q := d[lx.pos]
		k := lx.pos + 1
		for k < len(d) && d[k] != q && d[k] != '\n' {
			k++
		}
		if k < len(d) && d[k] == q && cronLike(string(d[lx.pos+1:k])) {
			spec := strings.TrimSpace(string(d[lx.pos+1 : k]))
			lx.pos = k + 1
			t("cron:" + spec)
			return
		}
	case hasFoldPrefix(d[lx.pos:], kwCycle) && !not:
		lx.pos += len(kwCycle)
		if lx.pos < len(d) && (d[lx.pos] == 's' || d[lx.pos] == 'S') {
			lx.pos++
		}
		t(kwCycle)
		return
	}
	lx.errAt(line, start, "invalid every format (expected every N cycles or every \"cron spec\")")
	for lx.pos < len(d) && d[lx.pos] != '\n' {
		lx.pos++
	}
}

// cronLike is monit 5.33's minimal check of a cron string: five fields
// of [0-9,*-] (its lexer refuses a step such as */5).
func cronLike(s string) bool {
	f := strings.Fields(s)
	if len(f) != 5 {
		return false
	}
	for _, x := range f {
		if strings.Trim(x, "0123456789,*-") != "" {
			return false
		}
	}
	return true
}

// includeStmt lexes "include GLOB" (bare or quoted) and hands it over.
func (lx *lexer) includeStmt(start, line, col int) {
	d := lx.d
	lx.pos = lx.blanksFrom(lx.pos)
	var glob string
	switch {
	case lx.pos < len(d) && (d[lx.pos] == '"' || d[lx.pos] == '\''):
		q := d[lx.pos]
		k := lx.pos + 1
		for k < len(d) && d[k] != q && d[k] != '\n' && d[k] != '\r' {
			k++
		}
		if k >= len(d) || d[k] != q || k == lx.pos+1 {
			lx.errAt(line, lx.pos, "unbalanced quotes in the include pattern")
			lx.pos = len(d)
			return
		}
		glob = string(d[lx.pos+1 : k])
		lx.pos = k + 1
	default:
		j := lx.pos
		for j < len(d) && !isWS(d[j]) && d[j] != '\n' {
			j++
		}
		glob = string(d[lx.pos:j])
		lx.pos = j
	}
	if glob == "" {
		lx.errAt(line, start, "expected a file or glob after include")
		return
	}
	t := lx.tok(tWord, "include", start, line, col)
	t.file = lx.f
	if lx.include != nil {
		lx.include(glob, t)
	}
}

// quotedName finds the closing quote of a quoted service name at i, as
// monit's "[^\000-\037"\n]+" and '[^\000-\037"\n]+' rules do: a
// double-quoted name ends at the next ", a single-quoted one at the last
// ' before a control character or " (flex takes the longest match, so
// 'a' with pidfile '/x' is one name). -1 when there is none.
func quotedName(d []byte, i int) int {
	q := d[i]
	end := -1
	for k := i + 1; k < len(d) && d[k] >= 0x20 && d[k] != '"'; k++ {
		if d[k] == q {
			end = k
		}
	}
	if q == '"' && i+1 < len(d) {
		end = -1
		for k := i + 1; k < len(d) && d[k] >= 0x20; k++ {
			if d[k] == '"' {
				end = k
				break
			}
		}
	}
	if end <= i+1 {
		return -1
	}
	return end
}
