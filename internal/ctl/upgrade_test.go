package ctl

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
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
	local := filepath.Join(t.TempDir(), "a.deb")
	if err := os.WriteFile(local, []byte("package"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256([]byte("package"))
	localSha := hex.EncodeToString(h[:])
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-parallel", "-1", "a.deb"}, "--max-parallel -1: expected 0"},
		{[]string{"--strategy", "canary", "a.deb"}, `--strategy "canary": expected full or rolling`},
		{[]string{"--previous", "/srv/old.deb", "a.deb"}, "add --auto-revert"},
		{[]string{"--path", "a.deb"}, `--path: "a.deb" must be the absolute path`},
		{[]string{"--path", "--auto-revert", "--previous", "old.deb", "/srv/a.deb"}, `--path: "old.deb" must be the absolute path`},
		{[]string{"--path", "/nonexistent/a.deb"}, "/nonexistent/a.deb is not on this machine, so dhctl cannot hash it: give its sha256 with --sha256"},
		{[]string{"--path", "--sha256", "abc", "/nonexistent/a.deb"}, `--sha256: "abc": expected 64 hex digits`},
		{[]string{"--path", "--sha256", strings.Repeat("0", 64), local}, "--sha256 " + strings.Repeat("0", 64) + ", but " + local + " here has sha256 " + localSha + ": not started"},
		{[]string{"--path", "--sha256", localSha, "--previous-sha256", localSha, local}, "--previous-sha256 is the sha256 of --previous; add --previous"},
		{[]string{"--sha256", localSha, local}, "--sha256 and --previous-sha256 go with --path"},
	} {
		args := append([]string{"upgrade", "start"}, tt.args...)
		if _, errOut := run(t, ExitError, args...); !strings.Contains(errOut, tt.want) {
			t.Errorf("dhctl %s: %q, want %q", strings.Join(args, " "), errOut, tt.want)
		}
	}
}

func TestPathSHA256(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a.deb")
	if err := os.WriteFile(file, []byte("package"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256([]byte("package"))
	sum := hex.EncodeToString(h[:])
	for _, tt := range []struct {
		path, flag, want, err string
	}{
		{file, "", sum, ""},
		{file, strings.ToUpper(sum), sum, ""}, // as some tools print it
		{file, " " + sum + "\n", sum, ""},
		{"/nonexistent/a.deb", sum, sum, ""}, // not on this machine: the operator's word
		{file, strings.Repeat("f", 64), "", "here has sha256 " + sum},
		{file, sum + "0", "", "expected 64 hex digits"},
		{file, strings.Repeat("g", 64), "", "expected 64 hex digits"},
	} {
		got, err := pathSHA256(tt.path, tt.flag, "--sha256")
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s %q: %v, want %q", tt.path, tt.flag, err, tt.err)
			}
		} else if err != nil || got != tt.want {
			t.Errorf("%s %q: %q %v, want %q", tt.path, tt.flag, got, err, tt.want)
		}
	}
}

// parseSHA256 takes whatever an operator passes to --sha256: it never
// panics and accepts only what names one sha256, lowercased.
func FuzzParseSHA256(f *testing.F) {
	for _, s := range []string{"", strings.Repeat("a", 64), strings.Repeat("A", 63) + "z", " " + strings.Repeat("0", 64) + "\n", "é" + strings.Repeat("0", 62)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseSHA256(s)
		if err != nil {
			return
		}
		if b, derr := hex.DecodeString(got); derr != nil || len(b) != sha256.Size || got != strings.ToLower(got) {
			t.Fatalf("parseSHA256(%q) = %q", s, got)
		}
	})
}
