package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// run is the state of one call of Seed, Export, Query or Mixed.
type run struct {
	o       Options
	u       Universe
	cl      *client
	rec     *recorder
	prog    *progress
	log     io.Writer
	creds   Credentials
	started time.Time
	seed    *SeedCounts
	notes   []string
	cpu0    float64 // the server's CPU seconds when the run began (Options.ServerPID)
}

func newRun(o Options, log io.Writer) (*run, error) {
	o = o.withDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = io.Discard
	}
	rec := newRecorder()
	return &run{
		o:       o,
		u:       Universe{Users: o.Users, Seed: o.Seed},
		cl:      newClient(o),
		rec:     rec,
		prog:    newProgress(o, rec),
		log:     log,
		creds:   o.Credentials,
		started: time.Now(),
		cpu0:    ProcessCPUSeconds(o.ServerPID),
	}, nil
}

// ErrSetup is wrapped by the error of a run whose setup failed (credentials
// missing and no admin token, or the admin API refused to create them):
// such a run made no measurement, and Seed, Export, Query and Mixed return
// no report for it.
var ErrSetup = errors.New("loadgen: setup failed")

// setup runs ensure (which fills r.creds) and hands newly created
// credentials to Options.OnCredentials; with several nodes it waits until
// each has applied them. Its errors wrap ErrSetup.
func (r *run) setup(ctx context.Context, ensure func() error) error {
	if err := ensure(); err != nil {
		return &setupError{err}
	}
	if err := r.cl.syncNodes(ctx, r.creds.APIKey); err != nil {
		return &setupError{fmt.Errorf("wait for every node to apply the credentials: %w", err)}
	}
	was, now := r.o.Credentials, r.creds
	created := now.APIKey != was.APIKey || now.PartnerAPIKey != was.PartnerAPIKey || now.ClientSecret != was.ClientSecret
	if created && r.o.OnCredentials != nil {
		if err := r.o.OnCredentials(r.creds); err != nil {
			return &setupError{fmt.Errorf("keep the created credentials: %w", err)}
		}
	}
	return nil
}

// setupError is an error of the setup; it wraps ErrSetup and the cause.
type setupError struct{ err error }

func (e *setupError) Error() string {
	return "loadgen: setup failed: " + strings.TrimPrefix(e.err.Error(), "loadgen: ")
}

func (e *setupError) Unwrap() []error { return []error{ErrSetup, e.err} }

// report builds the run's report. A fatal error err is counted as an error
// too, and the returned error is non-nil whenever the run failed.
func (r *run) report(command string, err error) (*Report, error) {
	o := r.o
	rep := &Report{
		Command: command,
		Workload: Workload{
			Workspace:   r.creds.Workspace,
			Partner:     r.creds.Partner,
			Users:       o.Users,
			Seed:        o.Seed,
			Rate:        o.Rate,
			Concurrency: o.Concurrency,
			DurationNs:  int64(o.Duration),
		},
		Env:       currentEnv(),
		Started:   r.started.UTC(),
		ElapsedNs: int64(time.Since(r.started)),
		Ops:       r.rec.opReports(),
		Seed:      r.seed,
		Notes:     r.notes,
	}
	if pid := o.ServerPID; pid > 0 {
		cpu := ProcessCPUSeconds(pid) - r.cpu0
		c := &ServerCPU{PID: pid, CPUSeconds: cpu}
		if cpu > 0 {
			var reqs, ids int64
			for _, op := range rep.Ops {
				reqs += op.Count
				ids += op.IDs
			}
			c.RequestsPerCPUSecond, c.IDsPerCPUSecond = float64(reqs)/cpu, float64(ids)/cpu
		}
		rep.Server = c
	}
	if command != "seed" {
		rep.Workload.Cohorts, rep.Workload.Flavour = o.Cohorts, o.Flavour
	}
	if command == "export" || command == "mixed" {
		rep.Workload.Shape = o.Shape
		rep.Workload.IntervalNs = int64(o.Interval)
		rep.Workload.ChangeSets = o.ChangeSets
		rep.Workload.ChurnLeave, rep.Workload.ChurnJoin = o.ChurnLeave, o.ChurnJoin
		rep.Workload.InjectFailureRate = o.InjectFailureRate
	}
	if command == "query" || command == "mixed" {
		rep.Workload.Mix = o.Mix.String()
		rep.Workload.QueryConcurrency = o.QueryConcurrency
	}
	if command == "mixed" {
		rep.Workload.ExportRate = o.ExportRate
	}
	if err != nil {
		r.rec.fail(err)
	}
	r.rec.mu.Lock()
	rep.Errors = r.rec.mu.errors
	rep.ErrorSamples = append([]string(nil), r.rec.mu.samples...)
	rep.Verification = Verification{
		Checks:     r.rec.mu.checked,
		Failures:   r.rec.mu.failed,
		Mismatches: append([]string(nil), r.rec.mu.mismatch...),
	}
	r.rec.mu.Unlock()
	return rep, errors.Join(err, rep.Err())
}

// timed returns a context that ends after Options.Duration (or def when
// Duration is 0; def 0 means no time bound).
func (r *run) timed(ctx context.Context, def time.Duration) (context.Context, context.CancelFunc) {
	d := r.o.Duration
	if d == 0 {
		d = def
	}
	if d == 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}
