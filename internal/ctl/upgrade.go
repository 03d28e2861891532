package ctl

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dhvisor/dhvisor/internal/pkgsig"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

type upgradeFlags struct {
	op          opFlags
	path        bool
	strategy    string
	maxParallel int
	autoRevert  bool
	previous    string
	// With --path: the files' sha256 when they are not on this machine.
	sha256, previousSha256 string
}

func (o *options) upgradeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "upgrade", Short: "Patch upgrades: install a Deephaven package on every node, in dependency order, health-gated"}
	var f upgradeFlags
	start := &cobra.Command{
		Use:   "start PACKAGE.rpm|PACKAGE.deb",
		Short: "Upload the package to the coordinators and upgrade the cluster with it",
		Long: `Upload the package once to the coordinators (or, with --path, use the file
already at that path on every node) and upgrade every node.

With --path, dhctl hashes the file (or takes --sha256 when the file is not
on this machine) and each agent copies the file once into its package cache
and installs that copy only if it has the same sha256. The file and every
directory above it must be root's and writable by no group or other user.

Strategy full (Deephaven's documented procedure): stop every service in
reverse dependency order, install on every node at once, start
configuration_server, authentication_server, the query and merge nodes and
the rest of the infrastructure node, each gated on health. Strategy rolling:
node by node (or --max-parallel at a time), in dependency order: stop the
node's services, install, start them, hold them healthy, then the next.

--auto-revert puts the previous package back (and restarts) on every node
the upgrade reached when a step fails; the previous package is --previous,
or by default the package of the last upgrade that completed.`,
		Args: exactArgs(1, "the package file (.rpm or .deb)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.upgradeStart(cmd, &f, args[0])
		},
	}
	fl := start.Flags()
	fl.BoolVar(&f.path, "path", false, "PACKAGE (and --previous) is already at this absolute path on every node: nothing is uploaded")
	fl.StringVar(&f.strategy, "strategy", "full", "full (stop all, install everywhere, start in dependency order) or rolling (node by node)")
	fl.IntVar(&f.maxParallel, "max-parallel", 0, "nodes at once: rolling batches (default 1), full installs (default all)")
	fl.BoolVar(&f.autoRevert, "auto-revert", false, "on failure, reinstall the previous package on the nodes done and restart them")
	fl.StringVar(&f.previous, "previous", "", "with --auto-revert: the package the nodes run now (default: the last completed upgrade's)")
	fl.StringVar(&f.sha256, "sha256", "", "with --path: the package's sha256 (`sha256sum` on a node), needed when the file is not on this machine; checked against it when it is")
	fl.StringVar(&f.previousSha256, "previous-sha256", "", "with --path: --previous's sha256, as --sha256")
	f.op.addGate(start)

	var followFlag bool
	status := &cobra.Command{
		Use: "status [ID]", Short: "The upgrade's plan and progress per node (default: the newest upgrade)", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			call := o.withCoord // following lasts as long as the upgrade
			if !followFlag {
				call = func(ctx context.Context, f func(context.Context, pb.CoordinatorClient) error) error {
					return o.callCoord(ctx, 10*time.Second, f)
				}
			}
			return call(cmd.Context(), func(ctx context.Context, c pb.CoordinatorClient) error {
				id, err := upgradeID(ctx, c, args)
				if err != nil {
					return err
				}
				if followFlag {
					return o.follow(ctx, c, id)
				}
				op, err := c.GetOp(ctx, &pb.GetOpRequest{Id: id})
				if err != nil {
					return rpcError(err)
				}
				renderOp(o.out, op, time.Now(), isTerminal(o.out))
				return opResult(op)
			})
		},
	}
	status.Flags().BoolVarP(&followFlag, "follow", "f", false, "keep showing progress until the upgrade ends")
	control := func(name string, op pb.ControlOpRequest_Op, short string) *cobra.Command {
		return o.opControlCmd(name+" [ID]", short, cobra.MaximumNArgs(1), op, upgradeID)
	}
	packages := &cobra.Command{
		Use: "packages", Short: "The packages the coordinators hold", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.callCoord(cmd.Context(), 10*time.Second, func(ctx context.Context, c pb.CoordinatorClient) error {
				resp, err := c.Packages(ctx, &pb.PackagesRequest{})
				if err != nil {
					return rpcError(err)
				}
				fmt.Fprintf(o.out, "%-14s %-40s %-24s %10s  %-12s %-20s %s\n", "SHA256", "FILE", "PACKAGE", "SIZE", "HELD BY", "UPLOADED", "BY")
				for _, p := range resp.Packages {
					fmt.Fprintf(o.out, "%-14s %-40s %-24s %10s  %-12s %-20s %s\n", p.Sha256[:12], p.FileName, dash(strings.TrimSpace(p.Name+" "+p.Version)), humanBytes(uint64(p.Size)),
						strings.Join(p.Replicas, ","), time.UnixMilli(p.UploadedUnixMs).Format("2006-01-02 15:04:05"), p.UploadedBy)
				}
				return nil
			})
		},
	}
	cmd.AddCommand(start, status, packages,
		control("pause", pb.ControlOpRequest_OP_PAUSE, "Pause the upgrade: running steps finish, no new stage starts"),
		control("resume", pb.ControlOpRequest_OP_RESUME, "Resume a paused upgrade; failed steps are tried again"),
		control("abort", pb.ControlOpRequest_OP_ABORT, "Abort the upgrade: running steps finish, nothing else is done (nodes stay as they are)"),
	)
	return cmd
}

