package check

import (
	"context"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func testMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("status: healthy\n"))
	})
	mux.HandleFunc("/down", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "starting", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ok", http.StatusFound)
	})
	mux.HandleFunc("POST /post", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/vhost", func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "svc.example:8123" {
			http.NotFound(w, r)
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		// Returns once the client gives up, so the server can shut down.
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	return mux
}

// writeCA stores the test server's self-signed certificate as a CA file.
func writeCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestHTTP(t *testing.T) {
	plain := httptest.NewServer(testMux())
	defer plain.Close()
	secure := httptest.NewUnstartedServer(testMux())
	// Failed handshakes are the point of some cases; keep them out of the log.
	secure.Config.ErrorLog = log.New(io.Discard, "", 0)
	secure.StartTLS()
	defer secure.Close()
	ca := writeCA(t, secure)
	nothing := "http://" + closedAddr(t)

	tests := []struct {
		name    string
		opts    HTTPOptions
		timeout time.Duration
		want    expect
	}{
		{name: "200", opts: HTTPOptions{URL: plain.URL + "/ok"}},
		{name: "503", opts: HTTPOptions{URL: plain.URL + "/down"},
			want: expect{msg: "http GET " + plain.URL + "/down: status 503, want 2xx"}},
		{name: "503 expected", opts: HTTPOptions{URL: plain.URL + "/down", ExpectStatus: 503}},
		{name: "200 but other status expected", opts: HTTPOptions{URL: plain.URL + "/ok", ExpectStatus: 204},
			want: expect{msg: "http GET " + plain.URL + "/ok: status 200, want 204"}},
		{name: "redirect not followed", opts: HTTPOptions{URL: plain.URL + "/redirect"},
			want: expect{msg: "http GET " + plain.URL + "/redirect: status 302, want 2xx"}},
		{name: "body matches", opts: HTTPOptions{URL: plain.URL + "/ok", ExpectBody: "healthy"}},
		{name: "wrong body", opts: HTTPOptions{URL: plain.URL + "/ok", ExpectBody: "ready"},
			want: expect{msg: "http GET " + plain.URL + `/ok: body does not contain "ready"`}},
		{name: "method", opts: HTTPOptions{URL: plain.URL + "/post", Method: "POST"}},
		{name: "default method is GET", opts: HTTPOptions{URL: plain.URL + "/post"},
			want: expect{msg: "http GET " + plain.URL + "/post: status 405, want 2xx"}},
		{name: "host header", opts: HTTPOptions{URL: plain.URL + "/vhost", Host: "svc.example:8123"}},
		{name: "without host header", opts: HTTPOptions{URL: plain.URL + "/vhost"},
			want: expect{msg: "http GET " + plain.URL + "/vhost: status 404, want 2xx"}},
		{name: "credentials are not shown", opts: HTTPOptions{URL: "http://user:secret@" + plain.Listener.Addr().String() + "/down"},
			want: expect{msg: "http GET http://user:xxxxx@" + plain.Listener.Addr().String() + "/down: status 503, want 2xx"}},
		{name: "nothing listening", opts: HTTPOptions{URL: nothing + "/ok"},
			want: expect{msg: "http GET " + nothing + "/ok: connection refused"}},
		{name: "slow server", opts: HTTPOptions{URL: plain.URL + "/slow"}, timeout: 200 * time.Millisecond,
			want: expect{msg: "http GET " + plain.URL + "/slow: timed out"}},
		{name: "TLS skip verify", opts: HTTPOptions{URL: secure.URL + "/ok", InsecureSkipVerify: true}},
		{name: "TLS verify fails", opts: HTTPOptions{URL: secure.URL + "/ok"},
			want: expect{contains: "http GET " + secure.URL + "/ok: tls: failed to verify certificate"}},
		{name: "TLS with CA file", opts: HTTPOptions{URL: secure.URL + "/ok", CAFile: ca, ExpectBody: "healthy"}},
		{name: "TLS with CA file and host header", opts: HTTPOptions{URL: secure.URL + "/vhost", CAFile: ca, Host: "svc.example:8123"},
			want: expect{contains: "x509: certificate is valid for"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewHTTP(tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer Close(p)
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 5 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			start := time.Now()
			err = p.Probe(ctx)
			if elapsed := time.Since(start); elapsed > timeout+time.Second {
				t.Errorf("probe took %v with a %v timeout", elapsed, timeout)
			}
			tt.want.check(t, err)
		})
	}
}

func TestNewHTTPInvalid(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty.pem")
	if err := os.WriteFile(empty, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts HTTPOptions
	}{
		{name: "no URL", opts: HTTPOptions{}},
		{name: "unparsable URL", opts: HTTPOptions{URL: "http://[::1"}},
		{name: "wrong scheme", opts: HTTPOptions{URL: "ftp://127.0.0.1/"}},
		{name: "no host", opts: HTTPOptions{URL: "http:///health"}},
		{name: "bad status", opts: HTTPOptions{URL: "http://127.0.0.1/", ExpectStatus: 2000}},
		{name: "bad method", opts: HTTPOptions{URL: "http://127.0.0.1/", Method: "GET /"}},
		{name: "TLS options on http", opts: HTTPOptions{URL: "http://127.0.0.1/", InsecureSkipVerify: true}},
		{name: "missing CA file", opts: HTTPOptions{URL: "https://127.0.0.1/", CAFile: filepath.Join(t.TempDir(), "none.pem")}},
		{name: "CA file without certificates", opts: HTTPOptions{URL: "https://127.0.0.1/", CAFile: empty}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if p, err := NewHTTP(tt.opts); err == nil {
				t.Errorf("NewHTTP(%+v) = %v, want error", tt.opts, p)
			}
		})
	}
}
