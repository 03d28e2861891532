package gossip

import (
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// (g) Every message kind round-trips; unknown formats and garbage are
// rejected cleanly.
func TestCodecRoundTrip(t *testing.T) {
	node := nodeState{
		Name:    "query-1",
		Version: 1<<40 | 7,
		Leaving: true,
		KeyIDs:  []uint32{0xdeadbeef, 1},
		Services: []ServiceHealth{
			svc("db_query_server", "OK", 1234),
			{Name: "db_ltds", State: "Something new", PID: -1, Restarts: 3, Message: "héllo"},
			{Name: "db_tdcp"}, // zero time, empty state
		},
	}
	full := []peerState{
		{nodeState: node, Liveness: livenessDead, Since: time.UnixMilli(1_700_000_000_000), Addr: "10.0.0.1:7946", Meta: encodeMeta(NodeMeta{Roles: []string{"a"}})},
		{nodeState: nodeState{Name: "empty"}, Liveness: livenessAlive, Addr: "10.0.0.2:7946"},
	}
	op := keyOp{Op: keyOpUse, Version: 99, Key: make([]byte, KeySize), From: "infra"}

	tests := []struct {
		name string
		msg  []byte
		want message
	}{
		{"node", encodeNode(&node), message{Node: &node}},
		{"full", encodeFull(full), message{Full: full}},
		{"key op", encodeKeyOp(op), message{KeyOp: &op}},
		{"empty full", encodeFull(nil), message{Full: []peerState{}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeMessage(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(normalize(got), normalize(tc.want)) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// normalize makes times comparable with DeepEqual (wall clock only).
func normalize(m message) message {
	fix := func(n *nodeState) {
		for i := range n.Services {
			if !n.Services[i].Since.IsZero() {
				n.Services[i].Since = time.UnixMilli(n.Services[i].Since.UnixMilli())
			}
		}
	}
	if m.Node != nil {
		c := *m.Node
		c.Services = append([]ServiceHealth(nil), c.Services...)
		fix(&c)
		m.Node = &c
	}
	var full []peerState
	for _, p := range m.Full {
		p.Services = append([]ServiceHealth(nil), p.Services...)
		fix(&p.nodeState)
		if !p.Since.IsZero() {
			p.Since = time.UnixMilli(p.Since.UnixMilli())
		}
		full = append(full, p)
	}
	if m.Full != nil {
		m.Full = append([]peerState{}, full...)
	}
	return m
}

func TestCodecRejects(t *testing.T) {
	good := encodeNode(&nodeState{Name: "n", Version: 1, Services: []ServiceHealth{svc("s", "OK", 1)}})
	future := append([]byte{2}, good[1:]...)
	huge := []byte{formatV1, kindNode}
	huge = appendString(huge, "n")
	huge = binary.AppendUvarint(huge, 1)
	huge = append(huge, 0, 0)
	huge = binary.AppendUvarint(huge, 1<<30) // services count

	tests := []struct {
		name    string
		msg     []byte
		wantErr string
		is      error
	}{
		{"unknown format version", future, "unknown gossip message format 2", ErrUnknownFormat},
		{"empty", nil, "truncated", nil},
		{"format only", []byte{formatV1}, "truncated", nil},
		{"unknown kind", []byte{formatV1, 'z'}, "unknown kind", nil},
		{"truncated", good[:len(good)-3], "truncated", nil},
		{"count over limit", huge, "exceeds limit", nil},
		{"empty name", encodeNode(&nodeState{}), "empty node name", nil},
		{"bad key op", []byte{formatV1, kindKeyOp, 9, 0, 0, 0}, "unknown key operation", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeMessage(tc.msg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err %v is not %v", err, tc.is)
			}
		})
	}
}

// A later release may append fields to a service and use new state codes;
// this release must still read the rest.
func TestCodecForwardCompatible(t *testing.T) {
	b := []byte{formatV1, kindNode}
	b = appendString(b, "n")
	b = binary.AppendUvarint(b, 5)
	b = append(b, 0)                              // flags
	b = binary.AppendUvarint(b, 0)                // key ids
	b = binary.AppendUvarint(b, 2)                // services
	b = appendPrefixed(b, func(b []byte) []byte { // with an extra field
		b = appendString(b, "a")
		b = append(b, 1) // OK
		b = binary.AppendVarint(b, 10)
		b = binary.AppendVarint(b, 0)
		b = binary.AppendVarint(b, 0)
		b = appendString(b, "")
		b = appendTime(b, time.UnixMilli(5000))
		b = appendString(b, "0123456789ab envoy:1")
		return appendString(b, "a future field")
	})
	b = appendPrefixed(b, func(b []byte) []byte { // with a future state code
		b = appendString(b, "b")
		b = append(b, 200)
		b = binary.AppendVarint(b, 11)
		b = binary.AppendVarint(b, 0)
		b = binary.AppendVarint(b, 0)
		return appendString(b, "m")
	})
	m, err := decodeMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	got := m.Node.Services
	if len(got) != 2 || got[0].State != "OK" || got[0].PID != 10 || got[0].Container != "0123456789ab envoy:1" || !got[0].Started.Equal(time.UnixMilli(5000)) ||
		got[1].State != "state#200" || got[1].Message != "m" || got[1].Container != "" {
		t.Errorf("services = %+v", got)
	}
}

// A big list is shrunk to fit one packet by truncating messages, the same
// way for everyone; one that cannot fit is flagged.
func TestFitNode(t *testing.T) {
	long := strings.Repeat("é", 200) // multi-byte: truncation must keep UTF-8 valid
	tests := []struct {
		name     string
		services int
		fits     bool
		maxMsg   int
	}{
		{"small list keeps messages", 3, true, len(long)},
		{"15 services shrink messages", 15, true, 96},
		{"200 services cannot fit", 200, false, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := nodeState{Name: "node", Version: 1}
			for i := range tc.services {
				n.Services = append(n.Services, ServiceHealth{Name: "some_service_name_" + string(rune('a'+i%26)), State: "OK", PID: 12345, Since: time.Now(), Message: long})
			}
			st, msg, fits := fitNode(n)
			if fits != tc.fits {
				t.Fatalf("fits = %v (%d bytes)", fits, len(msg))
			}
			if fits && len(msg) > maxBroadcastBytes {
				t.Errorf("%d bytes > %d", len(msg), maxBroadcastBytes)
			}
			for _, s := range st.Services {
				if tc.maxMsg < len(long) && len(s.Message) > tc.maxMsg {
					t.Errorf("message %d bytes, want <= %d", len(s.Message), tc.maxMsg)
				}
				if !strings.HasPrefix(long, strings.TrimSuffix(s.Message, "…")) {
					t.Errorf("bad truncation %q", s.Message)
				}
			}
			if len(n.Services) > 0 && n.Services[0].Message != long {
				t.Error("fitNode modified its input")
			}
			got, err := decodeMessage(msg)
			if err != nil || !equalServices(got.Node.Services, st.Services) {
				t.Errorf("encoded form differs from canonical form: %v", err)
			}
		})
	}
}

// (h) Meta must fit memberlist's 512 bytes.
func TestMeta(t *testing.T) {
	tests := []struct {
		name    string
		meta    NodeMeta
		wantErr bool
	}{
		{"typical", NodeMeta{Roles: []string{"infra", "query", "merge"}, APIAddr: "10.1.2.3:7947", DeephavenVersion: "1.20240517.344", DhvisorVersion: "0.3.1"}, false},
		{"empty", NodeMeta{}, false},
		{"upgraded", NodeMeta{Roles: []string{"query"}, DeephavenVersion: "1.20240517.344", PackageVersion: "illumon-db 1.20240517.344-1"}, false},
		{"coordinator", NodeMeta{Kind: KindCoordinator, APIAddr: "10.1.2.4:8125", DhvisorVersion: "0.4.0"}, false},
		{"too big", NodeMeta{Roles: []string{strings.Repeat("r", 300), strings.Repeat("s", 300)}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Config{NodeName: "n", Meta: tc.meta})
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "512") {
					t.Fatalf("err = %v, want a 512-byte limit error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeMeta(encodeMeta(tc.meta))
			if err != nil || !reflect.DeepEqual(got, tc.meta) {
				t.Errorf("round trip = %+v, %v", got, err)
			}
		})
	}
	if _, err := New(Config{NodeName: "n", Meta: NodeMeta{APIAddr: strings.Repeat("x", 600)}}); err == nil {
		t.Error("New accepted oversized meta")
	}
	if _, err := decodeMeta([]byte{7}); !errors.Is(err, ErrUnknownFormat) {
		t.Errorf("decodeMeta(unknown format) = %v", err)
	}
}

func TestNewValidation(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"no name", Config{}, "NodeName is required"},
		{"bad port", Config{NodeName: "n", BindPort: 70000}, "bad BindPort"},
		{"probe timeout", Config{NodeName: "n", Timing: Timing{ProbeInterval: time.Second, ProbeTimeout: time.Second}}, "must be shorter"},
		{"unreadable key file", Config{NodeName: "n", KeyFile: writeKeys(t, dir, 0o644, b64(newKey(t)))}, "chmod 600"},
		{"ok", Config{NodeName: "n", Timing: Timing{ProbeInterval: time.Second}}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
