// Command cohortd runs the cohort membership engine behind its HTTP API.
//
// main only turns flags and COHORTD_* environment variables into options
// (config.go) and hands them to run, which owns the process lifecycle:
// listen at once, recover in the foreground while /livez answers, serve,
// and shut down gracefully on SIGTERM or SIGINT.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/engine/kafkalog"
	"github.com/cohortd/cohortd/server"
	"github.com/cohortd/cohortd/server/ratelimit"
)

func main() {
	// Offline tools: cohortd check …, cohortd wal dump … (tools.go).
	if code, ok := runTool(os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr); ok {
		os.Exit(code)
	}
	cfg, err := parseConfig(os.Args[1:], os.LookupEnv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cohortd:", err)
		os.Exit(2)
	}
	if cfg.version {
		fmt.Println(readBuildInfo())
		os.Exit(0)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		// After the first signal, restore the default handling: a second
		// Ctrl-C kills at once instead of waiting for a slow drain.
		<-ctx.Done()
		stop()
	}()
	if err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "cohortd:", err)
		os.Exit(1)
	}
}

// adminTokenFile is the name, inside the data directory, of the generated
// admin token.
const adminTokenFile = "admin.token"

// run starts cohortd with cfg and returns when ctx ends (a signal) and the
// shutdown has finished, or when start-up fails. Secrets the operator must
// see (a generated admin token, the demo keys) go to stdout; logs go to
// logOut.
func run(ctx context.Context, cfg config, stdout, logOut io.Writer) error {
	log := newLogger(cfg, logOut)
	slog.SetDefault(log)
	bi := readBuildInfo()
	set := metrics.NewSet()
	onWALSync := registerOpsMetrics(set, bi)

	token, tokenPath, err := adminToken(cfg, stdout, log)
	if err != nil {
		return err
	}
	tlsCfg, err := cfg.tlsConfig(log)
	if err != nil {
		return err
	}
	// One metrics set and one set of rate-limit buckets for both listeners.
	limits := ratelimit.New(cfg.rateLimit, cfg.rateBurst)
	srv := server.New(server.Options{
		AdminToken:     token,
		MaxBody:        int64(cfg.maxBody),
		PartnerMaxBody: int64(cfg.partnerMaxBody),
		PartnerMaxIDs:  cfg.partnerMaxIDs,
		QueryMaxBody:   int64(cfg.queryMaxBody),
		// Bounds the partner and webhook bodies held before they are
		// authenticated (docs/API.md §5).
		PartnerMaxInflight: cfg.partnerInflight,
		Limits:             limits,
		Logger:             log,
		Metrics:            set,
	})

	// Listen before recovery so that orchestrators see /livez 200 and
	// /readyz 503 while a large WAL replays, instead of connection refused.
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.addr, err)
	}
	addr := ln.Addr().String()
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	log.Info("listening", "addr", addr, "tls", tlsCfg != nil, "data_dir", cfg.dataDir, "fsync", cfg.fsyncName, "version", bi.Version)
	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve(ln) }()
	rs, err := startRESP(cfg, tlsCfg, limits, set, log, serveErr)
	if err != nil {
		_ = srv.Shutdown(context.Background())
		return err
	}

	type opened struct {
		e   *engine.Engine
		lg  *kafkalog.Log
		err error
	}
	openc := make(chan opened, 1)
	go func() {
		var lg *kafkalog.Log
		var secret []byte
		if cfg.repl.kafka() {
			var err error
			if lg, err = openLog(ctx, cfg.repl, log); err != nil {
				openc <- opened{err: err}
				return
			}
			if cfg.repl.bootstrapFrom != "" {
				if err := bootstrap(ctx, cfg.dataDir, cfg.repl.bootstrapFrom, token, log); err != nil {
					lg.Close()
					openc <- opened{err: err}
					return
				}
			}
			secret = cursorSecret(token)
		}
		e, err := engine.Open(engine.Options{
			Log:               lg,
			NodeID:            cfg.repl.node(),
			CursorSecret:      secret,
			Dir:               cfg.dataDir,
			Sync:              cfg.fsync,
			RetentionFloor:    cfg.retentionFloor,
			WebhookSessionTTL: cfg.webhookSessionTTL,
			SnapshotEvery:     cfg.snapshotInterval,
			SnapshotWALBytes:  int64(cfg.snapshotWALBytes),
			Logger:            log,
			OnWALSync:         onWALSync,
			OnFatal: func(err error) {
				// Durable storage failed: acknowledging more writes would
				// be a lie, and recovery on restart is the safe path.
				log.Error("fatal storage error, exiting", "err", err)
				os.Exit(1)
			},
		})
		if err != nil && lg != nil {
			lg.Close()
		}
		openc <- opened{e, lg, err}
	}()

	var e *engine.Engine
	var lg *kafkalog.Log
	select {
	case o := <-openc:
		if o.err != nil {
			_ = srv.Shutdown(context.Background())
			rs.shutdown(context.Background(), log)
			return fmt.Errorf("open data dir %s: %w", cfg.dataDir, o.err)
		}
		e, lg = o.e, o.lg
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
		// A signal during recovery: stop answering, then let recovery
		// finish so that Close leaves a consistent data dir.
		log.Info("signal during recovery, shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
		defer cancel()
		_ = srv.Shutdown(sctx)
		rs.shutdown(sctx, log)
		o := <-openc
		if o.err != nil {
			if errors.Is(o.err, context.Canceled) {
				return nil
			}
			return fmt.Errorf("open data dir %s: %w", cfg.dataDir, o.err)
		}
		err := o.e.Close()
		if o.lg != nil {
			o.lg.Close()
		}
		return err
	}
	if lg != nil {
		defer lg.Close()
	}

	bg, cancelBG := context.WithCancel(ctx)
	defer cancelBG()
	// Log mode: the apply loop runs for the life of the process; the node
	// serves once it has caught up with the log (docs/API.md §7).
	logDone := make(chan error, 1)
	if lg != nil {
		go func() { logDone <- e.RunLog(bg) }()
		if err := waitCaughtUp(ctx, e, logDone, log); err != nil {
			cancelBG()
			_ = srv.Shutdown(context.Background())
			rs.shutdown(context.Background(), log)
			return errors.Join(err, e.Close())
		}
	}
	srv.SetEngine(e)
	rs.setEngine(e)

	snapDone := make(chan struct{})
	go func() {
		defer close(snapDone)
		e.RunSnapshots(bg)
	}()
	if cfg.demo {
		go func() {
			if err := runDemo(bg, demoParams{
				addr: addr, tls: tlsCfg != nil, adminToken: token, tokenPath: tokenPath, dataDir: cfg.dataDir,
				fresh: e.Workspace(demoWorkspace) == nil,
				out:   stdout, log: log,
			}); err != nil && bg.Err() == nil {
				log.Error("demo failed", "err", err)
			}
		}()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		cancelBG()
		<-snapDone
		_ = srv.Shutdown(context.Background())
		rs.shutdown(context.Background(), log)
		return errors.Join(fmt.Errorf("serve: %w", err), e.Close())
	case err := <-logDone:
		// The apply loop stopped for good (records deleted by retention, a
		// record that could not be applied): this node can no longer
		// follow the group, so it stops serving rather than serve stale
		// state as current.
		log.Error("the log can no longer be followed, shutting down", "err", err)
		runErr = fmt.Errorf("log: %w", err)
	}

	log.Info("shutting down", "timeout", cfg.shutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	// Both listeners drain at once, within the one timeout.
	respDone := make(chan struct{})
	go func() {
		defer close(respDone)
		rs.shutdown(sctx, log)
	}()
	if err := srv.Shutdown(sctx); err != nil {
		// In-flight requests outlived the timeout; they were cut off, and
		// nothing they did is acknowledged, so the flush below is still safe.
		log.Warn("shutdown timeout exceeded", "err", err)
	}
	<-respDone
	cancelBG()
	<-snapDone
	if lg != nil && runErr == nil {
		<-logDone
	}
	if err := e.Close(); err != nil {
		return errors.Join(runErr, fmt.Errorf("close engine: %w", err))
	}
	log.Info("stopped")
	return runErr
}

// waitCaughtUp waits until a log-mode engine has caught up with the log,
// logging progress; it fails when the apply loop stops (records deleted by
// retention: bootstrap from a peer) or ctx ends.
func waitCaughtUp(ctx context.Context, e *engine.Engine, logDone <-chan error, log *slog.Logger) error {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-e.CaughtUp():
			return nil
		case err := <-logDone:
			return fmt.Errorf("catching up with the log: %w", err)
		case <-ctx.Done():
			return nil
		case <-tick.C:
			st := e.ReplicationCached()
			log.Info("catching up with the log", "lag_records", st.LagRecords, "applied", st.RecordsApplied)
		}
	}
}

