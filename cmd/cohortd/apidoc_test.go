package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

const apiDocPath = "../../docs/API.md"

// servesOperation reports whether the binary routes method on the
// document's path template (parameters filled with placeholders): its
// "no route" 404 and its 405 mean it does not.
func servesOperation(t *testing.T, d *daemon, method, path, admin string) bool {
	t.Helper()
	concrete := regexp.MustCompile(`\{[^}]+\}`).ReplaceAllString(path, "x")
	r := d.do(req{method: method, path: concrete, token: admin})
	return r.status != 405 && !(r.status == 404 && bytes.Contains(r.body, []byte("no route")))
}

// apiDocEndpoint is one endpoint section of docs/API.md: a heading
// "#### `METHOD /path`" and, before the next heading, a line
// "Statuses: `200` `400` …".
type apiDocEndpoint struct {
	line     int
	statuses []string
}

var (
	endpointHeading = regexp.MustCompile("^#{2,4} `(GET|POST|PUT|DELETE|PATCH) (/[^` ]*)`$")
	anyHeading      = regexp.MustCompile(`^#{1,6} `)
	statusCode      = regexp.MustCompile("`([1-5][0-9][0-9])`")
)

// parseAPIDoc returns the endpoints of docs/API.md by "METHOD /path", and
// the text of its headings.
func parseAPIDoc(t *testing.T) (map[string]*apiDocEndpoint, []string) {
	t.Helper()
	b, err := os.ReadFile(apiDocPath)
	if err != nil {
		t.Fatal(err)
	}
	eps := map[string]*apiDocEndpoint{}
	var headings []string
	var cur *apiDocEndpoint
	var curName string
	for i, ln := range strings.Split(string(b), "\n") {
		if anyHeading.MatchString(ln) {
			headings = append(headings, ln)
			if cur != nil && cur.statuses == nil {
				t.Errorf("docs/API.md:%d: %s has no Statuses line", cur.line, curName)
			}
			cur = nil
			if m := endpointHeading.FindStringSubmatch(ln); m != nil {
				curName = m[1] + " " + m[2]
				if prev := eps[curName]; prev != nil {
					t.Errorf("docs/API.md:%d: %s documented twice (first on line %d)", i+1, curName, prev.line)
				}
				cur = &apiDocEndpoint{line: i + 1}
				eps[curName] = cur
			}
			continue
		}
		if cur != nil && strings.HasPrefix(ln, "Statuses:") {
			if cur.statuses != nil {
				t.Errorf("docs/API.md:%d: a second Statuses line for %s", i+1, curName)
			}
			cur.statuses = []string{}
			for _, m := range statusCode.FindAllStringSubmatch(ln, -1) {
				cur.statuses = append(cur.statuses, m[1])
			}
		}
	}
	if cur != nil && cur.statuses == nil {
		t.Errorf("docs/API.md:%d: %s has no Statuses line", cur.line, curName)
	}
	return eps, headings
}

// TestAPIDocMatchesOpenAPI keeps docs/API.md and docs/openapi.yaml in step:
// the same endpoints (path and method) and, for each, the same statuses.
func TestAPIDocMatchesOpenAPI(t *testing.T) {
	t.Parallel()
	doc := loadOpenAPI(t)
	eps, _ := parseAPIDoc(t)
	if len(eps) == 0 {
		t.Fatal("no endpoint sections found in docs/API.md")
	}
	inSpec := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			name := method + " " + path
			inSpec[name] = true
			ep := eps[name]
			if ep == nil {
				t.Errorf("%s is in docs/openapi.yaml but has no section in docs/API.md", name)
				continue
			}
			var want []string
			for code := range op.Responses.Map() {
				want = append(want, code)
			}
			sort.Strings(want)
			got := slices.Clone(ep.statuses)
			sort.Strings(got)
			if !slices.Equal(got, want) {
				t.Errorf("%s: docs/API.md:%d lists statuses %v, docs/openapi.yaml %v", name, ep.line, got, want)
			}
		}
	}
	for name, ep := range eps {
		if !inSpec[name] {
			t.Errorf("docs/API.md:%d documents %s, which docs/openapi.yaml lacks", ep.line, name)
		}
	}
}

// TestAPIDocSections: the numbered sections that code comments cite exist,
// and every "docs/API.md §N" citation in the repository's Go files names
// one of them.
func TestAPIDocSections(t *testing.T) {
	t.Parallel()
	_, headings := parseAPIDoc(t)
	sections := map[string]bool{}
	num := regexp.MustCompile(`^#{2,3} ([0-9]+[a-z]?(?:\.[0-9]+)?)\.? `)
	for _, h := range headings {
		if m := num.FindStringSubmatch(h); m != nil {
			sections[m[1]] = true
		}
	}
	for _, s := range []string{"1", "2", "2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8", "3", "3b", "4", "5", "6", "7", "8"} {
		if !sections[s] {
			t.Errorf("docs/API.md has no section §%s", s)
		}
	}
	cite := regexp.MustCompile(`docs/API\.md §([0-9]+[a-z]?(?:\.[0-9]+)?)(?: rule ([0-9]+))?`)
	n := 0
	err := filepath.WalkDir("../..", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && p != "../.." || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range cite.FindAllStringSubmatch(string(b), -1) {
			n++
			s := strings.TrimSuffix(m[1], ".")
			if m[2] != "" {
				s += "." + m[2] // "§2 rule 8" is §2.8
			}
			if !sections[s] {
				t.Errorf("%s cites docs/API.md §%s, which does not exist", p, s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Error("found no docs/API.md citations at all; is the walk rooted right?")
	}
}

// TestDocLinks: every relative link of the repository's Markdown files
// reaches a file of the repository (and, with a #fragment into a Markdown
// file, one of its headings), and no document points at files a clone
// lacks.
func TestDocLinks(t *testing.T) {
	t.Parallel()
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	var mds []string
	err := filepath.WalkDir("../..", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && p != "../.." || d.Name() == "testdata" || d.Name() == "results") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".md") {
			mds = append(mds, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(mds) < 5 {
		t.Fatalf("found only %v", mds)
	}
	for _, md := range mds {
		b, err := os.ReadFile(md)
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{"../shared", "SPEC.md", "SPEC §"} {
			if bytes.Contains(b, []byte(bad)) {
				t.Errorf("%s mentions %q, which a clone lacks", md, bad)
			}
		}
		for _, m := range link.FindAllStringSubmatch(string(b), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, frag, _ := strings.Cut(target, "#")
			p := md
			if file != "" {
				p = filepath.Join(filepath.Dir(md), file)
				if _, err := os.Stat(p); err != nil {
					t.Errorf("%s links to %s, which does not exist", md, target)
					continue
				}
			}
			if frag != "" && strings.HasSuffix(p, ".md") && !slices.Contains(markdownAnchors(t, p), frag) {
				t.Errorf("%s links to %s, but %s has no such heading", md, target, p)
			}
		}
	}
}

// markdownAnchors returns the GitHub anchors of the headings of a Markdown
// file: lower case, punctuation other than '-' and '_' dropped, spaces as '-'.
func markdownAnchors(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var anchors []string
	inCode := false
	for _, ln := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(ln, "```") {
			inCode = !inCode
		}
		if inCode || !anyHeading.MatchString(ln) {
			continue
		}
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(ln, "#")))
		var a strings.Builder
		for _, r := range h {
			switch {
			case r == ' ':
				a.WriteByte('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
				a.WriteRune(r)
			}
		}
		anchors = append(anchors, a.String())
	}
	return anchors
}
