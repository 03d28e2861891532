package ctl

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

func (o *options) gossipCmd() *cobra.Command {
	keys := &cobra.Command{
		Use:   "keys",
		Short: "Manage the gossip encryption keyring, cluster-wide",
		Long: `Rotate the gossip key without downtime, from any node:
  dhctl gossip keys generate            # prints a new key
  dhctl gossip keys install NEWKEY      # every node accepts it too
  dhctl gossip keys use NEWKEY          # every node sends with it
  dhctl gossip keys remove OLDKEY       # the old key is gone everywhere
Each change is written to every node's key file (gossip.key_file).`,
	}
	op := func(name string, code pb.GossipKeysRequest_Op, short string) *cobra.Command {
		return &cobra.Command{
			Use:   name + " KEY",
			Short: short,
			Args:  exactArgs(1, name+": give the base64 key"),
			RunE: func(cmd *cobra.Command, args []string) error {
				return o.keysCall(cmd.Context(), code, args[0])
			},
		}
	}
	keys.AddCommand(
		&cobra.Command{
			Use:   "list",
			Short: "List installed keys, primary first",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return o.keysCall(cmd.Context(), pb.GossipKeysRequest_OP_LIST, "")
			},
		},
		&cobra.Command{
			Use:   "generate",
			Short: "Print a new random AES-256 key (base64) for a key file or install",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				k := make([]byte, 32)
				if _, err := rand.Read(k); err != nil {
					return err
				}
				fmt.Fprintln(o.out, base64.StdEncoding.EncodeToString(k))
				return nil
			},
		},
		op("install", pb.GossipKeysRequest_OP_INSTALL, "Install a key on every node (accepted for receiving)"),
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

func (o *options) keysCall(ctx context.Context, op pb.GossipKeysRequest_Op, key string) error {
	return o.call(ctx, 10*time.Second, func(ctx context.Context, c pb.AgentClient) error {
		resp, err := c.GossipKeys(ctx, &pb.GossipKeysRequest{Op: op, Key: key})
		if err != nil {
			return rpcError(err)
		}
		for i, k := range resp.Keys {
			id := ""
			if i < len(resp.KeyIds) {
				id = resp.KeyIds[i]
			}
			role := ""
			if i == 0 {
				role = "  (primary)"
			}
			fmt.Fprintf(o.out, "%s  id %s%s\n", k, id, role)
		}
		return nil
	})
}