// upgradeID is the ID given, else the newest upgrade's.
func upgradeID(ctx context.Context, c pb.CoordinatorClient, args []string) (string, error) {
	if len(args) == 1 {
		return args[0], nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := c.ListOps(ctx, &pb.ListOpsRequest{Limit: 200})
	if err != nil {
		return "", rpcError(err)
	}
	for _, op := range resp.Ops {
		if op.GetRequest().GetAction() == "upgrade" {
			return op.Id, nil
		}
	}
	return "", fail(ExitError, "no upgrade has run yet (`dhctl upgrade start PACKAGE`)")
}

func (o *options) upgradeStart(cmd *cobra.Command, f *upgradeFlags, file string) error {
	if f.maxParallel < 0 {
		return fail(ExitError, "--max-parallel %d: expected 0 (the strategy's default) or more", f.maxParallel)
	}
	if f.strategy != "full" && f.strategy != "rolling" {
		return fail(ExitError, "--strategy %q: expected full or rolling", f.strategy)
	}
	if f.previous != "" && !f.autoRevert {
		return fail(ExitError, "--previous is the package --auto-revert puts back; add --auto-revert")
	}
	var pathSha, previousSha string
	if f.path {
		for _, p := range []string{file, f.previous} {
			if p != "" && !filepath.IsAbs(p) {
				return fail(ExitError, "--path: %q must be the absolute path of the package on every node", p)
			}
		}
		var err error
		if pathSha, err = pathSHA256(file, f.sha256, "--sha256"); err != nil {
			return err
		}
		if f.previous != "" {
			if previousSha, err = pathSHA256(f.previous, f.previousSha256, "--previous-sha256"); err != nil {
				return err
			}
		} else if f.previousSha256 != "" {
			return fail(ExitError, "--previous-sha256 is the sha256 of --previous; add --previous")
		}
	} else if f.sha256 != "" || f.previousSha256 != "" {
		return fail(ExitError, "--sha256 and --previous-sha256 go with --path: an uploaded package is hashed as it is read")
	}
	label := "upgrade " + filepath.Base(file)
	req, err := f.op.request("upgrade", nil, label)
	if err != nil {
		return err
	}
	u := &pb.UpgradeSpec{Strategy: f.strategy, MaxParallel: int32(f.maxParallel), AutoRevert: f.autoRevert}
	req.Upgrade = u
	return o.withCoord(cmd.Context(), func(ctx context.Context, c pb.CoordinatorClient) error {
		if f.path {
			u.Path, u.PreviousPath = file, f.previous
			u.PathSha256, u.PreviousPathSha256 = pathSha, previousSha
		} else {
			sha, err := o.upload(ctx, c, file)
			if err != nil {
				return err
			}
			u.PackageSha256 = sha
			if f.previous != "" {
				if u.PreviousSha256, err = o.upload(ctx, c, f.previous); err != nil {
					return err
				}
			}
		}
		return o.startOp(ctx, c, &f.op, req)
	})
}

// pathSHA256 is the sha256 the agents must find in their copy of the
// package at path: the file's here, or the flag's when the file is not on
// this machine; both must agree when both are there.
func pathSHA256(path, flagValue, flagName string) (string, error) {
	var given string
	if flagValue != "" {
		var err error
		if given, err = parseSHA256(flagValue); err != nil {
			return "", fail(ExitError, "%s: %v", flagName, err)
		}
	}
	fh, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) && given != "" {
		return given, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return "", fail(ExitError, "--path: %s is not on this machine, so dhctl cannot hash it: give its sha256 with %s (sha256sum %s on a node)", path, flagName, path)
	}
	if err != nil {
		return "", fail(ExitError, "--path: %v", err)
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return "", fail(ExitError, "--path: %s: %v", path, err)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if given != "" && given != got {
		return "", fail(ExitError, "%s %s, but %s here has sha256 %s: not started", flagName, given, path, got)
	}
	return got, nil
}

// parseSHA256 reads a sha256 as sha256sum prints it (either case).
func parseSHA256(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if len(s) != sha256.Size*2 {
		return "", fmt.Errorf("%q: expected 64 hex digits", s)
	}
	if _, err := hex.DecodeString(s); err != nil {
		return "", fmt.Errorf("%q: expected 64 hex digits", s)
	}
	return s, nil
}

// upload sends the package to the coordinators unless they hold it, and
// returns its sha256. A dry run uploads too: the plan is checked against
// the package, and the upload changes nothing on the nodes.
func (o *options) upload(ctx context.Context, c pb.CoordinatorClient, file string) (string, error) {
	name := filepath.Base(file)
	if !strings.HasSuffix(name, ".rpm") && !strings.HasSuffix(name, ".deb") {
		return "", fail(ExitError, "%s: expected a .rpm or .deb package", file)
	}
	fh, err := os.Open(file)
	if err != nil {
		return "", fail(ExitError, "%v", err)
	}
	defer fh.Close()
	h := sha256.New()
	size, err := io.Copy(h, fh)
	if err != nil {
		return "", fail(ExitError, "%s: %v", file, err)
	}
	sha := hex.EncodeToString(h.Sum(nil))
	resp, err := c.Packages(ctx, &pb.PackagesRequest{})
	if err != nil {
		return "", rpcError(err)
	}
	sig, err := signatureBeside(file)
	if err != nil {
		return "", err
	}
	for _, p := range resp.Packages {
		if p.Sha256 == sha && (len(sig) == 0 || len(p.Signature) > 0) {
			fmt.Fprintf(o.out, "%s (%s) is already held by %s\n", name, sha[:12], strings.Join(p.Replicas, ", "))
			return sha, nil
		}
	}
	if _, err := fh.Seek(0, io.SeekStart); err != nil {
		return "", fail(ExitError, "%s: %v", file, err)
	}
	stream, err := c.UploadPackage(ctx)
	if err != nil {
		return "", rpcError(err)
	}
	var sendErr error
	send := func(m *pb.PackageChunk) error { sendErr = stream.Send(m); return sendErr }
	progress := &uploadProgress{r: fh, name: name, size: size, out: o.errOut, last: time.Now()}
	if err := pb.SendPackage(send, progress, &pb.Package{Sha256: sha, Size: size, FileName: name, Signature: sig}); err != nil {
		if sendErr != nil {
			_, err = stream.CloseAndRecv() // the server's reason
			return "", rpcError(err)
		}
		return "", fail(ExitError, "%s: %v", file, err)
	}
	p, err := stream.CloseAndRecv()
	if err != nil {
		return "", rpcError(err)
	}
	fmt.Fprintf(o.out, "uploaded %s (%s, %s), held by %s\n", name, sha[:12], humanBytes(uint64(size)), strings.Join(p.Replicas, ", "))
	return sha, nil
}

// signatureBeside reads a .deb's detached signature, FILE.sig or
// FILE.asc, to upload with it (nil when there is none, and for an .rpm,
// which carries its own).
func signatureBeside(file string) ([]byte, error) {
	if !strings.HasSuffix(file, ".deb") {
		return nil, nil
	}
	for _, suffix := range pkgsig.Beside {
		b, err := os.ReadFile(file + suffix)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fail(ExitError, "%v", err)
		}
		if err := pkgsig.CheckSignature(b); err != nil {
			return nil, fail(ExitError, "%s%s: %v", file, suffix, err)
		}
		return b, nil
	}
	return nil, nil
}

