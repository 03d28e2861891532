package gossip

import (
	"context"
	"log/slog"
	"strings"
)

// logWriter receives memberlist's log lines ("[LEVEL] memberlist: text")
// and re-emits them through slog at the matching level. It also reads two
// kinds of lines, because memberlist has no other way to tell us:
//
//   - "Suspect NAME has failed, no acks received": this node's probe of NAME
//     failed directly and indirectly and memberlist now suspects it. That is
//     the only trace of suspicion memberlist gives (see doc.go).
//   - "Refuting a dead message" / "Refuting a suspect message": a peer
//     declared this node dead or suspect (a partition, a false suspicion)
//     and memberlist is setting it right. That peer shows our services as
//     unknown until it holds a list newer than the one it saw die, and
//     without a change here none would come: so we republish.
//   - decryption failures on incoming traffic: rephrased so an operator
//     sees at once that some node uses a different gossip key.
type logWriter struct{ g *Gossip }

func (w *logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level, msg := parseMemberlistLine(line)
	lg := w.g.mlLog

	if name, ok := suspectedNode(msg); ok {
		w.g.markSuspect(name)
	}
	if refutedAboutUs(msg) {
		w.g.refuted()
	}
	if incomingKeyMismatch(msg) {
		lg.Warn("gossip: dropped traffic encrypted with a key this node does not hold (a node with a wrong gossip key is trying to join?)", "detail", msg)
		return len(p), nil
	}
	lg.Log(context.Background(), level, msg)
	return len(p), nil
}

// parseMemberlistLine splits memberlist's "[ERR] memberlist: ..." format.
func parseMemberlistLine(line string) (slog.Level, string) {
	level := slog.LevelInfo
	if strings.HasPrefix(line, "[") {
		if end := strings.IndexByte(line, ']'); end > 0 {
			switch line[1:end] {
			case "DEBUG", "TRACE":
				level = slog.LevelDebug
			case "INFO":
				level = slog.LevelInfo
			case "WARN":
				level = slog.LevelWarn
			case "ERR", "ERROR":
				level = slog.LevelError
			}
			line = strings.TrimSpace(line[end+1:])
		}
	} else if strings.HasPrefix(line, "Err:") {
		level = slog.LevelWarn
	}
	return level, line
}

// suspectedNode extracts NAME from "memberlist: Suspect NAME has failed,
// no acks received" (memberlist's probeNode; stable since 2016).
func suspectedNode(msg string) (string, bool) {
	const pre, post = "memberlist: Suspect ", " has failed, no acks received"
	if !strings.HasPrefix(msg, pre) || !strings.HasSuffix(msg, post) {
		return "", false
	}
	name := msg[len(pre) : len(msg)-len(post)]
	return name, name != ""
}

// incomingKeyMismatch reports memberlist's lines for incoming traffic it
// could not decrypt: a stream ("failed to receive: ...") or a packet
// ("Decrypt packet failed: ..."). Our own failed joins are not among them;
// the join loop reports those.
func incomingKeyMismatch(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "no installed keys could decrypt") &&
		(strings.Contains(m, "failed to receive") || strings.Contains(m, "decrypt packet failed"))
}

// refutedAboutUs reports memberlist's refute of a suspect or dead message
// about this node (memberlist state.go, v0.7.0).
func refutedAboutUs(msg string) bool {
	return strings.HasPrefix(msg, "memberlist: Refuting a dead message") ||
		strings.HasPrefix(msg, "memberlist: Refuting a suspect message")
}
