// Package extraroutes carries Deephaven's envoy.xds.extra.routes.<name>.*
// properties into raft: the files as an operator loads them (the one named
// and every file its includefiles read), their evaluation as
// configuration_server on one host, and the checks a replica applies to a
// set of routes it receives in the raft log.
//
// The leader evaluates, once, and the log carries the routes with the text
// they came from: every replica then serves the routes the leader's
// evaluation gave, whatever its own host, and a replica of another release
// never evaluates the same text differently.
package extraroutes

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/properties"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// Bounds on a load: the files go into the raft log and every snapshot.
const (
	MaxFiles = 64
	MaxBytes = 1 << 20 // all files together
	// MaxRoutes bounds what Envoy gets from one load.
	MaxRoutes = 1000
)

// ReadFiles reads the properties file name through open, and every file
// its includefiles read, as Deephaven's parser does. The files come back
// in the order they were read, name first. A file that does not parse is
// refused with every problem at its file:line.
func ReadFiles(name string, open properties.Opener) ([]*pb.PropertiesFile, error) {
	name = filepath.Clean(name)
	data, resolved, err := open(name)
	if err != nil {
		return nil, err
	}
	files := []*pb.PropertiesFile{{Name: resolved, Content: data}}
	record := func(n string) ([]byte, string, error) {
		data, resolved, err := open(n)
		if err == nil {
			files = append(files, &pb.PropertiesFile{Name: resolved, Content: data})
		}
		return data, resolved, err
	}
	if _, err := properties.Parse(resolved, data, record); err != nil {
		return nil, err
	}
	if err := checkFiles(files); err != nil {
		return nil, err
	}
	return files, nil
}

// checkFiles enforces the bounds, and that every file is named once.
func checkFiles(files []*pb.PropertiesFile) error {
	if len(files) == 0 {
		return fmt.Errorf("no file to load")
	}
	if len(files) > MaxFiles {
		return fmt.Errorf("%s and its includefiles are %d files; at most %d can be loaded", files[0].Name, len(files), MaxFiles)
	}
	size := 0
	seen := map[string]bool{}
	for _, f := range files {
		if f.Name == "" {
			return fmt.Errorf("a file without a name")
		}
		if seen[f.Name] {
			return fmt.Errorf("%s: sent twice", f.Name)
		}
		seen[f.Name] = true
		size += len(f.Content)
	}
	if size > MaxBytes {
		return fmt.Errorf("%s and its includefiles are %d bytes; at most %d can be loaded", files[0].Name, size, MaxBytes)
	}
	return nil
}

// Evaluate reads the routes of files (the first one named, the others its
// includes, as ReadFiles returns them) as configuration_server sees them
// on a host with these names. Nothing outside files is read: an include
// that is not among them is an error at the line that includes it.
func Evaluate(files []*pb.PropertiesFile, hosts []string) ([]config.ExtraRoute, error) {
	if err := checkFiles(files); err != nil {
		return nil, err
	}
	byName := make(map[string][]byte, len(files))
	for _, f := range files {
		byName[f.Name] = f.Content
	}
	open := func(name string) ([]byte, string, error) {
		data, ok := byName[name]
		if !ok {
			return nil, name, fmt.Errorf("%s was not loaded with %s", name, files[0].Name)
		}
		return data, name, nil
	}
	routes, err := config.ParseExtraRoutes(files[0].Name, files[0].Content, open, config.ExtraRoutesScope(hosts))
	if err != nil {
		return nil, err
	}
	if len(routes) > MaxRoutes {
		return nil, fmt.Errorf("%s: %d extra routes; at most %d", files[0].Name, len(routes), MaxRoutes)
	}
	return routes, nil
}

