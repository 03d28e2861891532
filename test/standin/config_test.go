package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"512", 512, true},
		{"512B", 512, true},
		{"20MiB", 20 << 20, true},
		{"20mib", 20 << 20, true},
		{"20MB", 20e6, true},
		{"2k", 2048, true},
		{"1.5GiB", 3 << 29, true},
		{"1g", 1 << 30, true},
		{"", 0, false},
		{"MiB", 0, false},
		{"20XB", 0, false},
		{"-1MiB", 0, false},
	}
	for _, tc := range tests {
		got, err := parseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"20MiB/s", 20 << 20, true},
		{"20MiB", 20 << 20, true},
		{"1MiB/100ms", 10 << 20, true},
		{"60MiB/m", 1 << 20, true},
		{"60MiB/1m", 1 << 20, true},
		{"20MiB/", 0, false},
		{"20MiB/fortnight", 0, false},
		{"0/s", 0, false},
	}
	for _, tc := range tests {
		got, err := parseRate(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseRate(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseFaults(t *testing.T) {
	tests := []struct {
		in   string
		want []fault // arg is not compared
		err  string
	}{
		{in: "", want: nil},
		{in: "unhealthy", want: []fault{{kind: kindUnhealthy}}},
		{in: "crash", want: []fault{{kind: kindCrash, code: 1}}},
		{in: "crash:3", want: []fault{{kind: kindCrash, code: 3}}},
		{in: "crash:2s", want: []fault{{kind: kindCrash, code: 1, after: 2 * time.Second}}},
		{in: "crash:500ms,0", want: []fault{{kind: kindCrash, code: 0, after: 500 * time.Millisecond}}},
		{in: "crash:KILL,1s", want: []fault{{kind: kindCrash, code: 1, kill: true, after: time.Second}}},
		{in: "exit-at-start", want: []fault{{kind: kindExitAtStart, code: 1}}},
		{in: "exit-at-start:0", want: []fault{{kind: kindExitAtStart, code: 0}}},
		{in: "start-delay:2s; hang", want: []fault{{kind: kindStartDelay, delay: 2 * time.Second}, {kind: kindHang}}},
		{in: "grow:20MiB/s,200MiB", want: []fault{{kind: kindGrow, rate: 20 << 20, max: 200 << 20}}},
		{in: "grow:1MiB", want: []fault{{kind: kindGrow, rate: 1 << 20}}},
		{in: "explode", err: "unknown fault"},
		{in: "crash:256", err: "bad exit code"},
		{in: "crash:-1", err: "bad exit code"},
		{in: "crash:soon", err: "bad duration"},
		{in: "start-delay", err: "bad duration"},
		{in: "start-delay:-1s", err: "negative"},
		{in: "hang:1", err: "takes no argument"},
		{in: "grow", err: "bad size"},
	}
	for _, tc := range tests {
		got, err := parseFaults(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseFaults(%q) error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || len(got) != len(tc.want) {
			t.Errorf("parseFaults(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		for i := range got {
			got[i].arg = ""
			if got[i] != tc.want[i] {
				t.Errorf("parseFaults(%q)[%d] = %+v, want %+v", tc.in, i, got[i], tc.want[i])
			}
		}
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   string
		check func(*config) bool
		err   string
	}{
		{
			name: "defaults",
			check: func(c *config) bool {
				return c.name == "standin" && c.addr == "127.0.0.1" && c.exitAtStart < 0 && len(c.faults) == 0
			},
		},
		{
			name:  "port and ports combine",
			args:  []string{"--port", "1", "--ports", "2,3", "--port=4"},
			check: func(c *config) bool { return portsFlag{&c.ports}.String() == "1,2,3,4" },
		},
		{
			name: "crash-after implies crash 1",
			args: []string{"--crash-after", "2s"},
			check: func(c *config) bool {
				return len(c.faults) == 1 && c.faults[0].code == 1 && c.faults[0].after == 2*time.Second && c.faults[0].String() == "crash:2s"
			},
		},
		{
			name: "crash=KILL",
			args: []string{"--crash=KILL"},
			check: func(c *config) bool {
				return len(c.faults) == 1 && c.faults[0].kill && c.faults[0].after == 0
			},
		},
		{
			name: "grow-max overrides the cap",
			args: []string{"--grow", "1MiB/s,5MiB", "--grow-max", "2MiB"},
			check: func(c *config) bool {
				return len(c.faults) == 1 && c.faults[0].max == 2<<20 && c.faults[0].String() == "grow:1MiB/s,2MiB"
			},
		},
		{
			name: "env start faults override flags, others follow flag faults",
			args: []string{"--start-delay", "1s", "--exit-at-start", "3", "--unhealthy"},
			env:  "start-delay:2s;exit-at-start:4;healthy",
			check: func(c *config) bool {
				return c.startDelay == 2*time.Second && c.exitAtStart == 4 &&
					len(c.faults) == 2 && c.faults[0].kind == kindUnhealthy && c.faults[1].kind == kindHealthy
			},
		},
		{
			name:  "grpc",
			args:  []string{"--grpc", "--port", "0"},
			check: func(c *config) bool { return c.grpc && c.worker == "" && c.name == "standin" },
		},
		{
			name: "worker",
			args: []string{"--worker", "w1", "--listen", "10.0.0.5:0"},
			check: func(c *config) bool {
				return c.grpc && c.worker == "w1" && c.name == "w1" && c.addr == "10.0.0.5" && portsFlag{&c.ports}.String() == "0"
			},
		},
		{
			name:  "worker keeps its --name",
			args:  []string{"--name", "n1/db_query_server/w1", "--worker", "w1", "--listen", "127.0.0.1:1"},
			check: func(c *config) bool { return c.name == "n1/db_query_server/w1" && c.worker == "w1" },
		},
		{
			name: "register as a dispatcher",
			args: []string{"--port", "22052", "--register-socket", "/run/dhvisor/workers.sock", "--register-as", "db_query_server", "--register-workers", "3"},
			check: func(c *config) bool {
				return c.registerSocket == "/run/dhvisor/workers.sock" && c.registerAs == "db_query_server" && c.registerWorkers == 3
			},
		},
		{name: "register with no dispatcher", args: []string{"--port", "1", "--register-socket", "/s"}, err: "--register-as"},
		{name: "register with no port", args: []string{"--register-socket", "/s", "--register-as", "d"}, err: "needs a --port"},
		{name: "register too many", args: []string{"--port", "1", "--register-socket", "/s", "--register-as", "d", "--register-workers", "20001"}, err: "want 0-20000"},
		{name: "worker without listen", args: []string{"--worker", "w1"}, err: "--worker needs --listen"},
		{name: "listen with port", args: []string{"--listen", "127.0.0.1:1", "--port", "2"}, err: "--listen replaces"},
		{name: "bad listen", args: []string{"--listen", "1234"}, err: "want HOST:PORT"},
		{name: "negative term delay", args: []string{"--term-delay", "-1s"}, err: "negative"},
		{name: "exit code too big", args: []string{"--exit-at-start", "300"}, err: "want 0..255"},
		{name: "empty name", args: []string{"--name", ""}, err: "non-empty"},
		{name: "bad env", env: "crash:x", err: "DH_STANDIN_FAULT"},
	}
	for _, tc := range tests {
		getenv := func(k string) string {
			if k == faultEnv {
				return tc.env
			}
			return ""
		}
		c, err := parseConfig(tc.args, getenv, io.Discard)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || !tc.check(c) {
			t.Errorf("%s: got %+v, %v", tc.name, c, err)
		}
	}
}
