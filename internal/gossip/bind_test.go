package gossip

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// A gossip port something else holds (TCP or UDP: memberlist needs both)
// is refused naming who holds it.
func TestStartOnAPortInUse(t *testing.T) {
	for _, network := range []string{"tcp", "udp"} {
		t.Run(network, func(t *testing.T) {
			var port int
			var closeHeld func() error
			if network == "tcp" {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				port, closeHeld = l.Addr().(*net.TCPAddr).Port, l.Close
			} else {
				c, err := net.ListenPacket("udp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				port, closeHeld = c.LocalAddr().(*net.UDPAddr).Port, c.Close
			}
			defer closeHeld()
			g, err := New(Config{NodeName: "n", BindAddr: "127.0.0.1", BindPort: port, Timing: testTiming(), Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			err = g.Start(context.Background())
			if err == nil {
				_ = g.Shutdown()
				t.Fatalf("started on a %s port in use", network)
			}
			want := "gossip.bind: listen 127.0.0.1:" + strconv.Itoa(port) + ": address in use by pid " + strconv.Itoa(os.Getpid()) + " ("
			if !strings.HasPrefix(err.Error(), want) {
				t.Errorf("%v\nwant it to start %q", err, want)
			}
		})
	}
}
