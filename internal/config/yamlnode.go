package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// source is one parsed YAML file. Every node remembers the file it came
// from, so errors found after overrides are merged still name the right file.
type source struct {
	file string
	root *yaml.Node // the document's top-level node
}

type origins map[*yaml.Node]string

var yamlLineRE = regexp.MustCompile(`line (\d+): (.*)`)

// parseYAML parses data as one YAML document and registers its nodes' file.
func parseYAML(file string, data []byte, org origins) (*source, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		line := 0
		if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = m[2]
		}
		return nil, Errors{{File: file, Line: line, Msg: "malformed YAML: " + msg}}
	}
	if len(doc.Content) == 0 {
		return &source{file: file, root: &yaml.Node{Kind: yaml.MappingNode}}, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, Errors{{File: file, Line: root.Line, Msg: "expected a mapping of keys to values at the top level"}}
	}
	var walk func(*yaml.Node)
	walk = func(n *yaml.Node) {
		org[n] = file
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(root)
	return &source{file: file, root: root}, nil
}

// mapValue returns the value node of key in mapping n, and its key node.
func mapValue(n *yaml.Node, key string) (val, keyNode *yaml.Node) {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1], n.Content[i]
		}
	}
	return nil, nil
}

// merge overlays over on base: mappings merge key by key, anything else
// (scalars, lists) is replaced whole. Neither input is modified; the result
// shares their leaf nodes so their origins stay known.
func merge(base, over *yaml.Node) *yaml.Node {
	if base == nil {
		return over
	}
	if over == nil {
		return base
	}
	if base.Kind != yaml.MappingNode || over.Kind != yaml.MappingNode {
		return over
	}
	out := &yaml.Node{Kind: yaml.MappingNode, Tag: base.Tag, Line: over.Line, Column: over.Column}
	out.Content = append(out.Content, base.Content...)
	for i := 0; i+1 < len(over.Content); i += 2 {
		k, v := over.Content[i], over.Content[i+1]
		replaced := false
		for j := 0; j+1 < len(out.Content); j += 2 {
			if out.Content[j].Value == k.Value {
				out.Content[j] = k
				out.Content[j+1] = merge(out.Content[j+1], v)
				replaced = true
				break
			}
		}
		if !replaced {
			out.Content = append(out.Content, k, v)
		}
	}
	return out
}

// locate finds the file and line of the deepest node on path below n.
func locate(org origins, n *yaml.Node, fallback string, path ...string) (string, int) {
	file, line := fallback, 0
	if f, ok := org[n]; ok {
		file, line = f, n.Line
	}
	for _, p := range path {
		var next, at *yaml.Node
		switch n.Kind {
		case yaml.MappingNode:
			next, at = mapValue(n, p)
		case yaml.SequenceNode:
			if i, err := strconv.Atoi(p); err == nil && i >= 0 && i < len(n.Content) {
				next, at = n.Content[i], n.Content[i]
			}
		}
		if next == nil {
			break
		}
		if f, ok := org[at]; ok {
			file, line = f, at.Line
		}
		n = next
	}
	return file, line
}

// checkFields reports keys of n that the Go type t has no yaml field for,
// recursing into nested structs, lists and maps. yaml.v3's KnownFields only
// works on a byte stream, which would lose the per-file origins of merged
// nodes, so unknown fields are found here instead.
func checkFields(es *Errors, file string, n *yaml.Node, t reflect.Type, field string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == reflect.TypeOf(yaml.Node{}) {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return // the decoder reports the type mismatch with its line
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			ft, ok := fields[k.Value]
			if !ok {
				es.add(file, k.Line, join(field, k.Value), "unknown field (expected one of %s)", strings.Join(sortedKeys(fields), ", "))
				continue
			}
			checkFields(es, file, v, ft, join(field, k.Value))
		}
	case reflect.Slice:
		if n.Kind == yaml.SequenceNode {
			for i, c := range n.Content {
				checkFields(es, file, c, t.Elem(), join(field, strconv.Itoa(i)))
			}
		}
	case reflect.Map:
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				checkFields(es, file, n.Content[i+1], t.Elem(), join(field, n.Content[i].Value))
			}
		}
	}
}

func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if opts == "inline" && f.Type.Kind() == reflect.Struct {
			// yaml.v3 lifts an inline struct's fields into the parent.
			for k, v := range yamlFields(f.Type) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// decodeNode decodes n into out after checking its fields; problems are
// reported against file, below field.
func decodeNode(es *Errors, file string, n *yaml.Node, out any, field string) bool {
	before := len(*es)
	checkFields(es, file, n, reflect.TypeOf(out), field)
	if err := n.Decode(out); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, msg := range te.Errors {
				line := 0
				if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
					line, _ = strconv.Atoi(m[1])
					msg = m[2]
				}
				es.add(file, line, field, "%s", friendlyTypeError(msg))
			}
		} else {
			msg, line := err.Error(), 0
			if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
				line, _ = strconv.Atoi(m[1])
				msg = m[2]
			}
			es.add(file, line, field, "%s", msg)
		}
	}
	return len(*es) == before
}

var unmarshalRE = regexp.MustCompile("cannot unmarshal !!(\\w+) `([^`]*)` into (\\S+)")

func friendlyTypeError(msg string) string {
	if m := unmarshalRE.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("%q is a %s, expected %s", m[2], m[1], goTypeWord(m[3]))
	}
	return msg
}

func goTypeWord(t string) string {
	switch {
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "map["):
		return "a mapping"
	case t == "int" || t == "float64" || t == "uint64":
		return "a number"
	case t == "bool":
		return "true or false"
	case t == "string":
		return "a string"
	}
	return "a " + strings.TrimPrefix(t, "config.")
}
