package ctl

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/dhvisor/dhvisor/internal/atomicfile"
	"github.com/dhvisor/dhvisor/internal/gossip"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// Keys never travel on argv, which every local user reads in ps and
// /proc/<pid>/cmdline, nor come back in an answer: they are read from
// stdin or a 0600 file, and named by fingerprint everywhere else.
func (o *options) gossipCmd() *cobra.Command {
	keys := &cobra.Command{
		Use:   "keys",
		Short: "Manage the gossip encryption keyring, cluster-wide (root only)",
		Long: `Rotate the gossip key without downtime, from any node, as root:
  dhctl gossip keys generate --key-file new.key   # a new key, in a 0600 file
  dhctl gossip keys install --key-file new.key    # every node accepts it too
  dhctl gossip keys list                          # fingerprints, primary first
  dhctl gossip keys use NEWID                     # every node sends with it
  dhctl gossip keys remove OLDID                  # the old key is gone everywhere
A key is read from --key-file (mode 0600, one key) or stdin, never from the
command line; use and remove also take an installed key's fingerprint.
Each change is written to every node's key file (gossip.key_file).`,
	}
	var keyFile string
	keyFlag := func(c *cobra.Command) *cobra.Command {
		c.Flags().StringVar(&keyFile, "key-file", "", "read the key from this file (mode 0600) instead of stdin")
		return c
	}
	op := func(name string, code pb.GossipKeysRequest_Op, short string) *cobra.Command {
		return keyFlag(&cobra.Command{
			Use:   name + " [KEY-ID]",
			Short: short,
			Args:  cobra.MaximumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				req := &pb.GossipKeysRequest{Op: code}
				if len(args) == 1 {
					if keyFile != "" {
						return fail(ExitError, "%s: give a key id or --key-file, not both", name)
					}
					if err := checkKeyID(args[0]); err != nil {
						return err
					}
					req.KeyId = args[0]
				} else {
					key, err := o.readKey(cmd, keyFile)
					if err != nil {
						return err
					}
					req.Key = key
				}
				return o.keysCall(cmd.Context(), req)
			},
		})
	}
	install := keyFlag(&cobra.Command{
		Use:   "install",
		Short: "Install a key on every node (accepted for receiving); the key from --key-file or stdin",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fail(ExitError, "install: the key is read from --key-file or stdin, never from the command line (every local user can read a command line)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := o.readKey(cmd, keyFile)
			if err != nil {
				return err
			}
			return o.keysCall(cmd.Context(), &pb.GossipKeysRequest{Op: pb.GossipKeysRequest_OP_INSTALL, Key: key})
		},
	})
	generate := &cobra.Command{
		Use:   "generate",
		Short: "Make a new random AES-256 key (base64): into a new 0600 --key-file, or to stdout",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := gossip.GenerateKey()
			if err != nil {
				return err
			}
			if keyFile == "" {
				fmt.Fprintln(o.out, k)
				return nil
			}
			if _, err := os.Lstat(keyFile); err == nil {
				return fail(ExitError, "--key-file %s exists; not replacing a key", keyFile)
			}
			if err := atomicfile.Write(keyFile, []byte(k+"\n"), 0o600); err != nil {
				return fail(ExitError, "--key-file: %v", err)
			}
			id, _ := gossip.KeyID(k)
			fmt.Fprintf(o.out, "key %s written to %s\n", id, keyFile)
			return nil
		},
	}
	keyFlag(generate)
	keys.AddCommand(
		&cobra.Command{
			Use:   "list",
			Short: "List installed keys by fingerprint, primary first",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return o.keysCall(cmd.Context(), &pb.GossipKeysRequest{Op: pb.GossipKeysRequest_OP_LIST})
			},
		},
		generate,
		install,
		op("use", pb.GossipKeysRequest_OP_USE, "Make an installed key the primary on every node (used for sending)"),
		op("remove", pb.GossipKeysRequest_OP_REMOVE, "Remove a key that is not the primary from every node"),
	)
	g := &cobra.Command{Use: "gossip", Short: "Cluster membership: encryption keys"}
	g.AddCommand(keys)
	return g
}

func exactArgs(n int, msg string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fail(ExitError, "%s", msg)
		}
		return nil
	}
}

// checkKeyID refuses anything but a fingerprint on the command line,
// above all a key put there by habit.
func checkKeyID(arg string) error {
	if _, err := gossip.KeyID(arg); err == nil {
		return fail(ExitError, "that is a key, not a key id: keys are never taken on the command line (every local user can read it); give its id (dhctl gossip keys list) or the key on stdin or --key-file")
	}
	if len(arg) != 8 || strings.Trim(strings.ToLower(arg), "0123456789abcdef") != "" {
		return fail(ExitError, "%d characters: not a key id (8 hex digits, as dhctl gossip keys list shows them)", len(arg))
	}
	return nil
}

// readKey reads one key from file, or from stdin (without echo when it is
// a terminal).
func (o *options) readKey(cmd *cobra.Command, file string) (string, error) {
	if file != "" {
		ring, err := gossip.LoadKeyring(file)
		if err != nil {
			return "", fail(ExitError, "--key-file: %v", err)
		}
		if n := len(ring.GetKeys()); n != 1 {
			return "", fail(ExitError, "--key-file %s holds %d keys; give a file with the one key", file, n)
		}
		return base64.StdEncoding.EncodeToString(ring.GetPrimaryKey()), nil
	}
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(o.errOut, "gossip key (base64, not echoed): ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(o.errOut)
		if err != nil {
			return "", fail(ExitError, "reading the key: %v", err)
		}
		in = strings.NewReader(string(b))
	}
	key, err := parseKeyInput(in)
	if err != nil {
		return "", fail(ExitError, "stdin: %v", err)
	}
	return key, nil
}

// keyInputLimit bounds what is read from stdin for a key: one base64 key
// is 44 bytes, with room for a comment line or two.
const keyInputLimit = 4096

// parseKeyInput reads the one key in r: its only line that is neither
// blank nor a # comment, checked to be a base64 AES-256 key. Errors never
// hold the key.
func parseKeyInput(r io.Reader) (string, error) {
	sc := bufio.NewScanner(io.LimitReader(r, keyInputLimit+1))
	sc.Buffer(make([]byte, 0, 512), keyInputLimit+1)
	var key string
	n := 0
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		n++
		key = line
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return "", fmt.Errorf("more than %d bytes; expected one base64 key", keyInputLimit)
		}
		return "", err
	}
	switch {
	case n == 0:
		return "", errors.New("no key (expected one base64 AES-256 key, as dhctl gossip keys generate prints)")
	case n > 1:
		return "", fmt.Errorf("%d keys; give one", n)
	}
	if _, err := gossip.KeyID(key); err != nil {
		return "", err
	}
	return key, nil
}

func (o *options) keysCall(ctx context.Context, req *pb.GossipKeysRequest) error {
	return o.call(ctx, 10*time.Second, func(ctx context.Context, c pb.AgentClient) error {
		resp, err := c.GossipKeys(ctx, req)
		if err != nil {
			return rpcError(err)
		}
		for i, id := range resp.KeyIds {
			role := ""
			if i == 0 {
				role = "  (primary)"
			}
			fmt.Fprintf(o.out, "%s%s\n", id, role)
		}
		return nil
	})
}
