package logging

import (
	"bytes"
	"errors"
	"log/slog"
	"maps"
	"testing"

	"github.com/coreos/go-systemd/v22/journal"
)

type entry struct {
	msg    string
	pri    journal.Priority
	fields map[string]string
}

func TestJournalHandler(t *testing.T) {
	var got []entry
	send := func(msg string, pri journal.Priority, fields map[string]string) error {
		got = append(got, entry{msg, pri, maps.Clone(fields)})
		return nil
	}
	log := slog.New(NewJournalHandler("dhagent", slog.LevelInfo, send, nil))
	log.Debug("hidden")
	log.With("service", "configuration_server").WithGroup("check").Warn("probe failed", "name", "tcp:websocket", "err", errors.New("refused here"))
	log.Error("bad", "1st", 1, "_x", "y", "message", "m", "priority", "p", "syslog_identifier", "s")
	log.WithGroup("a").WithGroup("b").With("k", "v").Info("nested", "n", 2)
	if len(got) != 3 {
		t.Fatalf("%d entries, want 3 (debug is below the level)", len(got))
	}
	want := entry{
		msg: `probe failed service=configuration_server check.name=tcp:websocket check.err="refused here"`,
		pri: journal.PriWarning,
		fields: map[string]string{"SYSLOG_IDENTIFIER": "dhagent", "SERVICE": "configuration_server",
			"CHECK_NAME": "tcp:websocket", "CHECK_ERR": "refused here"},
	}
	if got[0].msg != want.msg || got[0].pri != want.pri || !maps.Equal(got[0].fields, want.fields) {
		t.Errorf("entry\n%+v\nwant\n%+v", got[0], want)
	}
	wantFields := map[string]string{"SYSLOG_IDENTIFIER": "dhagent", "F_1ST": "1", "X": "y", "F_MESSAGE": "m", "F_PRIORITY": "p", "F_SYSLOG_IDENTIFIER": "s"}
	if got[1].pri != journal.PriErr || !maps.Equal(got[1].fields, wantFields) {
		t.Errorf("field names not made valid, or an entry's own fields taken:\n%+v\nwant fields %v", got[1], wantFields)
	}
	// Attributes added inside groups belong to them, as the record's own do.
	want = entry{msg: "nested a.b.k=v a.b.n=2", pri: journal.PriInfo,
		fields: map[string]string{"SYSLOG_IDENTIFIER": "dhagent", "A_B_K": "v", "A_B_N": "2"}}
	if got[2].msg != want.msg || got[2].pri != want.pri || !maps.Equal(got[2].fields, want.fields) {
		t.Errorf("entry\n%+v\nwant\n%+v", got[2], want)
	}
}

func TestJournalHandlerFallsBack(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewJournalHandler("dhcoord", slog.LevelInfo, func(string, journal.Priority, map[string]string) error {
		return errors.New("journald is gone")
	}, &buf))
	log.Info("still logged", "k", "v")
	if buf.String() != "INFO still logged k=v\n" {
		t.Fatalf("fallback wrote %q", buf.String())
	}
}
