// Package envoyfixture is a TEST FIXTURE, not part of dhvisor: an Envoy
// stand-in image built on this machine (Envoy itself cannot be had here),
// and private Docker engines a test may stop and start.
//
// The image is the stand-in (test/standin) built static and imported with
// `docker import` (no registry, no base image). It serves Envoy's admin
// /ready ("LIVE", 503 when told unhealthy), GET /file?path=P (the SHA-256 of
// a file as the container sees it) and the stand-in's POST /fault/<kind>
// (crash, hang, unhealthy) on every --port it is given.
package envoyfixture

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dhvisor/dhvisor/scripts/bench/benchkit"
)

// DefaultHost is the machine's shared Docker engine.
const DefaultHost = "unix:///var/run/docker.sock"

// Docker runs the docker command line against the engine at host.
func Docker(ctx context.Context, host string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "docker", append([]string{"-H", host}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

var (
	buildMu  sync.Mutex
	binaries = map[string][]byte{} // module root → the built stand-in
)

// standin builds the stand-in static (it runs in an empty image), once per
// test binary. Built without paths or version-control stamps, it is the same
// binary from every checkout of the same source: tests of several worktrees
// on one engine then share the images rather than retag them under each
// other (a tag moved is a change the agent recreates the container for).
// It is kept in memory: a build left on disk by every test binary filled
// /tmp.
func standin(ctx context.Context) ([]byte, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	root, err := benchkit.RepoRoot()
	if err != nil {
		return nil, err
	}
	if b, ok := binaries[root]; ok {
		return b, nil
	}
	dir, err := os.MkdirTemp("", "dhv-envoy-fixture")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "dh-standin")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-o", bin, "./test/standin")
	cmd.Dir = root
	// GOFLAGS of the caller's (make's -tags) would be written into the
	// binary's build information: `make test` and `go test` would build
	// different binaries and retag the shared images under each other.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build the stand-in: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	binaries[root] = b
	return b, nil
}

// BuildImage makes tag an image of the stand-in with the extra environment
// (KEY=value; DH_STANDIN_FAULT=exit-at-start makes a crash-looping image).
// The same binary and environment give the same image id, which is kept
// when tag already names it.
func BuildImage(ctx context.Context, host, tag string, env ...string) error {
	b, err := standin(ctx)
	if err != nil {
		return err
	}
	h := sha256.New()
	h.Write(b)
	for _, e := range env {
		h.Write([]byte("\x00" + e))
	}
	sum := hex.EncodeToString(h.Sum(nil))[:16]
	if cur, err := Docker(ctx, host, "image", "inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", tag); err == nil && strings.Contains(cur, "DH_FIXTURE="+sum) {
		return nil
	}
	dir, err := os.MkdirTemp("", "dhv-envoy-image")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "dh-standin"), b, 0o755); err != nil {
		return err
	}
	for _, d := range []string{"etc/envoy", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	args := []string{"-H", host, "import", "--change", `ENTRYPOINT ["/dh-standin"]`, "--change", "ENV DH_FIXTURE=" + sum}
	for _, e := range env {
		args = append(args, "--change", "ENV "+e)
	}
	tar := exec.CommandContext(ctx, "tar", "-C", dir, "-c", ".")
	imp := exec.CommandContext(ctx, "docker", append(args, "-", tag)...)
	pipe, err := tar.StdoutPipe()
	if err != nil {
		return err
	}
	imp.Stdin = pipe
	var out bytes.Buffer
	imp.Stdout, imp.Stderr = &out, &out
	if err := tar.Start(); err != nil {
		return err
	}
	if err := imp.Run(); err != nil {
		_ = tar.Wait()
		return fmt.Errorf("docker import %s: %v: %s", tag, err, out.String())
	}
	return tar.Wait()
}

// Args is the stand-in's command line to play Envoy with its listener and
// admin ports.
func Args(listen, admin int) []string {
	return []string{"--name", "envoy", "--port", fmt.Sprint(listen), "--port", fmt.Sprint(admin)}
}

// Ready reports whether the stand-in's admin port answers /ready with 200.
func Ready(admin int) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/ready", admin))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// FileDigest asks the stand-in for the SHA-256 of a file in its container.
func FileDigest(admin int, path string) (string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/file?path=%s", admin, path))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(b.String()))
	}
	return strings.TrimSpace(b.String()), nil
}

// Fault injects one of the stand-in's faults (unhealthy, hang, crash).
func Fault(admin int, kind string) error {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Post(fmt.Sprintf("http://127.0.0.1:%d/fault/%s", admin, kind), "text/plain", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fault %s: %s", kind, resp.Status)
	}
	return nil
}

// Dockerd is a private Docker engine, for tests that stop and start one
// (never the machine's shared engine).
type Dockerd struct {
	Dir  string
	Host string
	args []string
	cmd  *exec.Cmd
	log  *os.File
}

// StartDockerd starts a private engine with its state under dir (keep dir
// short: the engine's sockets live below it). It uses the host network
// only, as the machine's engine does; args are more of dockerd's flags
// (--live-restore).
func StartDockerd(dir string, args ...string) (*Dockerd, error) {
	d := &Dockerd{Dir: dir, Host: "unix://" + filepath.Join(dir, "docker.sock"), args: args}
	return d, d.Start()
}

// Start starts the engine (again) and waits until it answers.
func (d *Dockerd) Start() error {
	log, err := os.OpenFile(filepath.Join(d.Dir, "dockerd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	d.log = log
	d.cmd = exec.Command("dockerd", append([]string{"--iptables=false", "--bridge=none", "-H", d.Host,
		"--data-root", filepath.Join(d.Dir, "data"), "--exec-root", filepath.Join(d.Dir, "x"),
		"--pidfile", filepath.Join(d.Dir, "docker.pid")}, d.args...)...)
	d.cmd.Stdout, d.cmd.Stderr = log, log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		log.Close()
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := Docker(ctx, d.Host, "version")
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = d.Stop()
	b, _ := os.ReadFile(filepath.Join(d.Dir, "dockerd.log"))
	return fmt.Errorf("private dockerd did not answer within 30 s:\n%s", b)
}

// Stop stops the engine the way an operator's `systemctl stop docker`
// does (SIGTERM) and waits for it and its containerd to end.
func (d *Dockerd) Stop() error {
	if d.cmd == nil || d.cmd.Process == nil {
		return nil
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	d.cmd = nil
	return d.log.Close()
}

// Remove stops the engine and deletes its directory, with the mounts the
// engine leaves behind (its network namespace; with --live-restore its
// data root too).
func (d *Dockerd) Remove() error {
	err := d.Stop()
	b, _ := os.ReadFile("/proc/self/mounts")
	var mounts []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], d.Dir+"/") {
			mounts = append(mounts, f[1])
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- { // the deepest last mounted
		_ = unix.Unmount(mounts[i], unix.MNT_DETACH)
	}
	return errors.Join(err, os.RemoveAll(d.Dir))
}
