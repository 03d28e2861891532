package extraroutes

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/properties"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func write(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// ReadFiles sends what Deephaven's parser reads: the file and its
// includes, the file first; Evaluate then needs nothing else, and scopes
// decide which routes there are on which host.
func TestReadFilesAndEvaluate(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "base.prop", "envoy.xds.extra.routes.grafana.host=grafana.example.com\n")
	main := write(t, dir, "routes.prop", `includefiles = base.prop
envoy.xds.extra.routes.grafana.prefix=/grafana
envoy.xds.extra.routes.grafana.exact=true
[service.name=configuration_server, host=infra-1] {
  envoy.xds.extra.routes.kibana.host=kibana
  envoy.xds.extra.routes.kibana.prefix=/kibana
}
[service.name=web_api_service] {
  envoy.xds.extra.routes.web.host=web
  envoy.xds.extra.routes.web.prefix=/web
}
`)
	files, err := ReadFiles(main, properties.OpenFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || files[0].Name != main || files[1].Name != filepath.Join(dir, "base.prop") {
		t.Fatalf("files %v", names(files))
	}
	for _, tc := range []struct {
		hosts []string
		want  string
	}{
		// exact is exactPrefix; the configuration server's scope holds
		// on infra-1 only; web_api_service's never does.
		{[]string{"infra-1", "10.0.0.1"}, "grafana grafana.example.com:443 /grafana exact; kibana kibana:443 /kibana"},
		{[]string{"query-1"}, "grafana grafana.example.com:443 /grafana exact"},
	} {
		routes, err := Evaluate(files, tc.hosts)
		if err != nil {
			t.Fatal(err)
		}
		if got := describe(routes); got != tc.want {
			t.Errorf("on %v: %s, want %s", tc.hosts, got, tc.want)
		}
	}

	// An include that was not sent is not read from anywhere else.
	if _, err := Evaluate(files[:1], nil); err == nil || !strings.Contains(err.Error(), main+":1:") || !strings.Contains(err.Error(), "was not loaded with") {
		t.Errorf("without its include: %v", err)
	}
}

func names(files []*pb.PropertiesFile) []string {
	var out []string
	for _, f := range files {
		out = append(out, f.Name)
	}
	return out
}

func describe(routes []config.ExtraRoute) string {
	var out []string
	for _, r := range routes {
		s := fmt.Sprintf("%s %s:%d %s", r.Name, r.Host, r.Port, r.Prefix)
		if r.ExactPrefix {
			s += " exact"
		}
		out = append(out, s)
	}
	return strings.Join(out, "; ")
}

// Every refusal names the file and line, and refuses the whole set.
func TestRefused(t *testing.T) {
	one := func(name, text string) []*pb.PropertiesFile {
		return []*pb.PropertiesFile{{Name: name, Content: []byte(text)}}
	}
	big := make([]*pb.PropertiesFile, MaxFiles+1)
	for i := range big {
		big[i] = &pb.PropertiesFile{Name: fmt.Sprintf("f%d.prop", i)}
	}
	for _, tc := range []struct {
		name  string
		files []*pb.PropertiesFile
		want  string
	}{
		{"a line of only a backslash", one("r.prop", "envoy.xds.extra.routes.a.host=h\n\\\n"), "r.prop:2:1: the line ends in a continuation"},
		{"reserved", one("r.prop", "envoy.xds.extra.routes.a.host=h\nenvoy.xds.extra.routes.a.prefix=/worker/x\n"), `r.prop:2: envoy.xds.extra.routes.a.prefix: "/worker/x" is under /worker/`},
		{"one good one bad", one("r.prop", "envoy.xds.extra.routes.a.host=h\nenvoy.xds.extra.routes.a.prefix=/a\nenvoy.xds.extra.routes.b.host=h\n"), "r.prop:3: envoy.xds.extra.routes.b.prefix: missing"},
		{"a final assigned again", one("r.prop", "final envoy.xds.extra.routes.a.host=h\nenvoy.xds.extra.routes.a.host=g\n"), "r.prop:2:1: \"envoy.xds.extra.routes.a.host\" is final (made final at r.prop:1:7)"},
		{"too many files", big, "at most 64"},
		{"too large", one("r.prop", strings.Repeat("#", MaxBytes+1)), "at most 1048576"},
		{"a name twice", append(one("r.prop", ""), one("r.prop", "")...), "sent twice"},
		{"nothing", nil, "no file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			routes, err := Evaluate(tc.files, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, %v; want an error with %q", routes, err, tc.want)
			}
		})
	}
}

// Elsewhere names the coordinators on whose hosts the file would give
// other routes, or would be refused.
func TestElsewhere(t *testing.T) {
	files := []*pb.PropertiesFile{{Name: "r.prop", Content: []byte(`envoy.xds.extra.routes.g.host=g
envoy.xds.extra.routes.g.prefix=/g
[host=infra-2] {
  envoy.xds.extra.routes.k.host=k
  envoy.xds.extra.routes.k.prefix=/k
}
[host=infra-3] {
  envoy.xds.extra.routes.g.prefix=/iris
}
`)}}
	served, err := Evaluate(files, []string{"infra-1"})
	if err != nil {
		t.Fatal(err)
	}
	got := Elsewhere(files, ToProto(served), map[string][]string{
		"c1b": {"infra-1", "10.0.0.1"}, // the same host's names: the same routes
		"c2":  {"infra-2", "10.0.0.2"},
		"c3":  {"infra-3"},
	})
	want := []string{
		"on c2 (known here as infra-2, 10.0.0.2) the file gives other routes: k only there",
		`on c3 (known here as infra-3) the file would be refused: r.prop:8: envoy.xds.extra.routes.g.prefix: "/iris" is reserved by Deephaven`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("got %q\nwant %q", got[i], want[i])
		}
	}
}
