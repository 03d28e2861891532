package workers

import (
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
)

// FuzzRegistrationBody: whatever a caller PUTs, decoding and checking it
// never panics, and a body the checks take comes out with its defaults
// filled in and stays valid when checked again.
func FuzzRegistrationBody(f *testing.F) {
	for _, s := range []string{
		`{"leaseTtlMs": 30000, "workers": [{"name": "w1", "port": 24001, "nonce": "n1", "kind": "DeephavenCommunity", "envoyPrefix": "/worker/w1"}]}`,
		`{"workers": [{"name": "w1", "port": 24001, "host": "10.0.0.9", "protocol": "http1", "tls": true}]}`,
		`{"dispatcher": "db_query_server", "lease_ttl_ms": "1000", "workers": []}`,
		`{"workers": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]}`,
		`{}`, `[]`, `null`, `{"workers": null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		reg, err := ParseBody(body)
		if err != nil {
			return
		}
		reg.Node, reg.Dispatcher = "q1", "db_query_server"
		if reg.Normalize() != nil {
			return
		}
		for i, w := range reg.Workers {
			if w.EnvoyPrefix == "" || w.Protocol == "" || w.Port < 1 || w.Port > 65535 {
				t.Fatalf("workers[%d] taken without its defaults or with a bad port: %v", i, w)
			}
		}
		again, err := protojson.Marshal(reg)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseBody(again)
		if err != nil {
			t.Fatalf("a normalized body does not decode again: %v", err)
		}
		if err := back.Normalize(); err != nil {
			t.Fatalf("a normalized body fails the checks again: %v", err)
		}
	})
}
