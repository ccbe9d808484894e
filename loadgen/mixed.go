package loadgen

import (
	"context"
	"io"
	"sync"
	"time"
)

// Mixed runs an exporter and segment evaluators at once against one
// workspace. On a fresh server it needs only Options.AdminToken: it creates
// a workspace, a partner and a data import key (partner mixpanel for
// ShapeMixpanelWebhook), seeds Options.Users users
// (unless Options.SkipSeed), sends every cohort's first load, then runs
// change sets (at Options.ExportRate) and queries (at Options.Rate, in
// Options.Mix) together for Options.Duration (default 10s), and finally
// compares the server's cohort sizes with its model.
//
// The report is nil when the options are invalid (ErrInvalidOptions) or the
// setup failed (ErrSetup); otherwise the error is non-nil when the run
// failed (a fatal error, an error count or a verification mismatch), so a
// test can check just the error and print the report.
func Mixed(ctx context.Context, o Options, log io.Writer) (*Report, error) {
	r, err := newRun(o, log)
	if err != nil {
		return nil, err
	}
	if err := r.setup(ctx, func() error { return r.ensureExportCredentials(ctx) }); err != nil {
		return nil, err
	}
	return r.report("mixed", r.mixed(ctx))
}

func (r *run) mixed(ctx context.Context) error {
	if r.o.Duration == 0 && r.o.ChangeSets == 0 {
		r.o.Duration = 10 * time.Second
	}
	if !r.o.SkipSeed {
		if err := r.seedUsers(ctx); err != nil {
			return err
		}
	}
	e := r.newExporter(r.o.ExportRate)
	e.start(ctx)
	if err := e.firstLoad(ctx); err != nil {
		e.stop()
		return err
	}
	tctx, cancel := r.timed(ctx, 0)
	defer cancel()
	q := r.newQuerier(r.o.Rate)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		e.churn(ctx, tctx)
	}()
	go func() {
		defer wg.Done()
		// Progress follows the exporter's phase; queries run alongside.
		q.run(ctx, tctx)
	}()
	wg.Wait()
	e.stop()
	return e.verify(ctx)
}
