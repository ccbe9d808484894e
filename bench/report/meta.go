package main

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
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

// checkout is the working tree the results directory belongs to: its root
// (the directory holding go.mod) and top-level directories. meta.txt
// records commands exactly as run, and a command may name a directory of
// the checkout it ran in (COHORTD_BENCH_DIR=/home/…/cohortd/bench/.data):
// that path means nothing in another checkout and must not reach
// BENCHMARKS.md, so the report writes it relative to the root.
type checkout struct {
	root string   // absolute; "" when no go.mod was found above the results
	tops []string // names of the root's top-level directories
}

// findCheckout walks up from dir to the directory holding go.mod.
func findCheckout(dir string) checkout {
	d, err := filepath.Abs(dir)
	if err != nil {
		return checkout{}
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			break
		}
		up := filepath.Dir(d)
		if up == d {
			return checkout{}
		}
		d = up
	}
	c := checkout{root: d}
	entries, _ := os.ReadDir(d)
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			c.tops = append(c.tops, e.Name())
		}
	}
	return c
}

// rel returns dir relative to the root, or dir as given outside a checkout.
func (c checkout) rel(dir string) string {
	if c.root == "" {
		return filepath.ToSlash(dir)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return filepath.ToSlash(dir)
	}
	r, err := filepath.Rel(c.root, abs)
	if err != nil || strings.HasPrefix(r, "..") {
		return filepath.ToSlash(dir)
	}
	return filepath.ToSlash(r)
}

// repoPrefix stands for the root of the checkout a command ran in, as
// bench/crossproc.sh writes <tmp> for its temporary directory: a command
// may run outside the root (go test runs a benchmark in its package
// directory), so the path keeps saying where it starts.
const repoPrefix = "<repo>/"

// absPath matches an absolute path at the start of s or after a space, an
// "=" or a quote.
var absPath = regexp.MustCompile(`(?:^|[\s='"])(/[^\s'"]+)`)

// relPaths rewrites the absolute paths in s that lead into a checkout of
// the repository: a path under this checkout's root loses the root; a path
// of another checkout (results measured in one and reported from another)
// loses everything before its first top-level directory of the repository,
// so /elsewhere/cohortd/bench/.data becomes <repo>/bench/.data. Other absolute
// paths (/dev/vda, /proc/<pid>/stat) are left as they are.
func (c checkout) relPaths(s string) string {
	var b strings.Builder
	last := 0
	for _, m := range absPath.FindAllStringSubmatchIndex(s, -1) {
		start, end := m[2], m[3]
		b.WriteString(s[last:start])
		b.WriteString(c.relPath(s[start:end]))
		last = end
	}
	b.WriteString(s[last:])
	return b.String()
}

func (c checkout) relPath(p string) string {
	if c.root != "" {
		if r, ok := strings.CutPrefix(p, filepath.ToSlash(c.root)+"/"); ok {
			return repoPrefix + r
		}
	}
	segs := strings.Split(p, "/")
	// segs[0] is the empty string before the leading slash; a path that
	// starts at a top-level name (/bench/x) is not a checkout's.
	for i := 2; i < len(segs); i++ {
		if slices.Contains(c.tops, segs[i]) {
			return repoPrefix + strings.Join(segs[i:], "/")
		}
	}
	return p
}
