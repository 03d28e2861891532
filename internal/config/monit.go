package config

import (
	"errors"
	"fmt"

	"gopkg.in/yaml.v3"

	"github.com/dhvisor/dhvisor/internal/monit"
)

// MonitSource names monit control files the agent takes services from,
// as monit itself would read them (agent.yaml `monit: {include: [...]}`).
type MonitSource struct {
	Include []string `yaml:"include"`
}

// NotApplied is a monit statement the agent read and accepted, but that
// has no bearing on supervision (set httpd, check system, ...).
type NotApplied struct {
	File string
	Line int
	Text string
}

// routingKeys are what a catalogue entry adds to a service of the same
// name defined by a monit control file: how Envoy reaches it, which the
// control file does not say. Everything about running it is the file's.
var routingKeys = map[string]bool{"description": true, "ports": true, "envoy": true}

// importMonit reads the node's monit control files into one YAML node per
// service, each node registered under the file it came from so that
// errors name the monit file and line.
func (n *Node) importMonit(es *Errors, file string, org origins) (map[string]*yaml.Node, []string) {
	globs := n.Agent.Monit.Include
	if len(globs) == 0 {
		return nil, nil
	}
	im, err := monit.Load(globs)
	if err != nil {
		var merrs monit.Errors
		if !errors.As(err, &merrs) {
			es.add(file, 0, "monit.include", "%v", err)
			return nil, nil
		}
		for _, e := range merrs {
			msg := e.Msg
			if e.Column > 0 {
				msg = fmt.Sprintf("column %d: %s", e.Column, e.Msg)
			}
			es.add(e.File, e.Line, "monit", "%s", msg)
		}
		return nil, nil
	}
	out := map[string]*yaml.Node{}
	var names []string
	for _, s := range im.Services {
		var walk func(*yaml.Node)
		walk = func(y *yaml.Node) {
			org[y] = s.File
			if f, ok := s.Origins[y]; ok {
				org[y] = f
			}
			for _, c := range y.Content {
				walk(c)
			}
		}
		walk(s.Node)
		out[s.Name] = s.Node
		names = append(names, s.Name)
	}
	for _, st := range im.NotApplied {
		n.NotApplied = append(n.NotApplied, NotApplied{File: st.File, Line: st.Line, Text: st.Text})
	}
	return out, names
}

// routingOnly keeps a catalogue entry's routing keys.
func routingOnly(def *yaml.Node) *yaml.Node {
	if def == nil || def.Kind != yaml.MappingNode {
		return nil
	}
	out := &yaml.Node{Kind: yaml.MappingNode, Tag: def.Tag, Line: def.Line, Column: def.Column}
	for i := 0; i+1 < len(def.Content); i += 2 {
		if routingKeys[def.Content[i].Value] {
			out.Content = append(out.Content, def.Content[i], def.Content[i+1])
		}
	}
	return out
}
