// Command report regenerates BENCHMARKS.md and its plots from the raw
// go test -bench outputs that bench/run.sh keeps in bench/results/, so a
// report can be rebuilt without rerunning anything:
//
//	go run ./bench/report -results bench/results -out BENCHMARKS.md -plots bench/plots
//
// Each subdirectory of -results is a variant (short, full, …) holding
// meta.txt (machine, Go version, commands; written by run.sh) and *.txt
// benchmark outputs. Every figure in the report comes from those files.
//
// The outputs are read with golang.org/x/perf/benchfmt and each figure is
// summarised with benchmath as benchstat does: the median of the runs and
// its 95% confidence interval (printed ±4%), or the median alone when
// fewer than 6 runs leave the interval unbounded. Result lines that do
// not parse are not guessed at: the report names them, file and line.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

func main() {
	results := flag.String("results", "bench/results", "directory of variant subdirectories with raw go-bench outputs")
	out := flag.String("out", "BENCHMARKS.md", "Markdown file to write")
	plots := flag.String("plots", "bench/plots", "directory for the SVG plots")
	flag.Parse()
	if err := run(*results, *out, *plots, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

// Variant is one run of the suite: its metadata and results.
type Variant struct {
	Name string
	Meta Meta
	Set  *Set
	// Files are the raw outputs, relative to the results directory.
	Files []string
}

// run writes the report and its plots; warn gets the result lines that
// were skipped as malformed (the report lists them too).
func run(resultsDir, out, plotDir string, warn io.Writer) error {
	vs, err := LoadVariants(resultsDir)
	if err != nil {
		return err
	}
	if len(vs) == 0 {
		return fmt.Errorf("no results in %s: run bench/run.sh first", resultsDir)
	}
	for _, v := range vs {
		for _, e := range v.Set.Skipped {
			fmt.Fprintf(warn, "report: skipped %v\n", e)
		}
	}
	if err := os.MkdirAll(plotDir, 0o755); err != nil {
		return err
	}
	rel, err := filepath.Rel(filepath.Dir(out), plotDir)
	if err != nil {
		rel = plotDir
	}
	plots, err := WritePlots(vs, plotDir)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	WriteMarkdown(&buf, vs, findCheckout(resultsDir).rel(resultsDir), filepath.ToSlash(rel), plots)
	// The analysis — targets, how close each figure came and what limits
	// it — is written by people in ANALYSIS.md beside the results and
	// appended as is; the tables above it are generated.
	if notes, err := os.ReadFile(filepath.Join(resultsDir, "ANALYSIS.md")); err == nil {
		buf.WriteString("\n")
		buf.Write(notes)
	} else if !os.IsNotExist(err) {
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}

// variantOrder puts the known variants first.
func variantOrder(name string) int {
	if strings.HasPrefix(name, "crossproc") {
		return -1 // the cross-process table comes first
	}
	switch name {
	case "short":
		return 0
	case "full":
		return 1
	}
	return 2
}

// LoadVariants reads every subdirectory of dir that holds benchmark output.
func LoadVariants(dir string) ([]*Variant, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	co := findCheckout(dir)
	var vs []*Variant
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), "compare-") {
			continue // bench/compare.sh outputs are not a run of the suite
		}
		v := &Variant{Name: e.Name(), Set: &Set{}, Meta: Meta{Values: map[string]string{}}}
		sub := filepath.Join(dir, e.Name())
		if f, err := os.Open(filepath.Join(sub, "meta.txt")); err == nil {
			v.Meta, err = ParseMeta(f)
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("%s/meta.txt: %w", sub, err)
			}
			for k, val := range v.Meta.Values {
				v.Meta.Values[k] = co.relPaths(val)
			}
			for i, c := range v.Meta.Commands {
				v.Meta.Commands[i] = co.relPaths(c)
			}
		}
		files, _ := filepath.Glob(filepath.Join(sub, "*.txt"))
		slices.Sort(files)
		for _, p := range files {
			if filepath.Base(p) == "meta.txt" {
				continue
			}
			f, err := os.Open(p)
			if err != nil {
				return nil, err
			}
			err = v.Set.Parse(f, co.rel(p))
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			v.Files = append(v.Files, filepath.ToSlash(filepath.Join(e.Name(), filepath.Base(p))))
		}
		if len(v.Set.Results) > 0 {
			vs = append(vs, v)
		}
	}
	slices.SortFunc(vs, func(a, b *Variant) int {
		if d := variantOrder(a.Name) - variantOrder(b.Name); d != 0 {
			return d
		}
		return strings.Compare(a.Name, b.Name)
	})
	return vs, nil
}
