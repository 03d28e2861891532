// Package logging gives dhagent and dhcoord their logger: plain text on
// stderr, or, when stderr is systemd's journal stream (the daemon runs as a
// unit), native journal entries whose attributes are journal fields, so that
// `journalctl -u dhagent SERVICE=configuration_server` finds a service's
// lines.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"unicode"

	"github.com/coreos/go-systemd/v22/journal"
)

// New returns the daemon's logger at level. identifier names the daemon in
// the journal (SYSLOG_IDENTIFIER).
func New(identifier string, level slog.Level) *slog.Logger {
	if ok, _ := journal.StderrIsJournalStream(); ok && journal.Enabled() {
		return slog.New(NewJournalHandler(identifier, level, journal.Send, os.Stderr))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// SendFunc sends one journal entry (journal.Send).
type SendFunc func(message string, priority journal.Priority, fields map[string]string) error

// JournalHandler writes slog records as journal entries: MESSAGE holds the
// message followed by its attributes as text (what `journalctl` shows),
// and every attribute is also a field of its own, named in upper case with
// groups joined by "_" (service → SERVICE, check.name → CHECK_NAME).
type JournalHandler struct {
	identifier string
	level      slog.Leveler
	send       SendFunc
	fallback   io.Writer // where a record goes if the journal refuses it
	attrs      []slog.Attr
	groups     []string
}

// NewJournalHandler returns a handler that sends with send, and writes to
// fallback what the journal does not take.
func NewJournalHandler(identifier string, level slog.Leveler, send SendFunc, fallback io.Writer) *JournalHandler {
	return &JournalHandler{identifier: identifier, level: level, send: send, fallback: fallback}
}

// Enabled implements slog.Handler.
func (h *JournalHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

// Handle implements slog.Handler.
func (h *JournalHandler) Handle(_ context.Context, r slog.Record) error {
	fields := map[string]string{"SYSLOG_IDENTIFIER": h.identifier}
	var text strings.Builder
	text.WriteString(r.Message)
	var add func(prefix []string, a slog.Attr)
	add = func(prefix []string, a slog.Attr) {
		a.Value = a.Value.Resolve()
		if a.Equal(slog.Attr{}) {
			return
		}
		if a.Value.Kind() == slog.KindGroup {
			p := prefix
			if a.Key != "" {
				p = append(slices.Clone(prefix), a.Key)
			}
			for _, g := range a.Value.Group() {
				add(p, g)
			}
			return
		}
		key := strings.Join(append(slices.Clone(prefix), a.Key), ".")
		val := a.Value.String()
		fmt.Fprintf(&text, " %s=%s", key, quote(val))
		fields[fieldName(key)] = val
	}
	for _, a := range h.attrs {
		add(nil, a)
	}
	r.Attrs(func(a slog.Attr) bool {
		add(h.groups, a)
		return true
	})
	if err := h.send(text.String(), priority(r.Level), fields); err != nil {
		_, werr := fmt.Fprintf(h.fallback, "%s %s\n", r.Level, text.String())
		return werr
	}
	return nil
}

// WithAttrs implements slog.Handler.
func (h *JournalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = slices.Clone(h.attrs)
	for _, a := range attrs {
		// Inside the groups opened so far, innermost first.
		for i := len(h.groups) - 1; i >= 0; i-- {
			a = slog.Attr{Key: h.groups[i], Value: slog.GroupValue(a)}
		}
		c.attrs = append(c.attrs, a)
	}
	return &c
}

// WithGroup implements slog.Handler.
func (h *JournalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.groups = append(slices.Clone(h.groups), name)
	return &c
}

func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	}
	return journal.PriDebug
}

// fieldName makes an attribute key a journal field name: upper-case
// letters, digits and "_", not starting with "_" (those are the journal's
// own trusted fields) or a digit, and not one of the fields every entry
// already has (an attribute "message" would add a second MESSAGE: JSON
// output would make it an array, and MESSAGE= matches would find it).
func fieldName(key string) string {
	var b strings.Builder
	for _, r := range key {
		switch {
		case r >= 'a' && r <= 'z':
			b.WriteRune(unicode.ToUpper(r))
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	name := strings.TrimLeft(b.String(), "_")
	if name == "" || name[0] >= '0' && name[0] <= '9' || name == "MESSAGE" || name == "PRIORITY" || name == "SYSLOG_IDENTIFIER" {
		name = "F_" + name
	}
	return name
}

func quote(s string) string {
	if s == "" || strings.ContainsAny(s, " \t\n\"=") {
		return fmt.Sprintf("%q", s)
	}
	return s
}
