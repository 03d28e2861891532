package ctl

import (
	"bytes"
	"strings"
	"testing"
	"time"

	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

func TestRenderStatus(t *testing.T) {
	now := time.Unix(10_000, 0)
	resp := &pb.StatusResponse{Node: "n1", Roles: []string{"infra"}, AgentVersion: "1.0", Services: []*pb.ServiceStatus{
		{Name: "configuration_server", State: "OK", Pid: 42, StartedUnixMs: now.Add(-90 * time.Second).UnixMilli(), Restarts: 2, CpuPercent: 1.5, MemoryBytes: 300 << 20,
			LastCheck: &pb.CheckResult{Name: "tcp:websocket", Ok: true, Message: "ok", AtUnixMs: now.Add(-time.Second).UnixMilli()}},
		{Name: "authentication_server", State: "Failed", Message: "exited with code 3; 5 restarts within 5m0s"},
		{Name: "db_query_server", State: "Waiting", Message: "Waiting for configuration_server (infra-1)"},
	}}
	var b bytes.Buffer
	renderStatus(&b, resp, now, false)
	out := b.String()
	for _, want := range []string{
		"Node n1 (infra), dhagent 1.0: 1/3 services OK",
		"configuration_server   OK       42   1m30s   2         1.5%  300.0 MiB  tcp:websocket ok (1s ago)",
		"authentication_server  Failed   -    -       0         -     -          -",
		"authentication_server: exited with code 3; 5 restarts within 5m0s",
		"db_query_server        Waiting  -",
		"  db_query_server: Waiting for configuration_server (infra-1)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if notOK(resp) != 2 {
		t.Error("notOK miscounted")
	}
}

func TestRenderStatusNotReady(t *testing.T) {
	resp := &pb.StatusResponse{Node: "n1", StateError: "the state file /var/lib/dhvisor/agent-state.json cannot be written: no space left on device"}
	var b bytes.Buffer
	renderStatus(&b, resp, time.Unix(10_000, 0), false)
	if want := "NOT READY: no service is started until the agent can record it: the state file /var/lib/dhvisor/agent-state.json cannot be written: no space left on device\n"; !strings.Contains(b.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, b.String())
	}
}

func TestRenderEnvoy(t *testing.T) {
	now := time.Unix(10_000, 0)
	id := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	resp := &pb.StatusResponse{Node: "edge1", Services: []*pb.ServiceStatus{{
		Name: "envoy", State: "OK", Pid: 4242, StartedUnixMs: now.Add(-3 * time.Minute).UnixMilli(), StateSinceUnixMs: now.Add(-2 * time.Minute).UnixMilli(), Restarts: 1,
		Container: &pb.ContainerInfo{Id: id, Name: "deephaven_envoy", Image: "envoyproxy/envoy:v1.31.2"},
		LastCheck: &pb.CheckResult{Name: "ready", Ok: true, Message: "ok", AtUnixMs: now.Add(-time.Second).UnixMilli()},
		LastExit:  &pb.ExitInfo{Code: 137, Signal: "SIGKILL", AtUnixMs: now.Add(-3 * time.Minute).UnixMilli()},
	}}}
	var b bytes.Buffer
	renderEnvoy(&b, resp, now, false)
	for _, want := range []string{
		"Envoy on edge1: OK for 2m00s",
		"container  deephaven_envoy " + id,
		"image      envoyproxy/envoy:v1.31.2",
		"uptime     3m00s (pid 4242)",
		"restarts   1",
		"ready      ready ok (1s ago)",
		"last exit  killed by SIGKILL, 3m00s ago",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	resp.Services[0].Container, resp.Services[0].Pid, resp.Services[0].State, resp.Services[0].Message = nil, 0, "Connection failed", "docker engine unreachable"
	renderEnvoy(&b, resp, now, false)
	if out := b.String(); !strings.Contains(out, "container  none running") || !strings.Contains(out, "message    docker engine unreachable") {
		t.Errorf("output:\n%s", out)
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		5 * time.Second: "5s", 90 * time.Second: "1m30s", 3*time.Hour + 5*time.Minute: "3h05m", 50 * time.Hour: "2d02h",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestArgumentErrors(t *testing.T) {
	for _, args := range [][]string{{"start"}, {"up", "extra"}, {"restart", "x", "--timeout", "-1s"}, {"status", "--bogus"}} {
		var out, errOut bytes.Buffer
		if code := Execute(append([]string{"--socket", "/nonexistent.sock"}, args...), &out, &errOut); code != ExitError {
			t.Errorf("dhctl %v: exit %d, want %d (%s)", args, code, ExitError, errOut.String())
		}
	}
}
