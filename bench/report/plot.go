package main

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Plot is a written SVG: its title and file name.
type Plot struct {
	Title string
	File  string
}

// series is one line of a plot: a name and its points.
type series struct {
	name string
	pts  plotter.XYs
}

// chart is a plot before it is drawn.
type chart struct {
	title, file, xLabel, yLabel string
	logX, logY                  bool
	lines                       map[string]*series
}

func newChart(title, file, x, y string, logX, logY bool) *chart {
	return &chart{title: title, file: file, xLabel: x, yLabel: y, logX: logX, logY: logY, lines: map[string]*series{}}
}

func (c *chart) add(line string, x, y float64) {
	if (c.logX && x <= 0) || (c.logY && y <= 0) || math.IsNaN(x) || math.IsNaN(y) {
		return
	}
	s := c.lines[line]
	if s == nil {
		s = &series{name: line}
		c.lines[line] = s
	}
	s.pts = append(s.pts, plotter.XY{X: x, Y: y})
}

// write draws the chart as an SVG in dir; a chart without points is skipped.
func (c *chart) write(dir string) (bool, error) {
	if len(c.lines) == 0 {
		return false, nil
	}
	p := plot.New()
	p.Title.Text = c.title
	p.X.Label.Text = c.xLabel
	p.Y.Label.Text = c.yLabel
	if c.logX {
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	if c.logY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	p.Legend.Top = true
	names := make([]string, 0, len(c.lines))
	for n := range c.lines {
		names = append(names, n)
	}
	slices.Sort(names)
	var args []any
	for _, n := range names {
		s := c.lines[n]
		slices.SortFunc(s.pts, func(a, b plotter.XY) int {
			switch {
			case a.X < b.X:
				return -1
			case a.X > b.X:
				return 1
			}
			return 0
		})
		args = append(args, n, s.pts)
	}
	if err := plotutil.AddLinePoints(p, args...); err != nil {
		return false, fmt.Errorf("plot %s: %w", c.file, err)
	}
	pad(&p.X, c.logX)
	pad(&p.Y, c.logY)
	if err := p.Save(16*vg.Centimeter, 11*vg.Centimeter, filepath.Join(dir, c.file)); err != nil {
		return false, fmt.Errorf("plot %s: %w", c.file, err)
	}
	return true, nil
}

// pad widens an axis whose data is a single value, which a log scale cannot
// draw, and starts linear axes at zero.
func pad(a *plot.Axis, log bool) {
	if a.Min == a.Max {
		if log {
			a.Min, a.Max = a.Min/2, a.Max*2
		} else {
			a.Min, a.Max = a.Min-1, a.Max+1
		}
	}
	if !log && a.Min > 0 {
		a.Min = 0
	}
}

// WritePlots draws the plots of every variant into dir: throughput against
// batch size, latency percentiles against offered load, memory against users.
func WritePlots(vs []*Variant, dir string) ([]Plot, error) {
	var charts []*chart
	mem := newChart("Memory per user against users", "memory-per-user.svg", "users", "bytes per user", true, false)
	for _, v := range vs {
		imports := map[string]*chart{}
		latency := map[int]*chart{}
		for _, m := range v.Set.Macros() {
			switch m.Op {
			case "Import":
				parts := strings.Split(m.Rest, "/") // shape/flavour/ids_N
				ids, ok := field(m.Rest, "ids")
				y, yok := m.Median("ids/s")
				if len(parts) < 3 || !ok || !yok {
					continue
				}
				key := fmt.Sprintf("users_%d-%s", m.Users, parts[1])
				c := imports[key]
				if c == nil {
					c = newChart(fmt.Sprintf("Import throughput against batch size (%s users, %s, %s)", count(float64(m.Users)), parts[1], v.Name),
						fmt.Sprintf("import-%s-%s.svg", v.Name, key), "identifiers per request", "identifiers/s", true, true)
					imports[key] = c
					charts = append(charts, c)
				}
				c.add(m.System+" "+parts[0], float64(ids), y)
			case "ContainsLatency":
				c := latency[m.Users]
				if c == nil {
					c = newChart(fmt.Sprintf("Contains latency against offered load (%s users, %s)", count(float64(m.Users)), v.Name),
						fmt.Sprintf("latency-%s-users_%d.svg", v.Name, m.Users), "offered requests/s", "latency (µs)", false, true)
					latency[m.Users] = c
					charts = append(charts, c)
				}
				x, ok := m.Median("offered-req/s")
				if !ok {
					continue
				}
				for _, q := range []string{"p50", "p99"} {
					if y, ok := m.Median(q + "-us"); ok {
						c.add(m.System+" "+q, x, y)
					}
				}
			case "Memory":
				if y, ok := m.Median("B/user"); ok {
					mem.add(m.System, float64(m.Users), y)
				}
			}
		}
		for _, r := range v.Set.Results {
			if n, ok := field(r.Name, "users"); ok && strings.HasPrefix(r.Name, "UsersMemory/") {
				if y, ok := r.Median("bytes/user"); ok {
					mem.add("index micro (MemoryBytes)", float64(n), y)
				}
			}
		}
	}
	charts = append(charts, mem)
	var out []Plot
	for _, c := range charts {
		ok, err := c.write(dir)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, Plot{Title: c.title, File: c.file})
		}
	}
	return out, nil
}
