// Package envoybootstrap renders the Envoy bootstrap of Deephaven's Envoy
// guide with every coordinator as an xDS endpoint: for `dhctl envoy
// bootstrap` and for the agent that runs the Envoy container.
package envoybootstrap

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"gopkg.in/yaml.v3"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
)

// Names the coordinators' xDS resources rely on: the cluster that reaches
// the xDS server, and the route configuration the listener asks RDS for
// (both as in Deephaven's Envoy guide).
const (
	XDSClusterName  = "xds_service"
	RouteConfigName = "rds_config"
)

// Options shape the Envoy bootstrap Render writes. Paths
// are as Envoy sees them (inside its container).
type Options struct {
	// NodeID is Envoy's node id; default: this host's name.
	NodeID string
	// NodeCluster is Envoy's node cluster; default "deephaven".
	NodeCluster string
	// Admin is the admin interface's host:port; default 127.0.0.1:8001.
	Admin string
	// Listen is the listener's host:port; default 0.0.0.0:8000.
	Listen string
	// Coordinators are every coordinator's xDS address (its
	// envoy.xds.advertise, host:port); at least one. Each is an endpoint of
	// the xds_service cluster, so Envoy fails over between them.
	Coordinators []string
	// Plaintext speaks xDS without TLS, to coordinators with
	// envoy.xds.plaintext; otherwise XDSTLS is required.
	Plaintext bool
	// XDSTLS: the cluster CA and an agent certificate and key, for mutual
	// TLS with the coordinators (whose certificates are checked for the
	// name coordinator.dhvisor).
	XDSTLS tlsutil.Files
	// ServerCert and ServerKey are the certificate chain and key Envoy
	// presents to clients: Deephaven's guide terminates TLS at Envoy.
	// Required unless ListenerPlaintext.
	ServerCert, ServerKey string
	// ListenerPlaintext serves the listener without TLS (for a load
	// balancer in front that terminates it, or a test).
	ListenerPlaintext bool
}

// Render returns the YAML Envoy bootstrap of Deephaven's Envoy
// guide for opts: CDS and RDS (route configuration rds_config) each over
// their own gRPC stream to the xds_service cluster, with
// initial_fetch_timeout 0s so Envoy starts serving without waiting for a
// coordinator; a static listener with websocket upgrades; the admin
// interface. It is built as an Envoy v3 Bootstrap message that passes
// ValidateAll, so the YAML is a valid bootstrap by construction.
func Render(opts Options) ([]byte, error) {
	b, err := buildBootstrap(opts)
	if err != nil {
		return nil, err
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("envoy bootstrap: %w", err)
	}
	return protoYAML(b, "Envoy bootstrap rendered by dhvisor: CDS and RDS from the coordinators' xDS servers.")
}

func buildBootstrap(o Options) (*bootstrapv3.Bootstrap, error) {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	if o.NodeID == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("envoy node id: no host name (%v); give one", err)
		}
		o.NodeID = h
	}
	def(&o.NodeCluster, "deephaven")
	def(&o.Admin, "127.0.0.1:8001")
	def(&o.Listen, "0.0.0.0:8000")
	var errs []error
	addr := func(what, hp string) *corev3.Address {
		a, err := socketAddress(hp)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", what, err))
		}
		return a
	}
	admin := addr("admin address", o.Admin)
	listen := addr("listen address", o.Listen)
	if len(o.Coordinators) == 0 {
		errs = append(errs, errors.New("no coordinator xDS address: Envoy needs at least one"))
	}
	var endpoints []*endpointv3.LbEndpoint
	for _, c := range o.Coordinators {
		endpoints = append(endpoints, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
			Endpoint: &endpointv3.Endpoint{Address: addr("coordinator", c)},
		}})
	}
	if !o.Plaintext && (o.XDSTLS.CA == "" || o.XDSTLS.Cert == "" || o.XDSTLS.Key == "") {
		errs = append(errs, errors.New("xDS over mutual TLS needs the CA, an agent certificate and its key (or plaintext, for coordinators with envoy.xds.plaintext)"))
	}
	if !o.ListenerPlaintext && (o.ServerCert == "" || o.ServerKey == "") {
		errs = append(errs, errors.New("the listener's TLS needs the certificate and key clients see (or a plaintext listener)"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	hcm := &hcmv3.HttpConnectionManager{
		CodecType:      hcmv3.HttpConnectionManager_AUTO,
		StatPrefix:     "ingress_http",
		UpgradeConfigs: []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: RouteConfigName,
			ConfigSource:    xdsConfigSource(),
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
		}},
	}
	chain := &listenerv3.FilterChain{Filters: []*listenerv3.Filter{{
		Name:       "envoy.filters.network.http_connection_manager",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
	}}}
	if !o.ListenerPlaintext {
		chain.TransportSocket = tlsSocket(&tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
			// h2 for gRPC clients, http/1.1 for browsers and websockets.
			AlpnProtocols:   []string{"h2", "http/1.1"},
			TlsCertificates: []*tlsv3.TlsCertificate{{CertificateChain: file(o.ServerCert), PrivateKey: file(o.ServerKey)}},
		}})
	}
	xds := &clusterv3.Cluster{
		Name:                 XDSClusterName,
		ConnectTimeout:       durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		// xDS is gRPC: HTTP/2 to the coordinators.
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(&httpv3.HttpProtocolOptions{
				UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
				}},
			}),
		},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: XDSClusterName,
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: endpoints}},
		},
	}
	if !o.Plaintext {
		server := tlsutil.ServerName(tlsutil.RoleCoordinator)
		xds.TransportSocket = tlsSocket(&tlsv3.UpstreamTlsContext{
			Sni: server,
			CommonTlsContext: &tlsv3.CommonTlsContext{
				// grpc-go servers refuse TLS without ALPN h2.
				AlpnProtocols:   []string{"h2"},
				TlsCertificates: []*tlsv3.TlsCertificate{{CertificateChain: file(o.XDSTLS.Cert), PrivateKey: file(o.XDSTLS.Key)}},
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					TrustedCa: file(o.XDSTLS.CA),
					MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
						SanType: tlsv3.SubjectAltNameMatcher_DNS,
						Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: server}},
					}},
				}},
			},
		})
	}
	return &bootstrapv3.Bootstrap{
		Node:  &corev3.Node{Id: o.NodeID, Cluster: o.NodeCluster},
		Admin: &bootstrapv3.Admin{Address: admin},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			CdsConfig: xdsConfigSource(),
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Listeners: []*listenerv3.Listener{{
				Name:         "listener_0",
				Address:      listen,
				FilterChains: []*listenerv3.FilterChain{chain},
			}},
			Clusters: []*clusterv3.Cluster{xds},
		},
	}, nil
}

