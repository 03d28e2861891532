package config

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/dhvisor/dhvisor/roles"
)

// Role is a named set of services a node can run.
type Role struct {
	Name        string   `yaml:"role"`
	Aliases     []string `yaml:"aliases"`
	Description string   `yaml:"description"`
	Include     []string `yaml:"include"`
	Services    []string `yaml:"services"`
	File        string   `yaml:"-"`
}

type serviceFile struct {
	// Defaults apply to every service of the same file (the launch
	// command, typically), under the service's own fields.
	Defaults yaml.Node            `yaml:"defaults"`
	Services map[string]yaml.Node `yaml:"services"`
}

// Catalogue holds every known role and service definition: the ones shipped
// in roles/ and a site's own from the agent's roles_dir.
type Catalogue struct {
	roles    map[string]*Role // by name and by alias
	services map[string]*yaml.Node
	svcKey   map[string]*yaml.Node // key node, for "defined at"
	org      origins
}

// LoadCatalogue reads the shipped definitions and, when siteDir is not empty
// and exists, the site's *.yaml files in it.
func LoadCatalogue(siteDir string) (*Catalogue, error) {
	c := &Catalogue{roles: map[string]*Role{}, services: map[string]*yaml.Node{}, svcKey: map[string]*yaml.Node{}, org: origins{}}
	var es Errors
	c.addFS(&es, roles.FS, "roles")
	if siteDir != "" {
		if st, err := os.Stat(siteDir); err == nil && st.IsDir() {
			c.addFS(&es, os.DirFS(siteDir), siteDir)
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			es.add(siteDir, 0, "", "cannot read roles directory: %v", err)
		}
	}
	c.checkRoles(&es)
	return c, es.err()
}

func (c *Catalogue) addFS(es *Errors, fsys fs.FS, label string) {
	names, err := fs.Glob(fsys, "*.yaml")
	if err != nil {
		es.add(label, 0, "", "%v", err)
		return
	}
	sort.Strings(names)
	for _, name := range names {
		data, err := fs.ReadFile(fsys, name)
		file := path.Join(label, name)
		if err != nil {
			es.add(file, 0, "", "cannot read: %v", err)
			continue
		}
		c.addFile(es, file, data)
	}
}

// addFile adds one role or service file. A file with a top-level role: key is
// a role; otherwise it holds service definitions under services:.
func (c *Catalogue) addFile(es *Errors, file string, data []byte) {
	src, err := parseYAML(file, data, c.org)
	if err != nil {
		*es = append(*es, err.(Errors)...)
		return
	}
	if v, _ := mapValue(src.root, "role"); v != nil {
		var r Role
		if !decodeNode(es, file, src.root, &r, "") {
			return
		}
		r.File = file
		for _, name := range append([]string{r.Name}, r.Aliases...) {
			if name == "" {
				es.add(file, v.Line, "role", "a role needs a name")
				continue
			}
			if prev, dup := c.roles[name]; dup {
				es.add(file, v.Line, "role", "role name %q is already used by %s", name, prev.File)
				continue
			}
			c.roles[name] = &r
		}
		return
	}
	var sf serviceFile
	if !decodeNode(es, file, src.root, &sf, "") {
		return
	}
	fileDefaults, _ := mapValue(src.root, "defaults")
	if fileDefaults != nil {
		var probe Service
		if !decodeNode(es, file, fileDefaults, &probe, "defaults") {
			return
		}
	}
	defs, _ := mapValue(src.root, "services")
	for i := 0; defs != nil && i+1 < len(defs.Content); i += 2 {
		k, v := defs.Content[i], defs.Content[i+1]
		v = merge(fileDefaults, v)
		if prev, dup := c.svcKey[k.Value]; dup {
			es.add(file, k.Line, "services."+k.Value, "service is already defined at %s:%d; override it in agent.yaml instead", c.org[prev], prev.Line)
			continue
		}
		var probe Service
		if decodeNode(es, file, v, &probe, "services."+k.Value) {
			c.services[k.Value] = v
			c.svcKey[k.Value] = k
		}
	}
}

func (c *Catalogue) checkRoles(es *Errors) {
	for _, name := range c.RoleNames() {
		r := c.roles[name]
		if _, err := c.Expand([]string{name}); err != nil {
			es.add(r.File, 0, "role "+name, "%v", err)
		}
	}
}

// RoleNames returns the canonical names of all roles.
func (c *Catalogue) RoleNames() []string {
	var out []string
	for name, r := range c.roles {
		if name == r.Name {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Role returns a role by name or alias.
func (c *Catalogue) Role(name string) (*Role, bool) { r, ok := c.roles[name]; return r, ok }

// HasService reports whether a service of that name is defined.
func (c *Catalogue) HasService(name string) bool { _, ok := c.services[name]; return ok }

// Expand returns the services of the given roles, includes followed, each
// once, in the order first met.
func (c *Catalogue) Expand(roleNames []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	visiting := map[string]bool{}
	var visit func(name string, via []string) error
	visit = func(name string, via []string) error {
		r, ok := c.roles[name]
		if !ok {
			return errors.New("unknown role " + quote(name) + " (known: " + strings.Join(c.RoleNames(), ", ") + ")")
		}
		if visiting[r.Name] {
			return errors.New("roles include each other: " + strings.Join(append(via, r.Name), " -> "))
		}
		visiting[r.Name] = true
		defer delete(visiting, r.Name)
		for _, inc := range r.Include {
			if err := visit(inc, append(via, r.Name)); err != nil {
				return err
			}
		}
		for _, s := range r.Services {
			if !c.HasService(s) {
				return errors.New("role " + r.Name + " (" + r.File + ") lists unknown service " + quote(s))
			}
			if !seen[s] {
				seen[s] = true
				out = append(out, s)
			}
		}
		return nil
	}
	for _, n := range roleNames {
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func quote(s string) string { return `"` + s + `"` }

// Reaches reports whether the roles, includes followed, take in role target
// (by name or alias). Unknown roles reach nothing; Expand reports them.
func (c *Catalogue) Reaches(roleNames []string, target string) bool {
	want, ok := c.roles[target]
	if !ok {
		return false
	}
	seen := map[*Role]bool{}
	var visit func(name string) bool
	visit = func(name string) bool {
		r, ok := c.roles[name]
		if !ok || seen[r] {
			return false
		}
		seen[r] = true
		if r == want {
			return true
		}
		for _, inc := range r.Include {
			if visit(inc) {
				return true
			}
		}
		return false
	}
	for _, n := range roleNames {
		if visit(n) {
			return true
		}
	}
	return false
}
