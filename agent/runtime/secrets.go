package runtime

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/dhvisor/dhvisor/agent/safefs"
	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/envfile"
	"github.com/dhvisor/dhvisor/internal/secretfile"
)

// ServiceVars are the service's own variables: Env (by name), then each
// of EnvFiles in turn, a later value of a name replacing an earlier one.
// The files are read now, as the agent (root): each must be a secret file
// (secretfile's rule), reached without a link that root does not own, so
// that a service user who can write somewhere on the path cannot point
// the agent at another of root's files and receive it as variables.
func ServiceVars(spec Spec) ([]envfile.Var, error) {
	var vars []envfile.Var
	at := map[string]int{}
	set := func(v envfile.Var) {
		if i, ok := at[v.Name]; ok {
			vars[i].Value = v.Value
			return
		}
		at[v.Name] = len(vars)
		vars = append(vars, v)
	}
	for _, k := range slices.Sorted(maps.Keys(spec.Env)) {
		set(envfile.Var{Name: k, Value: spec.Env[k]})
	}
	for _, p := range spec.EnvFiles {
		data, err := readSecret(p)
		if err != nil {
			return nil, fmt.Errorf("env file %w", err)
		}
		fvars, err := envfile.Parse(p, data)
		if err != nil {
			return nil, fmt.Errorf("env file %w", err)
		}
		for _, v := range fvars {
			if v.Name == config.ServiceEnv || v.Name == config.OwnerEnv {
				return nil, fmt.Errorf("env file %s: %s is dhvisor's own mark of the processes it starts", p, v.Name)
			}
			set(v)
		}
	}
	return vars, nil
}

// CheckCredentials checks the files of spec's credentials as ServiceVars
// checks env files; systemd reads them itself.
func CheckCredentials(spec Spec) error {
	for _, name := range slices.Sorted(maps.Keys(spec.Credentials)) {
		p := spec.Credentials[name]
		f, err := openSecret(p)
		if err != nil {
			return fmt.Errorf("credential %s: %w", name, err)
		}
		fi, err := f.Stat()
		if err == nil {
			err = secretfile.Check(p, fi)
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("credential %s: %w", name, err)
		}
	}
	return nil
}

func readSecret(p string) ([]byte, error) {
	f, err := openSecret(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return secretfile.ReadOpened(p, f)
}

func openSecret(p string) (*os.File, error) {
	d, err := safefs.OpenDir(filepath.Dir(p))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Open(filepath.Base(p))
}
