package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
	"github.com/dhvisor/dhvisor/test/devcluster"
)

// Extra routes loaded with dhctl are the same in every replica's xDS; a
// refused file changes nothing on any replica; a line of only a backslash
// is refused by dhctl and, sent past it, by the leader, which keeps
// running.
func TestExtraRoutesReplicated(t *testing.T) {
	c := startCluster(t, 3, []devcluster.NodeSpec{{Name: "infra", Roles: []string{"infra"}}}, 0)
	ctx := context.Background()
	dir := t.TempDir()
	write := func(name, text string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("base.prop", "envoy.xds.extra.routes.grafana.host=grafana.example.com\n")
	good := write("routes.prop", `includefiles = base.prop
envoy.xds.extra.routes.grafana.prefix=/grafana
[service.name=configuration_server] {
  envoy.xds.extra.routes.docs.host=docs.internal
  envoy.xds.extra.routes.docs.prefix=/docs/
  envoy.xds.extra.routes.docs.exact=true
  envoy.xds.extra.routes.docs.tls=false
}
[service.name=web_api_service] {
  envoy.xds.extra.routes.web.host=web.internal
  envoy.xds.extra.routes.web.prefix=/web
}
`)
	out, err := c.Ctl(ctx, "routes", "extra", "load", good)
	if err != nil || !strings.Contains(out, "loaded extra routes version 1: 2 routes") {
		t.Fatalf("dhctl routes extra load: %v\n%s", err, out)
	}
	// As Envoy gets them: grafana with and without its trailing /, docs
	// exactly as written; web is in another process's scope.
	want := []string{"path /grafana -> extra_grafana", "prefix /docs/ -> extra_docs", "prefix /grafana/ -> extra_grafana"}
	waitExtraRDS(t, c, want)
	for i := range c.Coords {
		out, err := c.Ctl(ctx, "--coordinator", c.APIAddrs[i], "routes", "extra", "show")
		if err != nil || !strings.Contains(out, "extra routes version 1, loaded by operator:tester") || !strings.Contains(out, "http://docs.internal:80") ||
			!strings.Contains(out, "https://grafana.example.com:443") || !strings.Contains(out, "routes.prop, "+filepath.Join(dir, "base.prop")) {
			t.Errorf("dhctl routes extra show on %s: %v\n%s", c.Coords[i].Name, err, out)
		}
	}

	// Refused, as a whole, with the place and the rule; nothing changes.
	bad := write("bad.prop", "envoy.xds.extra.routes.a.host=a\nenvoy.xds.extra.routes.a.prefix=/a\nenvoy.xds.extra.routes.b.host=b\nenvoy.xds.extra.routes.b.prefix=/iris\n")
	out, err = c.Ctl(ctx, "routes", "extra", "load", bad)
	if err == nil || !strings.Contains(out, bad+`:4: envoy.xds.extra.routes.b.prefix: "/iris" is reserved by Deephaven`) {
		t.Fatalf("a reserved prefix: %v\n%s", err, out)
	}
	backslash := write("backslash.prop", "envoy.xds.extra.routes.a.host=a\n\\\n")
	out, err = c.Ctl(ctx, "routes", "extra", "load", backslash)
	if err == nil || !strings.Contains(out, backslash+":2:1: the line ends in a continuation") {
		t.Fatalf("a line of only a backslash, in dhctl: %v\n%s", err, out)
	}
	// The same file sent to a follower, past dhctl's own check: the leader
	// refuses it and keeps running.
	leader := c.Leader(ctx)
	cl, closeConn, err := c.Client((leader + 1) % 3)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	_, err = cl.LoadExtraRoutes(ctx, &pb.LoadExtraRoutesRequest{Files: []*pb.PropertiesFile{{Name: "backslash.prop", Content: []byte("envoy.xds.extra.routes.a.host=a\n\\\n")}}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "backslash.prop:2:1:") {
		t.Fatalf("a line of only a backslash, sent to the API: %v", err)
	}
	for i, p := range c.Coords {
		if !p.Running() {
			t.Fatalf("coordinator %s is not running after the refused files", p.Name)
		}
		cl, closeConn, err := c.Client(i)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := cl.ExtraRoutes(ctx, &pb.ExtraRoutesRequest{})
		closeConn()
		if err != nil || resp.ExtraRoutes.Version != 1 {
			t.Errorf("%s after the refused files: %v, %v", p.Name, resp, err)
		}
	}
	waitExtraRDS(t, c, want)

	// A second load replaces the routes whole, everywhere; a dry run of it
	// changes nothing.
	next := write("next.prop", "envoy.xds.extra.routes.kibana.host=kibana\nenvoy.xds.extra.routes.kibana.prefix=/kibana\n")
	if out, err := c.Ctl(ctx, "routes", "extra", "load", "--dry-run", next); err != nil || !strings.Contains(out, "would load 1 extra routes (dry run, nothing changed)") || !strings.Contains(out, "https://kibana:443") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	// A file whose scopes pick other routes on another coordinator's host
	// says so: the leader evaluated it on its own.
	other := c.Coords[(leader+1)%3].Name
	scoped := write("scoped.prop", "envoy.xds.extra.routes.kibana.host=kibana\nenvoy.xds.extra.routes.kibana.prefix=/kibana\n[host="+other+"] {\n  envoy.xds.extra.routes.kibana.port=5601\n}\n")
	if out, err := c.Ctl(ctx, "routes", "extra", "load", "--dry-run", scoped); err != nil || !strings.Contains(out, "warning: on "+other+" (known here as "+other+", 127.0.0.1) the file gives other routes: kibana differs") {
		t.Fatalf("dry run of a host-scoped file: %v\n%s", err, out)
	}
	if out, err := c.Ctl(ctx, "routes", "extra", "show"); err != nil || !strings.Contains(out, "version 1,") {
		t.Fatalf("after the dry run: %v\n%s", err, out)
	}
	if out, err := c.Ctl(ctx, "routes", "extra", "load", next); err != nil || !strings.Contains(out, "version 2") {
		t.Fatalf("second load: %v\n%s", err, out)
	}
	waitExtraRDS(t, c, []string{"path /kibana -> extra_kibana", "prefix /kibana/ -> extra_kibana"})
	out, err = c.Ctl(ctx, "audit")
	if err != nil || !strings.Contains(out, "extra routes version 2 from dhctl routes extra load "+next) || !strings.Contains(out, "operator:tester") {
		t.Errorf("dhctl audit: %v\n%s", err, out)
	}
}

// waitExtraRDS waits until every coordinator's xDS serves exactly these
// extra routes (match -> cluster, sorted).
func waitExtraRDS(t *testing.T, c *devcluster.Cluster, want []string) {
	t.Helper()
	for i, addr := range c.XDSAddrs {
		var got []string
		var err error
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if got, err = extraRDS(c, addr); err == nil && slices.Equal(got, want) {
				break
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s serves extra routes %q (%v), want %q", c.Coords[i].Name, got, err, want)
		}
	}
}

// extraRDS asks a coordinator over a raw ADS stream, as an Envoy does, for
// its route configuration and returns the routes to extra_ clusters.
func extraRDS(c *devcluster.Cluster, addr string) ([]string, error) {
	tc, err := tlsutil.ClientConfig(tlsutil.Files{CA: filepath.Join(c.TLS, "ca.pem"), Cert: filepath.Join(c.TLS, "operator-tester.pem"), Key: filepath.Join(c.TLS, "operator-tester-key.pem")}, tlsutil.RoleCoordinator)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	meta, _ := structpb.NewStruct(map[string]any{"dhvisor_xds_flavour": "ads"})
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "e2e-envoy", Metadata: meta}, TypeUrl: resource.RouteType, ResourceNames: []string{"rds_config"}}); err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range resp.Resources {
		var rc route.RouteConfiguration
		if err := a.UnmarshalTo(&rc); err != nil {
			return nil, err
		}
		for _, vh := range rc.VirtualHosts {
			for _, r := range vh.Routes {
				cl := r.GetRoute().GetCluster()
				if !strings.HasPrefix(cl, "extra_") {
					continue
				}
				m := r.GetMatch()
				match := "prefix " + m.GetPrefix()
				if m.GetPath() != "" {
					match = "path " + m.GetPath()
				}
				out = append(out, fmt.Sprintf("%s -> %s", match, cl))
			}
		}
	}
	slices.Sort(out)
	return out, nil
}
