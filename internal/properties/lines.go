package properties

import (
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// loc is where one byte of a logical line came from.
type loc struct{ line, col int }

// logical is one logical line: physical lines joined at their
// continuations, then unescaped, each byte with its source location.
type logical struct {
	text string
	locs []loc // len(text)+1: the last is just past the end
	line int   // the first physical line
	err  *Error
}

// physicalLines splits data as java.io.BufferedReader.readLine does: "\n",
// "\r\n" and a lone "\r" end a line, and a terminator at the very end does
// not start another, empty line.
func physicalLines(data []byte) []string {
	var out []string
	s := string(data)
	for len(s) > 0 {
		i := strings.IndexAny(s, "\r\n")
		if i < 0 {
			out = append(out, s)
			break
		}
		out = append(out, s[:i])
		if s[i] == '\r' && i+1 < len(s) && s[i+1] == '\n' {
			i++
		}
		s = s[i+1:]
	}
	return out
}

// javaSpace is Character.isWhitespace, what Deephaven's ltrim strips: the
// Unicode space separators except the non-breaking ones, and the ASCII
// controls \t \n \v \f \r and 0x1C-0x1F.
func javaSpace(r rune) bool {
	switch {
	case r == ' ' || r >= '\t' && r <= '\r' || r >= 0x1c && r <= 0x1f:
		return true
	case r < 0x80 || r == '\u00a0' || r == '\u2007' || r == '\u202f':
		return false
	}
	return unicode.In(r, unicode.Zs, unicode.Zl, unicode.Zp)
}

// ltrimLen is how many leading bytes of s Deephaven's ltrim removes.
func ltrimLen(s string) int {
	n := 0
	for n < len(s) {
		r, size := utf8.DecodeRuneInString(s[n:])
		if !javaSpace(r) {
			break
		}
		n += size
	}
	return n
}

// javaTrim is String.trim: every char up to U+0020 off both ends.
func javaTrim(s string) string {
	return strings.TrimFunc(s, func(r rune) bool { return r <= ' ' })
}

// continues is Deephaven's continuation test: one trailing backslash, not
// two (unlike java.util.Properties, three do not continue either).
func continues(s string) bool {
	return strings.HasSuffix(s, `\`) && !strings.HasSuffix(s, `\\`)
}

// logicalLines joins physical lines as Deephaven's line reader does: each
// physical line left-trimmed, and while the joined line ends in a single
// backslash, the backslash is dropped and the next physical line appended.
// Comments are recognised only after joining, so a comment ending in a
// backslash swallows the next line. A continuation at the end of the file
// is an error (Deephaven silently drops that backslash; a file that ends
// mid-line is more likely cut short than meant).
func logicalLines(file string, data []byte) []logical {
	phys := physicalLines(data)
	var out []logical
	for i := 0; i < len(phys); {
		start := i
		var raw []byte
		var locs []loc
		for {
			p := phys[i]
			n := ltrimLen(p)
			raw = append(raw, p[n:]...)
			for c := n; c < len(p); c++ {
				locs = append(locs, loc{i + 1, c + 1})
			}
			end := loc{i + 1, len(p) + 1}
			i++
			if !continues(string(raw)) {
				locs = append(locs, end)
				break
			}
			if i == len(phys) {
				out = append(out, logical{line: start + 1, err: &Error{
					Pos: Pos{File: file, Line: end.line, Col: end.col - 1},
					Msg: `the line ends in a continuation \ but the file ends here (expected another line, or remove the \)`,
				}})
				return out
			}
			raw, locs = raw[:len(raw)-1], locs[:len(locs)-1]
		}
		l := unescape(file, string(raw), locs)
		l.line = start + 1
		out = append(out, l)
	}
	return out
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// parseJavaHex is Integer.parseInt(s, 16) for a 4-character s: an optional
// sign, then hex digits; the result is cast to a UTF-16 char.
func parseJavaHex(s string) (uint16, bool) {
	neg := false
	digits := s
	if s[0] == '+' || s[0] == '-' {
		neg, digits = s[0] == '-', s[1:]
	}
	v := 0
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		if !isHex(c) {
			return 0, false
		}
		d := int(c - '0')
		switch {
		case c >= 'a':
			d = int(c-'a') + 10
		case c >= 'A':
			d = int(c-'A') + 10
		}
		v = v*16 + d
	}
	if neg {
		v = -v
	}
	return uint16(v), true
}

// unescape is Apache Commons Lang's StringEscapeUtils.unescapeJava, which
// Deephaven applies to every whole logical line before anything else:
// octal \0-\377, \uXXXX (more u's and a + allowed), \b \n \t \f \r, \\ \"
// \', and a backslash before anything else (or at the end) is dropped. So
// \= and \: do not protect a separator: they are undone before the key is
// split from the value.
func unescape(file, raw string, locs []loc) logical {
	if !strings.Contains(raw, `\`) {
		return logical{text: raw, locs: locs}
	}
	var b strings.Builder
	var out []loc
	emit := func(s string, at loc) {
		b.WriteString(s)
		for range len(s) {
			out = append(out, at)
		}
	}
	var pendingHigh rune = -1 // a high surrogate waiting for its low half
	var highAt loc
	flush := func() {
		if pendingHigh >= 0 {
			emit(string(utf8.RuneError), highAt)
			pendingHigh = -1
		}
	}
	for i := 0; i < len(raw); {
		at := locs[i]
		if raw[i] != '\\' {
			flush()
			emit(raw[i:i+1], at)
			i++
			continue
		}
		if i+1 < len(raw) && isOctal(raw[i+1]) {
			flush()
			end := i + 2
			more := 1 // \0-\377: three digits only from a leading 0-3
			if raw[i+1] <= '3' {
				more = 2
			}
			for k := 0; k < more && end < len(raw) && isOctal(raw[end]); k++ {
				end++
			}
			v := 0
			for _, c := range raw[i+1 : end] {
				v = v*8 + int(c-'0')
			}
			emit(string(rune(v)), at)
			i = end
			continue
		}
		if i+1 < len(raw) && raw[i+1] == 'u' {
			j := i + 2
			for j < len(raw) && raw[j] == 'u' {
				j++
			}
			if j < len(raw) && raw[j] == '+' {
				j++
			}
			if j+4 > len(raw) {
				return logical{err: &Error{Pos: Pos{File: file, Line: at.line, Col: at.col}, Msg: `\u escape has fewer than 4 hex digits before the end of the line (expected \uXXXX)`}}
			}
			c, ok := parseJavaHex(raw[j : j+4])
			if !ok {
				return logical{err: &Error{Pos: Pos{File: file, Line: at.line, Col: at.col}, Msg: "\\u escape " + quote(raw[i:j+4]) + " is not 4 hex digits (expected \\uXXXX)"}}
			}
			r := rune(c)
			switch {
			case utf16.IsSurrogate(r) && r < 0xdc00:
				flush()
				pendingHigh, highAt = r, at
			case utf16.IsSurrogate(r) && pendingHigh >= 0:
				emit(string(utf16.DecodeRune(pendingHigh, r)), highAt)
				pendingHigh = -1
			default:
				flush()
				emit(string(r), at) // a lone low surrogate becomes U+FFFD
			}
			i = j + 4
			continue
		}
		flush()
		if i+1 == len(raw) {
			i++ // a trailing backslash is dropped
			continue
		}
		switch raw[i+1] {
		case 'b':
			emit("\b", at)
		case 'n':
			emit("\n", at)
		case 't':
			emit("\t", at)
		case 'f':
			emit("\f", at)
		case 'r':
			emit("\r", at)
		case '\\', '"', '\'':
			emit(raw[i+1:i+2], at)
		default:
			i++ // the backslash is dropped, the next byte read as it is
			continue
		}
		i += 2
	}
	flush()
	out = append(out, locs[len(raw)])
	return logical{text: b.String(), locs: out}
}
