package ctl

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// An upgrade shows a progress bar per node with its current step, the
// versions of install steps, and a failed install's tool output.
func TestRenderUpgrade(t *testing.T) {
	now := time.UnixMilli(100_000)
	sha := strings.Repeat("ab", 32)
	op := &pb.Operation{
		Id: "op-7", State: "running", CreatedBy: "operator:alice", CreatedUnixMs: 90_000,
		Request: &pb.OpRequest{Action: "upgrade", Label: "upgrade illumon-db_2.0.deb", MinHealthyTimeMs: 10_000, HealthyDeadlineMs: 300_000, OnFailure: "pause",
			Upgrade: &pb.UpgradeSpec{PackageSha256: sha, Strategy: "rolling", AutoRevert: true, PreviousPath: "/srv/illumon-db_1.0.deb"}},
		Stages: []*pb.Stage{
			{Steps: []*pb.Step{{Node: "infra", Action: "stop", Services: []string{"configuration_server"}, State: "done"}}},
			{Steps: []*pb.Step{{Node: "infra", Action: "install", Package: sha, State: "done", VersionBefore: "1.0", VersionAfter: "2.0"}}},
			{Steps: []*pb.Step{{Node: "infra", Action: "start", Services: []string{"configuration_server"}, State: "done"}}},
			{Steps: []*pb.Step{{Node: "query-1", Action: "stop", Services: []string{"db_query_server"}, State: "done"}}},
			{Steps: []*pb.Step{{Node: "query-1", Action: "install", Package: sha, State: "failed", Message: "dpkg exited with status 1",
				VersionBefore: "1.0", VersionAfter: "2.0 (half-configured)", Output: "Setting up illumon-db (2.0) ...\npostinst: cannot configure"}}},
			{Steps: []*pb.Step{{Node: "query-1", Action: "start", Services: []string{"db_query_server"}, State: "pending"}}},
		},
	}
	var b strings.Builder
	renderOp(&b, op, now, false)
	out := b.String()
	for _, want := range []string{
		"op-7  upgrade illumon-db_2.0.deb  running  by operator:alice · 10s",
		"package abababababab, strategy rolling, auto-revert to /srv/illumon-db_1.0.deb",
		"infra            ████████████████████ 100%  done",
		"query-1          ██████░░░░░░░░░░░░░░  33%  install: failed: dpkg exited with status 1",
		"install  1.0 -> 2.0",
		"1.0 -> 2.0 (half-configured)",
		"| postinst: cannot configure",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}

// Bad arguments are refused before any coordinator is asked (none is
// configured here).
func TestUpgradeStartRefusesArguments(t *testing.T) {
	t.Setenv("DHCTL_CONFIG", filepath.Join(t.TempDir(), "dhctl.yaml"))
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-parallel", "-1", "a.deb"}, "--max-parallel -1: expected 0"},
		{[]string{"--strategy", "canary", "a.deb"}, `--strategy "canary": expected full or rolling`},
		{[]string{"--previous", "/srv/old.deb", "a.deb"}, "add --auto-revert"},
		{[]string{"--path", "a.deb"}, `--path: "a.deb" must be the absolute path`},
		{[]string{"--path", "--auto-revert", "--previous", "old.deb", "/srv/a.deb"}, `--path: "old.deb" must be the absolute path`},
	} {
		args := append([]string{"upgrade", "start"}, tt.args...)
		if _, errOut := run(t, ExitError, args...); !strings.Contains(errOut, tt.want) {
			t.Errorf("dhctl %s: %q, want %q", strings.Join(args, " "), errOut, tt.want)
		}
	}
}
