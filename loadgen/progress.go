package loadgen

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress shows how a phase advances: a bar when Options.ProgressBar (a
// terminal), else a plain line every Options.ReportEvery. Its goroutine
// runs between start and stop, never beyond.
type progress struct {
	w      io.Writer
	bar    bool
	every  time.Duration
	rec    *recorder
	stopCh chan struct{}
	wg     sync.WaitGroup
}

func newProgress(o Options, rec *recorder) *progress {
	return &progress{w: o.Progress, bar: o.ProgressBar, every: o.ReportEvery, rec: rec}
}

// start shows the phase named what; total is the expected count of units
// reported by done (or -1 when unknown), and done returns the units so far.
// A phase bounded by time passes the elapsed milliseconds as done.
func (p *progress) start(what string, total int64, done func() int64) {
	if p.w == nil {
		return
	}
	p.stopCh = make(chan struct{})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		began := time.Now()
		var bar *progressbar.ProgressBar
		tick := p.every
		if p.bar {
			bar = progressbar.NewOptions64(total,
				progressbar.OptionSetWriter(p.w),
				progressbar.OptionSetDescription(what),
				progressbar.OptionSetPredictTime(true),
				progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionClearOnFinish(),
			)
			tick = 200 * time.Millisecond
		}
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-p.stopCh:
				if bar != nil {
					_ = bar.Finish()
				}
				return
			case <-t.C:
			}
			reqs, errs := p.rec.totals()
			if bar != nil {
				n := done()
				if total >= 0 {
					n = min(n, total)
				}
				_ = bar.Set64(n)
				bar.Describe(fmt.Sprintf("%s: %d requests, %d errors", what, reqs, errs))
				continue
			}
			el := time.Since(began)
			fmt.Fprintf(p.w, "loadgen: %s %s: %d requests (%.0f/s), %d errors\n",
				what, el.Round(time.Second), reqs, float64(reqs)/el.Seconds(), errs)
		}
	}()
}

// stop ends the current phase's output.
func (p *progress) stop() {
	if p.stopCh == nil {
		return
	}
	close(p.stopCh)
	p.wg.Wait()
	p.stopCh = nil
}
