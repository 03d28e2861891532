package container

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestDockerPull reads the engine's pull progress as the JSON messages it
// is: a failure is a message with an error, whatever else the progress says.
func TestDockerPull(t *testing.T) {
	cases := []struct {
		name, ref, progress, wantErr string
	}{
		{"pulled", "envoyproxy/envoy:v1.31.2", `{"status":"Pulling from envoyproxy/envoy","id":"v1.31.2"}` + "\n" + `{"status":"Downloaded newer image for envoyproxy/envoy:v1.31.2"}` + "\n", ""},
		{"a tag named error", "site/envoy:error", `{"status":"Pulling from site/envoy","id":"error"}` + "\n" + `{"status":"Status: Image is up to date"}` + "\n", ""},
		{"failed", "envoyproxy/envoy:v9", `{"status":"Pulling from envoyproxy/envoy","id":"v9"}` + "\n" + `{"errorDetail":{"message":"manifest unknown"},"error":"manifest unknown"}` + "\n", "pull envoyproxy/envoy:v9: manifest unknown"},
		{"cut short", "envoyproxy/envoy:v1", `{"status":"Pulling fr`, "pull envoyproxy/envoy:v1: container engine unreachable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Api-Version", "1.41")
				if strings.HasSuffix(r.URL.Path, "/images/create") {
					w.Header().Set("Content-Type", "application/json")
					_, _ = w.Write([]byte(c.progress))
				}
			}))
			defer srv.Close()
			d, err := NewDocker("tcp://" + strings.TrimPrefix(srv.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			err = d.Pull(context.Background(), c.ref)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("pull failed: %v", err)
			case c.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), c.wantErr)):
				t.Fatalf("error %v, want %q", err, c.wantErr)
			}
		})
	}
}