// uploadProgress tells, once a second, how much of the package was read
// to be sent.
type uploadProgress struct {
	r          io.Reader
	name       string
	size, sent int64
	out        io.Writer
	last       time.Time
}

func (u *uploadProgress) Read(p []byte) (int, error) {
	n, err := u.r.Read(p)
	u.sent += int64(n)
	if time.Since(u.last) > time.Second {
		fmt.Fprintf(u.out, "uploading %s: %d%%\n", u.name, u.sent*100/u.size)
		u.last = time.Now()
	}
	return n, err
}

// renderUpgrade draws what an upgrade installs and a progress bar per node
// with its current step.
func renderUpgrade(w io.Writer, op *pb.Operation, now time.Time, color bool) {
	u := op.Request.Upgrade
	what := u.Path
	if what != "" {
		what += " (" + u.PathSha256[:min(12, len(u.PathSha256))] + ")"
	} else {
		what = "package " + u.PackageSha256[:min(12, len(u.PackageSha256))]
	}
	line := fmt.Sprintf("  %s, strategy %s", what, u.Strategy)
	if u.MaxParallel > 0 {
		line += fmt.Sprintf(", %d nodes at once", u.MaxParallel)
	}
	if u.AutoRevert {
		prev := u.PreviousPath
		if prev == "" {
			prev = "package " + u.PreviousSha256[:min(12, len(u.PreviousSha256))]
		}
		line += ", auto-revert to " + prev
	}
	fmt.Fprintln(w, line)
	if op.Reverting {
		fmt.Fprintf(w, "  %s: %s\n", paint(color, "31", "reverting"), op.Failure)
	}
	type progress struct {
		done, all int
		current   *pb.Step
	}
	per := map[string]*progress{}
	var order []string
	for _, st := range op.Stages {
		for _, s := range st.Steps {
			p := per[s.Node]
			if p == nil {
				p = &progress{}
				per[s.Node] = p
				order = append(order, s.Node)
			}
			p.all++
			switch {
			case s.State == "done" || s.State == "skipped":
				p.done++
			case p.current == nil || (s.State != "pending" && p.current.State == "pending"):
				p.current = s
			}
		}
	}
	const width = 20
	for _, node := range order {
		p := per[node]
		filled := p.done * width / max(p.all, 1)
		bar := strings.Repeat("█", filled) + strings.Repeat("░", width-filled)
		cur := "done"
		if s := p.current; s != nil {
			cur = s.Action + ": " + stepWord(s)
			if s.State == "running" && s.StartedUnixMs > 0 {
				cur += fmt.Sprintf(" %.1fs", now.Sub(time.UnixMilli(s.StartedUnixMs)).Seconds())
			}
			if s.State == "failed" {
				cur += ": " + s.Message
			}
		}
		fmt.Fprintf(w, "  %-16s %s %3d%%  %s\n", node, paint(color, "32", bar), p.done*100/max(p.all, 1), cur)
	}
}
