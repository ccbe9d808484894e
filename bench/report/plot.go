package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
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
	title, file string
	x, y        axis
	lines       map[string]*series
}

// axis is how a chart draws one of its axes: the label, whether the scale
// is logarithmic and how a tick value reads: in the report's words (10 M,
// 1.5 ms) rather than strconv's (1e+07).
type axis struct {
	label string
	log   bool
	tick  func(float64) string
}

func newChart(title, file string, x, y axis) *chart {
	return &chart{title: title, file: file, x: x, y: y, lines: map[string]*series{}}
}

func (c *chart) add(line string, x, y float64) {
	if (c.x.log && x <= 0) || (c.y.log && y <= 0) || math.IsNaN(x) || math.IsNaN(y) {
		return
	}
	s := c.lines[line]
	if s == nil {
		s = &series{name: line}
		c.lines[line] = s
	}
	s.pts = append(s.pts, plotter.XY{X: x, Y: y})
}

// Plot size: the data area and axes; the legend gets a column of its own
// to the right, so that it never covers a line.
const (
	plotWidth  = 16 * vg.Centimeter
	plotHeight = 11 * vg.Centimeter
	legendGap  = 4 * vg.Millimeter
)

// write draws the chart as an SVG in dir; a chart without points is skipped.
func (c *chart) write(dir string) (bool, error) {
	if len(c.lines) == 0 {
		return false, nil
	}
	p := plot.New()
	p.Title.Text = c.title
	p.X.Label.Text = c.x.label
	p.Y.Label.Text = c.y.label
	p.X.Tick.Marker = ticks(c.x.log, c.x.tick)
	p.Y.Tick.Marker = ticks(c.y.log, c.y.tick)
	if c.x.log {
		p.X.Scale = plot.LogScale{}
	}
	if c.y.log {
		p.Y.Scale = plot.LogScale{}
	}
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
	pad(&p.X, c.x.log)
	pad(&p.Y, c.y.log)

	// plot.Plot draws its legend inside the data area, over the lines
	// when they reach a corner; take it out and draw it beside the plot.
	legend := p.Legend
	p.Legend = plot.NewLegend()
	legend.Top, legend.Left = true, true
	legend.Padding = vg.Points(3)
	probe := draw.New(vgsvg.New(plotWidth, plotHeight))
	r := legend.Rectangle(probe)
	legendWidth := r.Max.X - r.Min.X
	canvas := vgsvg.New(plotWidth+legendGap+legendWidth, plotHeight)
	dc := draw.New(canvas)
	p.Draw(draw.Crop(dc, 0, -(legendGap + legendWidth), 0, 0))
	// Top of the legend column level with the top of the data area.
	title := p.Title.TextStyle.Rectangle(p.Title.Text)
	legend.Draw(draw.Crop(dc, plotWidth+legendGap, 0, 0, -(title.Max.Y - title.Min.Y + p.Title.Padding)))

	f, err := os.Create(filepath.Join(dir, c.file))
	if err != nil {
		return false, fmt.Errorf("plot %s: %w", c.file, err)
	}
	_, err = canvas.WriteTo(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("plot %s: %w", c.file, err)
	}
	return true, nil
}

// ticks returns the tick marker of an axis, labelled by label: on a
// logarithmic axis gonum's marks, with 2 and 5 times each power of ten
// labelled too when the axis spans less than three decades (or it would
// carry one label or none); on a linear axis marks at a round step, about
// five labelled. Marks outside [lo, hi] are dropped.
func ticks(log bool, label func(float64) string) plot.Ticker {
	return plot.TickerFunc(func(lo, hi float64) []plot.Tick {
		var ts []plot.Tick
		if log {
			ts = plot.LogTicks{Prec: -1}.Ticks(lo, hi)
			dense := hi/lo < 1000
			for i := range ts {
				m := ts[i].Value / math.Pow10(int(math.Floor(math.Log10(ts[i].Value)+1e-9)))
				if dense && (near(m, 2) || near(m, 5)) {
					ts[i].Label = "x" // labelled below
				}
			}
		} else {
			ts = linearTicks(lo, hi)
		}
		var in []plot.Tick
		for _, t := range ts {
			if t.Value < lo || t.Value > hi {
				continue // LogTicks runs from the decade below lo to the one above hi
			}
			if t.Label != "" {
				t.Label = label(t.Value)
			}
			in = append(in, t)
		}
		return in
	})
}

// linearTicks returns labelled marks at a round step (1, 2 or 5 times a
// power of ten) that gives about five of them between lo and hi, and an
// unlabelled mark halfway between each two.
func linearTicks(lo, hi float64) []plot.Tick {
	raw := (hi - lo) / 5
	if raw <= 0 {
		return []plot.Tick{{Value: lo, Label: "x"}}
	}
	mag := math.Pow10(int(math.Floor(math.Log10(raw))))
	step := mag
	for _, m := range []float64{2, 5, 10} {
		if math.Abs((hi-lo)/(m*mag)-5) < math.Abs((hi-lo)/step-5) {
			step = m * mag
		}
	}
	var ts []plot.Tick
	for i := math.Ceil(lo / step); i*step <= hi; i++ {
		ts = append(ts, plot.Tick{Value: i * step, Label: "x"})
		if mid := (i + 0.5) * step; mid <= hi {
			ts = append(ts, plot.Tick{Value: mid})
		}
	}
	return ts
}

// near reports whether a mantissa is m, give or take rounding.
func near(a, m float64) bool { return math.Abs(a-m) < 1e-6 }

// pad widens an axis whose data is a single value, which a log scale cannot
// draw, starts linear axes at zero, and leaves a margin beyond the data so
// that no point sits on an axis or under the title.
func pad(a *plot.Axis, log bool) {
	if a.Min == a.Max {
		if log {
			a.Min, a.Max = a.Min/2, a.Max*2
		} else {
			a.Min, a.Max = a.Min-1, a.Max+1
		}
	}
	if log {
		a.Min, a.Max = a.Min/1.2, a.Max*1.2
		return
	}
	if a.Min > 0 {
		a.Min = 0
	}
	a.Max += (a.Max - a.Min) / 20
}

// WritePlots draws the plots of every variant into dir: throughput against
// batch size, latency percentiles against offered load, memory against users.
func WritePlots(vs []*Variant, dir string) ([]Plot, error) {
	var charts []*chart
	mem := newChart("Memory per user against users", "memory-per-user.svg",
		axis{"users", true, count}, axis{"bytes per user", false, count})
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
						fmt.Sprintf("import-%s-%s.svg", v.Name, key),
						axis{"identifiers per request", true, count}, axis{"identifiers/s", true, count})
					imports[key] = c
					charts = append(charts, c)
				}
				c.add(m.System+" "+parts[0], float64(ids), y)
			case "ContainsLatency":
				c := latency[m.Users]
				if c == nil {
					c = newChart(fmt.Sprintf("Contains latency against offered load (%s users, %s)", count(float64(m.Users)), v.Name),
						fmt.Sprintf("latency-%s-users_%d.svg", v.Name, m.Users),
						axis{"offered requests/s", false, count}, axis{"latency", true, duration})
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