// xdsConfigSource is the gRPC stream to xds_service that CDS and RDS each
// use. initial_fetch_timeout 0s: Envoy does not hold its start waiting for
// the first answer, so it serves (and retries the coordinators) at once.
func xdsConfigSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:  corev3.ApiVersion_V3,
		InitialFetchTimeout: durationpb.New(0),
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType:             corev3.ApiConfigSource_GRPC,
			TransportApiVersion: corev3.ApiVersion_V3,
			GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSClusterName},
			}}},
			SetNodeOnFirstMessageOnly: true,
		}},
	}
}

func socketAddress(hp string) (*corev3.Address, error) {
	host, p, err := net.SplitHostPort(hp)
	if err != nil {
		return nil, fmt.Errorf("%q is not host:port", hp)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 || host == "" {
		return nil, fmt.Errorf("%q needs a host and a port 1-65535", hp)
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}, nil
}

// explicitCodec writes the HTTP connection manager's codec_type: AUTO,
// which protojson leaves out as the default, because Deephaven's guide
// spells it out and readers compare the two.
func explicitCodec(n *yaml.Node) {
	if n.Kind == yaml.MappingNode && len(n.Content) >= 2 && n.Content[0].Value == "@type" && strings.HasSuffix(n.Content[1].Value, ".HttpConnectionManager") {
		has := false
		for i := 0; i+1 < len(n.Content); i += 2 {
			has = has || n.Content[i].Value == "codec_type"
		}
		if !has {
			kv := []*yaml.Node{{Kind: yaml.ScalarNode, Value: "codec_type"}, {Kind: yaml.ScalarNode, Value: hcmv3.HttpConnectionManager_AUTO.String()}}
			n.Content = append(n.Content[:2], append(kv, n.Content[2:]...)...)
		}
	}
	for _, c := range n.Content {
		explicitCodec(c)
	}
}

func file(path string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: path}}
}

func tlsSocket(ctx proto.Message) *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name:       "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)},
	}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err) // only for a message that cannot be marshalled, a bug here
	}
	return a
}

// protoYAML writes m as Envoy's YAML: protojson with the proto field names
// (as Envoy's documentation spells them), in block style.
func protoYAML(m proto.Message, comment string) ([]byte, error) {
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(js, &doc); err != nil {
		return nil, err
	}
	var block func(*yaml.Node)
	block = func(n *yaml.Node) {
		// JSON is YAML's flow style with every string quoted; let the
		// encoder pick block style and quote only what needs it.
		n.Style &^= yaml.FlowStyle | yaml.DoubleQuotedStyle
		for _, c := range n.Content {
			block(c)
		}
	}
	block(&doc)
	explicitCodec(&doc)
	doc.HeadComment = strings.TrimSpace(comment)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
