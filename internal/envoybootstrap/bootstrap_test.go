package envoybootstrap

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
)

// parseBootstrap reads rendered YAML back as Envoy would: YAML to JSON to
// the v3 Bootstrap, unknown fields refused, then proto validation.
func parseBootstrap(t *testing.T, out []byte) *bootstrapv3.Bootstrap {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(out, &v); err != nil {
		t.Fatalf("rendered YAML does not parse: %v\n%s", err, out)
	}
	js, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, &b); err != nil {
		t.Fatalf("not a v3 Bootstrap: %v\n%s", err, out)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("Bootstrap.ValidateAll: %v\n%s", err, out)
	}
	return &b
}

func TestRenderBootstrap(t *testing.T) {
	coords := []string{"infra1.example.com:8127", "10.0.0.6:8127", "infra3:9124"}
	opts := Options{
		NodeID:       "envoy-infra1",
		Coordinators: coords,
		XDSTLS:       tlsutil.Files{CA: "/etc/envoy/tls/ca.pem", Cert: "/etc/envoy/tls/agent-n1.pem", Key: "/etc/envoy/tls/agent-n1-key.pem"},
		ServerCert:   "/etc/envoy/tls/server.pem",
		ServerKey:    "/etc/envoy/tls/server-key.pem",
	}
	out, err := Render(opts)
	if err != nil {
		t.Fatal(err)
	}
	b := parseBootstrap(t, out)

	if b.Node.GetId() != "envoy-infra1" || b.Node.GetCluster() != "deephaven" {
		t.Errorf("node %v", b.Node)
	}
	if a := b.Admin.GetAddress().GetSocketAddress(); a.GetAddress() != "127.0.0.1" || a.GetPortValue() != 8001 {
		t.Errorf("admin %v", a)
	}

	checkSource := func(what string, cs *corev3.ConfigSource) {
		t.Helper()
		if cs.GetInitialFetchTimeout() == nil || cs.GetInitialFetchTimeout().AsDuration() != 0 {
			t.Errorf("%s: initial_fetch_timeout %v, want 0s", what, cs.GetInitialFetchTimeout())
		}
		api := cs.GetApiConfigSource()
		if api.GetApiType() != corev3.ApiConfigSource_GRPC || api.GetTransportApiVersion() != corev3.ApiVersion_V3 || cs.GetResourceApiVersion() != corev3.ApiVersion_V3 || !api.GetSetNodeOnFirstMessageOnly() {
			t.Errorf("%s: %v", what, cs)
		}
		if gs := api.GetGrpcServices(); len(gs) != 1 || gs[0].GetEnvoyGrpc().GetClusterName() != "xds_service" {
			t.Errorf("%s: grpc services %v", what, gs)
		}
	}
	if !strings.Contains(string(out), "initial_fetch_timeout: 0s") {
		t.Errorf("no literal initial_fetch_timeout: 0s in\n%s", out)
	}
	checkSource("cds_config", b.DynamicResources.GetCdsConfig())

	if n := len(b.StaticResources.GetListeners()); n != 1 {
		t.Fatalf("%d listeners", n)
	}
	l := b.StaticResources.Listeners[0]
	if a := l.GetAddress().GetSocketAddress(); a.GetAddress() != "0.0.0.0" || a.GetPortValue() != 8000 {
		t.Errorf("listener %v", a)
	}
	fc := l.FilterChains[0]
	var hcm hcmv3.HttpConnectionManager
	if err := fc.Filters[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	if err := hcm.ValidateAll(); err != nil {
		t.Errorf("HttpConnectionManager.ValidateAll: %v", err)
	}
	if hcm.CodecType != hcmv3.HttpConnectionManager_AUTO || !strings.Contains(string(out), "codec_type: AUTO") || hcm.StatPrefix == "" {
		t.Errorf("hcm codec %v, stat prefix %q", hcm.CodecType, hcm.StatPrefix)
	}
	if u := hcm.GetUpgradeConfigs(); len(u) != 1 || u[0].UpgradeType != "websocket" {
		t.Errorf("upgrade configs %v", u)
	}
	if hcm.GetRds().GetRouteConfigName() != "rds_config" {
		t.Errorf("rds %v", hcm.GetRds())
	}
	checkSource("rds", hcm.GetRds().GetConfigSource())
	if f := hcm.GetHttpFilters(); len(f) != 1 || f[0].Name != "envoy.filters.http.router" {
		t.Errorf("http filters %v", f)
	}
	var down tlsv3.DownstreamTlsContext
	if err := fc.GetTransportSocket().GetTypedConfig().UnmarshalTo(&down); err != nil {
		t.Fatalf("listener TLS: %v", err)
	}
	if c := down.CommonTlsContext.TlsCertificates[0]; c.CertificateChain.GetFilename() != opts.ServerCert || c.PrivateKey.GetFilename() != opts.ServerKey {
		t.Errorf("listener certificate %v", c)
	}

	if n := len(b.StaticResources.GetClusters()); n != 1 {
		t.Fatalf("%d clusters", n)
	}
	c := b.StaticResources.Clusters[0]
	if c.Name != "xds_service" || c.GetType() != clusterv3.Cluster_STRICT_DNS {
		t.Errorf("cluster %s type %v", c.Name, c.GetType())
	}
	var got []string
	for _, le := range c.LoadAssignment.Endpoints {
		for _, e := range le.LbEndpoints {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			got = append(got, sa.GetAddress()+":"+strconv.Itoa(int(sa.GetPortValue())))
		}
	}
	if strings.Join(got, ",") != strings.Join(coords, ",") {
		t.Errorf("xds_service endpoints %v, want every coordinator %v", got, coords)
	}
	var hpo httpv3.HttpProtocolOptions
	if err := c.TypedExtensionProtocolOptions["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(&hpo); err != nil || hpo.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Errorf("xds_service is not HTTP/2: %v %v", &hpo, err)
	}
	var up tlsv3.UpstreamTlsContext
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&up); err != nil {
		t.Fatalf("xds_service TLS: %v", err)
	}
	ctx := up.CommonTlsContext
	if ctx.GetValidationContext().GetTrustedCa().GetFilename() != opts.XDSTLS.CA ||
		ctx.TlsCertificates[0].CertificateChain.GetFilename() != opts.XDSTLS.Cert || ctx.TlsCertificates[0].PrivateKey.GetFilename() != opts.XDSTLS.Key {
		t.Errorf("xds_service TLS files %v", ctx)
	}
	if m := ctx.GetValidationContext().GetMatchTypedSubjectAltNames(); len(m) != 1 || m[0].Matcher.GetExact() != "coordinator.dhvisor" {
		t.Errorf("coordinator name not checked: %v", m)
	}
	if a := ctx.AlpnProtocols; len(a) != 1 || a[0] != "h2" {
		t.Errorf("alpn %v", a)
	}
}

