package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dhvisor/dhvisor/internal/properties"
)

// hostLookupTimeout bounds the DNS lookups that give a host its names, so
// a dead resolver delays dhctl, not hangs it.
const hostLookupTimeout = 5 * time.Second

// propsFlags say which process, on which host, reads the file.
type propsFlags struct {
	process string
	hosts   []string
	dns     bool
	set     []string
	output  string
}

func (f *propsFlags) add(cmd *cobra.Command) {
	fl := cmd.PersistentFlags()
	fl.StringVar(&f.process, "process", "", "the Deephaven process reading the file (sets process.name and service.name, as Deephaven's launcher does)")
	fl.StringSliceVar(&f.hosts, "host", nil, "the host it runs on, repeatable for each of its names (default: this host's names: hostname, short name, addresses and their names)")
	fl.BoolVar(&f.dns, "dns", true, "also give each --host the addresses DNS has for it and their names, as Deephaven finds its host's names; --dns=false takes each name (and its short name) alone")
	fl.StringArrayVar(&f.set, "set", nil, "another property of the process, key=value (repeatable), as a -D of its JVM: scopes compare against it and it overrides the file")
	fl.StringVarP(&f.output, "output", "o", outputText, "output format: text (key=value lines, themselves a properties file) or json")
}

// context is the evaluating process: its host's names and its own
// properties. Every flag is checked before any is used.
func (f *propsFlags) context(ctx context.Context) (properties.Context, error) {
	if err := checkOutput(f.output); err != nil {
		return properties.Context{}, err
	}
	props := map[string]string{}
	if f.process != "" {
		if strings.ContainsFunc(f.process, isBlank) {
			return properties.Context{}, fail(ExitError, "--process %q: a process name has no blanks (e.g. db_query_server)", f.process)
		}
		props = properties.ProcessProps(f.process)
	}
	setBy := map[string]string{}
	for _, kv := range f.set {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return properties.Context{}, fail(ExitError, "--set %q: expected key=value (e.g. service.name=db_query_server)", kv)
		}
		if prev, dup := setBy[k]; dup {
			return properties.Context{}, fail(ExitError, "--set %q: %s is already set by --set %q", kv, k, prev)
		}
		if fromProcess, ok := props[k]; ok && k == "process.name" && v != fromProcess {
			return properties.Context{}, fail(ExitError, "--set %q contradicts --process %s (give one of them)", kv, f.process)
		}
		setBy[k] = kv
		props[k] = v
	}
	for _, h := range f.hosts {
		if h == "" || strings.ContainsFunc(h, isBlank) {
			return properties.Context{}, fail(ExitError, "--host %q: expected a host name or address (e.g. query-1.example.com)", h)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, hostLookupTimeout)
	defer cancel()
	if len(f.hosts) == 0 {
		hosts := properties.LocalHosts(ctx)
		if len(hosts) == 0 {
			return properties.Context{}, fail(ExitError, "this host has no name (os.Hostname failed); give --host")
		}
		return properties.Context{Hosts: hosts, Props: props}, nil
	}
	var r *net.Resolver
	if f.dns {
		r = net.DefaultResolver
	}
	var hosts []string
	for _, h := range f.hosts {
		for _, n := range properties.HostNames(ctx, r, h) {
			if !slices.Contains(hosts, n) {
				hosts = append(hosts, n)
			}
		}
	}
	return properties.Context{Hosts: hosts, Props: props}, nil
}

func isBlank(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' }

func (o *options) propertiesCmd() *cobra.Command {
	var f propsFlags
	cmd := &cobra.Command{
		Use:     "properties",
		Aliases: []string{"props"},
		Short:   "Deephaven properties files as one process on one host reads them (scopes, includefiles, final)",
		Long: `Reads a Deephaven .prop file by Deephaven's own rules: includefiles first,
relative to the including file; scopes [key=v1|v2, host=h] { ... } applied
only when they match the process and host given; final and finalize;
continuations and Java escapes. The process's own properties (--process,
--set) are what scopes compare against, and, like -D options of its JVM,
they override the file. A file that breaks a rule is refused with every
problem at its file:line:column (exit status 2).`,
	}
	f.add(cmd)
	show := &cobra.Command{
		Use:   "show FILE",
		Short: "Print every property the process sees, sorted: key=value lines (a properties file themselves), or a JSON object with -o json",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			view, err := o.propertiesView(cmd.Context(), &f, args[0])
			if err != nil {
				return err
			}
			if f.output == outputJSON {
				return o.writeJSON(view)
			}
			for _, k := range slices.Sorted(maps.Keys(view)) {
				fmt.Fprintln(o.out, properties.Line(k, view[k]))
			}
			return nil
		},
	}
	get := &cobra.Command{
		Use:   "get FILE KEY...",
		Short: "Print the values of KEYs as the process sees them, one a line as they are (exit 1, printing nothing, when one is not set)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			view, err := o.propertiesView(cmd.Context(), &f, args[0])
			if err != nil {
				return err
			}
			var missing []string
			got := map[string]string{}
			for _, k := range args[1:] {
				v, ok := view[k]
				if !ok {
					missing = append(missing, k)
				}
				got[k] = v
			}
			if len(missing) > 0 {
				return fail(ExitNotOK, "not set for %s: %s", f.describe(), strings.Join(missing, ", "))
			}
			if f.output == outputJSON {
				return o.writeJSON(got)
			}
			for _, k := range args[1:] {
				fmt.Fprintln(o.out, got[k])
			}
			return nil
		},
	}
	cmd.AddCommand(show, get)
	return cmd
}

// describe names the evaluating process for messages.
func (f *propsFlags) describe() string {
	who := "a process without process.name"
	if f.process != "" {
		who = f.process
	}
	if len(f.hosts) == 0 {
		return who + " on this host"
	}
	return who + " on " + strings.Join(f.hosts, ", ")
}

func (o *options) writeJSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(o.out, "%s\n", b)
	return err
}

// propertiesView reads file as the process of f sees it.
func (o *options) propertiesView(ctx context.Context, f *propsFlags, file string) (map[string]string, error) {
	pctx, err := f.context(ctx)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fail(ExitError, "cannot read %v", err)
	}
	view, err := propertiesView(file, data, properties.OpenFile, pctx)
	if err != nil {
		return nil, fail(ExitError, "%s refused:\n%s", file, strings.TrimSuffix(indent(err.Error()), "\n"))
	}
	return view, nil
}

// propertiesView is what the process of pctx sees in file (data, its
// includes read through open): the file evaluated for it, then its own
// properties over that, as a JVM's system properties override every file.
func propertiesView(file string, data []byte, open properties.Opener, pctx properties.Context) (map[string]string, error) {
	parsed, err := properties.Parse(file, data, open)
	if err != nil {
		return nil, err
	}
	vals, err := parsed.Eval(pctx)
	if err != nil {
		return nil, err
	}
	view := make(map[string]string, len(vals)+len(pctx.Props))
	for k, v := range vals {
		view[k] = v.Value
	}
	maps.Copy(view, pctx.Props)
	return view, nil
}
