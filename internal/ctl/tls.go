package ctl

import (
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
)

const day = 24 * time.Hour

func (o *options) tlsCmd() *cobra.Command {
	t := &cobra.Command{
		Use:   "tls",
		Short: "Create the cluster CA and the certificates for mutual TLS",
		Long: `Every TCP API of dhvisor (agent API, coordinator cluster API, raft
transport) speaks mutual TLS with a cluster CA. On an operator's machine,
not on a node, set up a cluster with:
  dhctl tls ca create --dir ~/dhvisor-ca
  dhctl tls cert create --coordinator --name c1 --ca-dir ~/dhvisor-ca --dir c1 --key-group dhvisor  # one per coordinator
  dhctl tls cert create --agent --name n1 --ca-dir ~/dhvisor-ca --dir n1          # one per node
  dhctl tls cert create --operator --name alice --ca-dir ~/dhvisor-ca --dir ~/.dhvisor  # one per operator
and copy ca.pem plus each certificate and key to /etc/dhvisor/tls on its host,
keeping their owners and modes (cp -p). ca-key.pem signs every certificate of
the cluster: it never goes to a node. Certificates are written 0644, keys 0600
(0640 of --key-group); the daemons refuse a key that others can read.
Certificates are checked by role and by the names agent.dhvisor and
coordinator.dhvisor, not by host name or IP, so they need no addresses.
Replaced certificate, key and CA files are picked up without a restart.`,
	}

	var caDir, caName string
	var caDays int
	caCreate := &cobra.Command{
		Use:   "create",
		Short: "Create the cluster CA: ca.pem and ca-key.pem in --dir",
		Long: `Create the cluster CA: <dir>/ca.pem (mode 0644), which every node and
operator needs, and <dir>/ca-key.pem (mode 0600), which signs certificates.
Whoever holds ca-key.pem can make a certificate of any role, admin included:
create the CA on an operator's machine, keep ca-key.pem off the nodes (offline
or in a vault), and copy only ca.pem to /etc/dhvisor/tls on each node.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if caDays <= 0 {
				return fail(ExitError, "--days %d: must be positive", caDays)
			}
			cert, key, err := tlsutil.CreateCA(caDir, caName, time.Duration(caDays)*day)
			if err != nil {
				return fail(ExitError, "%v", err)
			}
			fmt.Fprintln(o.out, cert)
			fmt.Fprintln(o.out, key)
			fmt.Fprintf(o.errOut, "%s signs every certificate of the cluster: keep it off the nodes (offline or in a vault); nodes need only %s.\n", key, cert)
			return nil
		},
	}
	caCreate.Flags().StringVar(&caDir, "dir", ".", "directory to write ca.pem and ca-key.pem to")
	caCreate.Flags().StringVar(&caName, "name", tlsutil.DefaultCAName, "the CA's common name")
	caCreate.Flags().IntVar(&caDays, "days", 3650, "validity in days")
	ca := &cobra.Command{Use: "ca", Short: "The cluster certificate authority"}
	ca.AddCommand(caCreate)

	var (
		agent, coordinator, operator bool
		name, caFile, caKey, dir     string
		signDir, keyGroup            string
		dns, ips                     []string
		days                         int
	)
	certCreate := &cobra.Command{
		Use:   "create --agent|--coordinator|--operator [--name NAME]",
		Short: "Create a certificate and key signed by the cluster CA: <role>-<name>.pem and <role>-<name>-key.pem in --dir",
		Long: `Create a certificate and key signed by the cluster CA, written to
<dir>/<role>-<name>.pem (mode 0644) and <dir>/<role>-<name>-key.pem (mode 0600;
0640 of group --key-group when given: --key-group dhvisor for a coordinator's
key, which dhcoord reads as the dhvisor user).

Agent and coordinator certificates serve and connect: they carry the DNS names
agent.dhvisor or coordinator.dhvisor and localhost, the IP 127.0.0.1, and any
--dns and --ip. Operator certificates (for dhctl) only connect.

--name defaults to this host's name for --agent and --coordinator and to $USER
for --operator. Existing files are never overwritten.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var role tlsutil.Role
			n := 0
			for r, set := range map[tlsutil.Role]bool{tlsutil.RoleAgent: agent, tlsutil.RoleCoordinator: coordinator, tlsutil.RoleOperator: operator} {
				if set {
					role = r
					n++
				}
			}
			if n != 1 {
				return fail(ExitError, "give exactly one of --agent, --coordinator, --operator")
			}
			if days < 0 {
				return fail(ExitError, "--days %d: must not be negative", days)
			}
			if name == "" {
				name = defaultCertName(role)
				if name == "" {
					return fail(ExitError, "--name is required (no default found)")
				}
			}
			req := tlsutil.CertRequest{Role: role, Name: name, DNS: dns, Validity: time.Duration(days) * day}
			for _, s := range ips {
				ip := net.ParseIP(s)
				if ip == nil {
					return fail(ExitError, "--ip %q: not an IP address", s)
				}
				req.IPs = append(req.IPs, ip)
			}
			if keyGroup != "" {
				g, err := user.LookupGroup(keyGroup)
				if err != nil {
					return fail(ExitError, "--key-group %q: %v", keyGroup, err)
				}
				gid, err := strconv.Atoi(g.Gid)
				if err != nil {
					return fail(ExitError, "--key-group %q: gid %q is not a number", keyGroup, g.Gid)
				}
				req.KeyGroup = &gid
			}
			if signDir == "" {
				signDir = dir
			}
			if caFile == "" {
				caFile = filepath.Join(signDir, "ca.pem")
			}
			if caKey == "" {
				caKey = filepath.Join(signDir, "ca-key.pem")
			}
			cert, key, err := tlsutil.CreateCert(caFile, caKey, dir, req)
			if err != nil {
				return fail(ExitError, "%v", err)
			}
			fmt.Fprintln(o.out, cert)
			fmt.Fprintln(o.out, key)
			return nil
		},
	}
	f := certCreate.Flags()
	f.BoolVar(&agent, "agent", false, "an agent (node) certificate")
	f.BoolVar(&coordinator, "coordinator", false, "a coordinator certificate")
	f.BoolVar(&operator, "operator", false, "an operator (dhctl user) certificate")
	f.StringVar(&name, "name", "", "common name: the node name or user name (default: host name, or $USER for --operator)")
	f.StringSliceVar(&dns, "dns", nil, "extra DNS name (repeatable)")
	f.StringSliceVar(&ips, "ip", nil, "extra IP address (repeatable)")
	f.StringVar(&signDir, "ca-dir", "", "directory of the CA's ca.pem and ca-key.pem (default --dir)")
	f.StringVar(&caFile, "ca", "", "CA certificate (default <ca-dir>/ca.pem)")
	f.StringVar(&caKey, "ca-key", "", "CA key (default <ca-dir>/ca-key.pem)")
	f.StringVar(&keyGroup, "key-group", "", "give the key to this group, mode 0640 (dhvisor for a coordinator's key)")
	f.StringVar(&dir, "dir", ".", "directory to write the certificate and key to")
	f.IntVar(&days, "days", 0, "validity in days (default 1825 for agent and coordinator, 365 for operator; never past the CA's expiry)")
	cert := &cobra.Command{Use: "cert", Short: "Certificates signed by the cluster CA"}
	cert.AddCommand(certCreate)

	t.AddCommand(ca, cert)
	return t
}

// defaultCertName is the host name for agent and coordinator certificates
// (as the agent's default node name) and the user name for operators.
func defaultCertName(r tlsutil.Role) string {
	if r != tlsutil.RoleOperator {
		h, _ := os.Hostname()
		return h
	}
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}