func TestRenderBootstrapPlaintext(t *testing.T) {
	out, err := Render(Options{
		NodeCluster: "site", Admin: "127.0.0.1:9901", Listen: "0.0.0.0:8443",
		Coordinators: []string{"127.0.0.1:8127"}, Plaintext: true, ListenerPlaintext: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	b := parseBootstrap(t, out)
	if c := b.StaticResources.Clusters[0]; c.Name != "xds_service" || c.TransportSocket != nil {
		t.Errorf("plaintext xds_service has a transport socket: %v", c.TransportSocket)
	}
	if ts := b.StaticResources.Listeners[0].FilterChains[0].TransportSocket; ts != nil {
		t.Errorf("plaintext listener has a transport socket: %v", ts)
	}
	if b.Node.GetId() == "" || b.Node.GetCluster() != "site" || b.Admin.Address.GetSocketAddress().GetPortValue() != 9901 || b.StaticResources.Listeners[0].Address.GetSocketAddress().GetPortValue() != 8443 {
		t.Errorf("options not applied:\n%s", out)
	}
	if strings.Contains(string(out), "transport_socket") {
		t.Errorf("transport_socket in the plaintext bootstrap:\n%s", out)
	}
}

func TestRenderBootstrapRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want []string
	}{
		{"nothing", Options{}, []string{"no coordinator", "needs the CA", "certificate and key clients see"}},
		{"bad addresses", Options{Coordinators: []string{"c1"}, Admin: "x:y", Listen: ":8000", Plaintext: true, ListenerPlaintext: true},
			[]string{`coordinator: "c1" is not host:port`, `admin address: "x:y" needs a host and a port`, `listen address: ":8000" needs a host`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(tc.opts)
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}
