package properties

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Line writes key=value so that Parse reads back this key and value: one
// physical line whatever the value holds, so a listing stays one property
// a line and is itself a properties file. Backslashes and control
// characters are escaped (a value that ends in a backslash would otherwise
// continue onto the next line, a newline would end it); a blank that the
// reader would trim off the front of the key is written as \uXXXX. A key
// that would read as a comment, a scope or final (from a file where a
// control character, which keys are trimmed of, came first) is written
// after an escaped NUL, for the same reason. Every other byte, invalid
// UTF-8 included, is written as it is.
func Line(key, value string) string {
	var b strings.Builder
	if key != "" && strings.ContainsRune("#![{}", rune(key[0])) || hasPrefixFold(key, prefixFinal) || hasPrefixFold(key, prefixFinalize) {
		b.WriteString(`\u0000`)
	}
	if r, size := utf8.DecodeRuneInString(key); size > 0 && javaSpace(r) {
		fmt.Fprintf(&b, `\u%04x`, r)
		key = key[size:]
	}
	escape(&b, key)
	b.WriteByte('=')
	escape(&b, value)
	return b.String()
}

func escape(b *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '\t':
			b.WriteString(`\t`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\f':
			b.WriteString(`\f`)
		case '\b':
			b.WriteString(`\b`)
		default:
			if c < ' ' {
				fmt.Fprintf(b, `\u%04x`, c)
			} else {
				b.WriteByte(c)
			}
		}
	}
}