// adminToken returns the admin token and the file it lives in ("" when it
// came from the flag or the environment). -admin-token-file names the file;
// without either it reads <data-dir>/admin.token, or else generates one,
// saves it there (mode 0600) and prints it to stdout: the only time it is
// ever shown.
func adminToken(cfg config, stdout io.Writer, log *slog.Logger) (token, path string, err error) {
	if cfg.adminToken != "" {
		return cfg.adminToken, "", nil
	}
	if cfg.adminTokenFile != "" {
		token, err := readTokenFile(cfg.adminTokenFile, log)
		return token, cfg.adminTokenFile, err
	}
	path = filepath.Join(cfg.dataDir, adminTokenFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		token = strings.TrimSpace(string(b))
		if token == "" {
			return "", "", fmt.Errorf("admin token file %s is empty", path)
		}
		return token, path, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", "", fmt.Errorf("read admin token: %w", err)
	case cfg.repl.kafka():
		// Every node of a group must share the token: it authenticates
		// -bootstrap-from and keys the cursors every node hands out.
		return "", "", errors.New("-log kafka needs the group's admin token: -admin-token, -admin-token-file or COHORTD_ADMIN_TOKEN, the same on every node")
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", "", fmt.Errorf("generate admin token: %w", err)
	}
	token = "adm_" + hex.EncodeToString(raw)
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return "", "", fmt.Errorf("create data dir: %w", err)
	}
	if err := writeFileSync(path, []byte(token+"\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("save admin token: %w", err)
	}
	fmt.Fprintf(stdout, "admin token: %s\n(saved in %s; it is not printed again)\n", token, path)
	return token, path, nil
}

// writeFileSync writes data to path atomically: a crash leaves either no
// file or the whole token, never an empty one that would lock the operator out.
func writeFileSync(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