// Sum is the files' fingerprint: names and contents, in order.
func Sum(files []*pb.PropertiesFile) string {
	h := sha256.New()
	var n [8]byte
	for _, f := range files {
		for _, b := range [][]byte{[]byte(f.Name), f.Content} {
			binary.BigEndian.PutUint64(n[:], uint64(len(b)))
			h.Write(n[:])
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Check is what a replica asks of a set before it stores it: within the
// bounds, the fingerprint that of its files, and routes that pass the
// rules of Deephaven's properties.
func Check(doc *pb.ExtraRoutes) error {
	if len(doc.Files) > 0 {
		if err := checkFiles(doc.Files); err != nil {
			return err
		}
	}
	if sum := Sum(doc.Files); doc.Sha256 != sum {
		return fmt.Errorf("sha256 %q is not that of the files (%s)", doc.Sha256, sum)
	}
	if len(doc.Routes) > MaxRoutes {
		return fmt.Errorf("%d routes; at most %d", len(doc.Routes), MaxRoutes)
	}
	routes := FromProto(doc.Routes)
	if !slices.IsSortedFunc(routes, func(a, b config.ExtraRoute) int { return strings.Compare(a.Name, b.Name) }) {
		return fmt.Errorf("routes not sorted by name")
	}
	return config.CheckExtraRoutes(routes)
}

// ToProto is routes as the raft log carries them.
func ToProto(routes []config.ExtraRoute) []*pb.ExtraRoute {
	out := make([]*pb.ExtraRoute, len(routes))
	for i, r := range routes {
		out[i] = &pb.ExtraRoute{Name: r.Name, Host: r.Host, Port: int32(r.Port), Prefix: r.Prefix, PrefixRewrite: r.PrefixRewrite, Tls: r.TLS, ExactPrefix: r.ExactPrefix, Origin: r.Origin}
	}
	return out
}

// FromProto is routes as the xDS server takes them.
func FromProto(routes []*pb.ExtraRoute) []config.ExtraRoute {
	out := make([]config.ExtraRoute, len(routes))
	for i, r := range routes {
		out[i] = config.ExtraRoute{Name: r.Name, Host: r.Host, Port: int(r.Port), Prefix: r.Prefix, PrefixRewrite: r.PrefixRewrite, TLS: r.Tls, ExactPrefix: r.ExactPrefix, Origin: r.Origin}
	}
	return out
}

// Names lists the routes' names, for messages.
func Names(routes []*pb.ExtraRoute) string {
	if len(routes) == 0 {
		return "none"
	}
	names := make([]string, len(routes))
	for i, r := range routes {
		names[i] = r.Name
	}
	return strings.Join(names, ", ")
}

// New evaluates files (none: only inYAML) as configuration_server on the
// host called evaluatedOn, with these names, and returns the set to
// commit. inYAML are routes written in coordinator.yaml, merged with the
// files' by config.MergeExtraRoutes.
func New(source string, files []*pb.PropertiesFile, evaluatedOn string, hosts []string, inYAML []config.ExtraRoute) (*pb.ExtraRoutes, error) {
	var fromFiles []config.ExtraRoute
	if len(files) > 0 {
		var err error
		if fromFiles, err = Evaluate(files, hosts); err != nil {
			return nil, err
		}
	}
	routes, err := config.MergeExtraRoutes(inYAML, fromFiles)
	if err != nil {
		return nil, err
	}
	if len(routes) > MaxRoutes {
		return nil, fmt.Errorf("%d extra routes; at most %d", len(routes), MaxRoutes)
	}
	return &pb.ExtraRoutes{
		Source: source, Files: files, EvaluatedOn: evaluatedOn, Hosts: hosts,
		Routes: ToProto(routes), Sha256: Sum(files),
	}, nil
}

// Elsewhere says on which of these other hosts (name → its names) files
// would give routes other than served: the routes are evaluated once, on
// the leader, and a file whose [host=...] scopes pick other routes on
// another coordinator's host is worth a warning. Sorted by host.
func Elsewhere(files []*pb.PropertiesFile, served []*pb.ExtraRoute, hosts map[string][]string) []string {
	var out []string
	for _, host := range slices.Sorted(maps.Keys(hosts)) {
		names := hosts[host]
		at := fmt.Sprintf("on %s (known here as %s)", host, strings.Join(names, ", "))
		routes, err := Evaluate(files, names)
		if err != nil {
			first, _, _ := strings.Cut(err.Error(), "\n")
			out = append(out, fmt.Sprintf("%s the file would be refused: %s", at, first))
			continue
		}
		if d := diff(served, ToProto(routes)); d != "" {
			out = append(out, fmt.Sprintf("%s the file gives other routes: %s", at, d))
		}
	}
	return out
}

// diff says how the routes there differ from those here, or "".
func diff(here, there []*pb.ExtraRoute) string {
	byName := func(rs []*pb.ExtraRoute) map[string]*pb.ExtraRoute {
		m := make(map[string]*pb.ExtraRoute, len(rs))
		for _, r := range rs {
			m[r.Name] = r
		}
		return m
	}
	h, th := byName(here), byName(there)
	var changed, onlyThere, onlyHere []string
	for _, name := range slices.Sorted(maps.Keys(th)) {
		if r, ok := h[name]; !ok {
			onlyThere = append(onlyThere, name)
		} else if !sameServed(r, th[name]) {
			changed = append(changed, name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(h)) {
		if _, ok := th[name]; !ok {
			onlyHere = append(onlyHere, name)
		}
	}
	var parts []string
	for _, p := range []struct {
		what  string
		names []string
	}{{"differs", changed}, {"only there", onlyThere}, {"only here", onlyHere}} {
		if len(p.names) > 0 {
			parts = append(parts, strings.Join(p.names, ", ")+" "+p.what)
		}
	}
	return strings.Join(parts, "; ")
}

// sameServed: Envoy would get the same route (where it was written aside).
func sameServed(a, b *pb.ExtraRoute) bool {
	a, b = proto.Clone(a).(*pb.ExtraRoute), proto.Clone(b).(*pb.ExtraRoute)
	a.Origin, b.Origin = "", ""
	return proto.Equal(a, b)
}
