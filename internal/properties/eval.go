package properties

import (
	"fmt"
	"strings"
)

// Context is what a process evaluates scopes against: the names of the host
// it runs on and its own properties (Deephaven's JVM system properties,
// e.g. service.name and process.name).
type Context struct {
	// Hosts are the host's names, as [host=...] matches them: hostname,
	// short name, FQDN and IP addresses. Compared lower-cased.
	Hosts []string
	// Props are the process's own properties. The scope key "process" is
	// process.name; any other key is looked up here, case-sensitively.
	Props map[string]string
}

// matches is DefaultConfigurationContext.matches: one of values must equal
// the context's value for key. values are compared as written, so a host
// written in capitals never matches.
func (c Context) matches(key string, values []string) bool {
	if strings.EqualFold(key, hostKey) {
		for _, h := range c.Hosts {
			for _, v := range values {
				if v == strings.ToLower(h) {
					return true
				}
			}
		}
		return false
	}
	if key == processKey {
		key = processNameProp
	}
	have, ok := c.Props[key]
	if !ok {
		return false
	}
	for _, v := range values {
		if v == have {
			return true
		}
	}
	return false
}

// finalRule is a key or pattern made final, and where.
type finalRule struct {
	pattern string
	pos     Pos
}

type evaluation struct {
	ctx    Context
	props  map[string]Value
	finals []finalRule
	errs   Errors
	seq    int
}

// Eval returns the properties as the process described by ctx sees them:
// only statements inside scopes that all match are applied, included files
// first, the last assignment winning. A final key assigned again (in a
// matching scope) is an error naming both lines.
func (f *File) Eval(ctx Context) (map[string]Value, error) {
	e := &evaluation{ctx: ctx, props: map[string]Value{}}
	e.file(f)
	if len(e.errs) > 0 {
		return nil, e.errs
	}
	for k, v := range e.props {
		if _, ok := e.final(k); ok {
			v.Final = true
			e.props[k] = v
		}
	}
	return e.props, nil
}

func (e *evaluation) file(f *File) {
	// Each file starts at the top scope: an included file is read as if on
	// its own, whatever scope its includefiles line was in. in[i] says
	// whether the scopes up to level i all hold, so each is matched once.
	in := []bool{true}
	for i := range f.stmts {
		s := &f.stmts[i]
		switch s.kind {
		case stmtPush:
			in = append(in, in[len(in)-1] && e.holds(s.scope))
			continue
		case stmtPop:
			if len(in) > 1 { // Parse never makes an unmatched pop
				in = in[:len(in)-1]
			}
			continue
		}
		if !in[len(in)-1] {
			continue
		}
		switch s.kind {
		case stmtInclude:
			for _, inc := range s.includes {
				e.file(inc)
			}
		case stmtFinalize:
			for _, n := range s.names {
				e.finals = append(e.finals, finalRule{pattern: n, pos: s.pos})
			}
		case stmtSet, stmtFinalSet:
			if r, ok := e.final(s.key); ok {
				e.conflict(s, r)
				continue
			}
			e.seq++
			e.props[s.key] = Value{Value: s.val, Pos: s.pos, Seq: e.seq}
			if s.kind == stmtFinalSet {
				e.finals = append(e.finals, finalRule{pattern: s.key, pos: s.pos})
			}
		}
	}
}

// holds says whether every condition of a scope matches.
func (e *evaluation) holds(conds []cond) bool {
	for _, c := range conds {
		if !e.ctx.matches(c.key, c.values) {
			return false
		}
	}
	return true
}

func (e *evaluation) conflict(s *stmt, r finalRule) {
	how := "made final by finalize " + r.pattern
	if r.pattern == s.key {
		how = "made final"
	}
	if prev, ok := e.props[s.key]; ok && prev.Pos != r.pos {
		how += fmt.Sprintf(" at %s, assigned at %s", r.pos, prev.Pos)
	} else {
		how += " at " + r.pos.String()
	}
	if len(e.errs) < maxErrors {
		e.errs = append(e.errs, &Error{Pos: s.pos, Msg: fmt.Sprintf("%s is final (%s) and cannot be assigned again", quote(s.key), how)})
	}
}

// final finds the first rule that makes key final.
func (e *evaluation) final(key string) (finalRule, bool) {
	for _, r := range e.finals {
		if wildcard(r.pattern, key) {
			return r, true
		}
	}
	return finalRule{}, false
}

// wildcard matches key against pattern, where * is any run of characters
// and everything else is literal.
func wildcard(pattern, key string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == key
	}
	if !strings.HasPrefix(key, parts[0]) {
		return false
	}
	key = key[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(key, p)
		if i < 0 {
			return false
		}
		key = key[i+len(p):]
	}
	return len(key) >= len(last) && strings.HasSuffix(key, last)
}

// serviceNameProp is the property Deephaven's launcher sets beside
// process.name; scopes select services by it.
const serviceNameProp = "service.name"

// ProcessProps are the properties a Deephaven server process started as
// name has before any file is read: process.name and service.name, both
// name, as the launcher sets them (-Dprocess.name, -Dservice.name).
func ProcessProps(name string) map[string]string {
	return map[string]string{processNameProp: name, serviceNameProp: name}
}
