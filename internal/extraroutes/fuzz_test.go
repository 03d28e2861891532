package extraroutes

import (
	"testing"

	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// FuzzEvaluate: no file set panics the leader's evaluation (nor its look
// at other hosts), and whatever it accepts a replica's Check accepts too
// (or every follower would refuse what the leader committed).
func FuzzEvaluate(f *testing.F) {
	f.Add([]byte("envoy.xds.extra.routes.a.host=h\nenvoy.xds.extra.routes.a.prefix=/a\n"), []byte(""), "infra-1")
	f.Add([]byte("includefiles = inc.prop\n[host=infra-1] {\nenvoy.xds.extra.routes.a.prefix=/a/\n}\n"), []byte("envoy.xds.extra.routes.a.host=h\nenvoy.xds.extra.routes.a.exact=true\n"), "infra-1")
	f.Add([]byte("envoy.xds.extra.routes.a.host=h\n\\\n"), []byte(""), "")
	f.Add([]byte("final envoy.xds.extra.routes.a.port=1\nenvoy.xds.extra.routes.a.port=2\n"), []byte(""), "x")
	f.Fuzz(func(t *testing.T, main, inc []byte, host string) {
		files := []*pb.PropertiesFile{{Name: "main.prop", Content: main}, {Name: "inc.prop", Content: inc}}
		doc, err := New("fuzz", files, "c1", []string{host}, nil)
		if err != nil {
			return
		}
		if err := Check(doc); err != nil {
			t.Fatalf("evaluated %q / %q to routes a replica refuses: %v", main, inc, err)
		}
		Elsewhere(files, doc.Routes, map[string][]string{"c2": {host + "-2"}, "c3": nil})
	})
}
