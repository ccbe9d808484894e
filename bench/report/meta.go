package main

import (
	"bufio"
	"io"
	"strings"
)

// Meta is what bench/run.sh recorded about a run in meta.txt: one
// "key: value" a line; "command" may repeat and keeps its order.
type Meta struct {
	Values   map[string]string
	Commands []string
}

// ParseMeta reads meta.txt.
func ParseMeta(r io.Reader) (Meta, error) {
	m := Meta{Values: map[string]string{}}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if k == "command" {
			m.Commands = append(m.Commands, v)
			continue
		}
		m.Values[k] = v
	}
	return m, sc.Err()
}

// Get returns the value of key or "not recorded": the report never makes a
// figure up.
func (m Meta) Get(key string) string {
	if v := m.Values[key]; v != "" {
		return v
	}
	return "not recorded"
}
