package check

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// HTTPOptions configures an HTTP(S) probe.
type HTTPOptions struct {
	URL string
	// Method defaults to GET.
	Method string
	// ExpectStatus is the required status code; 0 accepts any 2xx.
	// Redirects are not followed, so a 3xx is reported as such instead of
	// silently probing wherever it points (often a login page).
	ExpectStatus int
	// ExpectBody, if set, must occur in the first 64 KiB of the body.
	ExpectBody string
	// Host overrides the Host header, and with it the TLS server name, for
	// services addressed by IP but virtual-hosted by name.
	Host string
	// InsecureSkipVerify and CAFile apply to https URLs only.
	InsecureSkipVerify bool
	CAFile             string
}

// maxBodyScan bounds how much of a response is read for ExpectBody, so a
// misbehaving endpoint streaming data cannot hold the probe.
const maxBodyScan = 64 << 10

type httpProbe struct {
	opts   HTTPOptions
	target string // "http GET <url>" prefix for failure messages
	client *http.Client
}

// NewHTTP returns a probe that performs one request and checks its status
// and, optionally, body.
//
// Every probe opens a new connection: keep-alives are disabled so that the
// probe tests what a new client would experience and never leaves idle
// connections (and their goroutines) behind. Proxy settings from the
// environment are ignored because health checks target the local service.
func NewHTTP(opts HTTPOptions) (Probe, error) {
	u, err := url.Parse(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("http probe: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("http probe: URL %q: want http:// or https:// with a host", opts.URL)
	}
	if opts.Method == "" {
		opts.Method = http.MethodGet
	}
	if opts.ExpectStatus != 0 && (opts.ExpectStatus < 100 || opts.ExpectStatus > 599) {
		return nil, fmt.Errorf("http probe: ExpectStatus %d out of range", opts.ExpectStatus)
	}
	tr := &http.Transport{
		Proxy:             nil,
		DialContext:       (&net.Dialer{}).DialContext,
		DisableKeepAlives: true,
	}
	if u.Scheme == "https" {
		tr.TLSClientConfig, err = tlsConfig(opts.InsecureSkipVerify, opts.CAFile, hostname(opts.Host))
		if err != nil {
			return nil, fmt.Errorf("http probe: %w", err)
		}
	} else if opts.InsecureSkipVerify || opts.CAFile != "" {
		return nil, fmt.Errorf("http probe: TLS options given for non-https URL %q", opts.URL)
	}
	// Reject a bad method now rather than on every probe.
	if _, err := http.NewRequest(opts.Method, opts.URL, nil); err != nil {
		return nil, fmt.Errorf("http probe: %w", err)
	}
	return &httpProbe{
		opts:   opts,
		target: "http " + opts.Method + " " + u.Redacted(),
		client: &http.Client{
			Transport: tr,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}, nil
}

// hostname strips an optional port from a Host header value.
func hostname(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

func (p *httpProbe) Probe(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, p.opts.Method, p.opts.URL, nil)
	if err != nil {
		return fail(p.target, err)
	}
	req.Host = p.opts.Host
	// Lets service logs tell probes from real clients.
	req.Header.Set("User-Agent", "dhvisor-check")
	resp, err := p.client.Do(req)
	if err != nil {
		return fail(p.target, err)
	}
	defer resp.Body.Close()

	if want := p.opts.ExpectStatus; want != 0 && resp.StatusCode != want {
		return p.failf("status %d, want %d", resp.StatusCode, want)
	}
	if p.opts.ExpectStatus == 0 && (resp.StatusCode < 200 || resp.StatusCode > 299) {
		return p.failf("status %d, want 2xx", resp.StatusCode)
	}
	if p.opts.ExpectBody == "" {
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyScan))
	if err != nil {
		return fail(p.target+": reading body", err)
	}
	if !strings.Contains(string(body), p.opts.ExpectBody) {
		return p.failf("body does not contain %q", p.opts.ExpectBody)
	}
	return nil
}

func (p *httpProbe) failf(format string, args ...any) error {
	return fail(p.target, fmt.Errorf(format, args...))
}
