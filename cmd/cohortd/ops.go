package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"golang.org/x/term"
)

// Operator-facing pieces of the binary: version and build info, log
// format, the admin token file, TLS, and the metrics cmd owns.

// version is stamped at build time by the Makefile:
//
//	go build -ldflags "-X main.version=$(git describe --tags --always --dirty)"
//
// Without it (go build, go install) the module version or the VCS revision
// from the build info is used; see buildVersion.
var version string

// buildInfo is what -version prints and cohortd_build_info carries.
type buildInfo struct {
	Version   string // git describe, the module version, or "devel"
	Revision  string // VCS commit, "" if unknown
	GoVersion string
}

// readBuildInfo combines the -ldflags version with runtime/debug's build
// info.
func readBuildInfo() buildInfo {
	info, ok := debug.ReadBuildInfo()
	return buildInfoFrom(version, info, ok)
}

// buildInfoFrom picks the version: the stamped one, else the module
// version (go install …@v1.2.3), else "devel-" and the VCS revision, else
// "devel".
func buildInfoFrom(stamped string, info *debug.BuildInfo, ok bool) buildInfo {
	bi := buildInfo{Version: stamped, GoVersion: runtime.Version()}
	modified := false
	if ok {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				bi.Revision = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if bi.Version != "" {
		return bi
	}
	switch {
	case ok && info.Main.Version != "" && info.Main.Version != "(devel)":
		bi.Version = info.Main.Version
	case bi.Revision != "":
		bi.Version = "devel-" + shortRev(bi.Revision)
		if modified {
			bi.Version += "-dirty"
		}
	default:
		bi.Version = "devel"
	}
	return bi
}

func shortRev(r string) string {
	if len(r) > 12 {
		return r[:12]
	}
	return r
}

// String is the -version line.
func (b buildInfo) String() string {
	s := "cohortd " + b.Version
	if b.Revision != "" {
		s += " (revision " + shortRev(b.Revision) + ")"
	}
	return s + " " + b.GoVersion + " " + runtime.GOOS + "/" + runtime.GOARCH
}

// registerOpsMetrics adds the metrics cmd owns to set and returns the WAL
// fsync observer for engine.Options.OnWALSync:
//
//	cohortd_build_info{version,revision,goversion} 1
//	cohortd_wal_fsync_duration_seconds              histogram of WAL fdatasync latency
func registerOpsMetrics(set *metrics.Set, bi buildInfo) func(time.Duration) {
	set.NewGauge(fmt.Sprintf(`cohortd_build_info{version=%q,revision=%q,goversion=%q}`, bi.Version, bi.Revision, bi.GoVersion),
		func() float64 { return 1 })
	// 50 µs to ~1.6 s: a local NVMe fdatasync takes tens of microseconds,
	// a struggling network disk hundreds of milliseconds.
	h := set.NewPrometheusHistogramExt("cohortd_wal_fsync_duration_seconds", metrics.ExponentialBuckets(50e-6, 2, 16))
	return func(d time.Duration) { h.Update(d.Seconds()) }
}

// checkOps validates the operator flags after parsing.
func (c *config) checkOps() error {
	switch c.logFormat {
	case "auto", "text", "json":
	default:
		return fmt.Errorf("-log-format: %q is not text, json or auto", c.logFormat)
	}
	if c.adminToken != "" && c.adminTokenFile != "" {
		return errors.New("-admin-token and -admin-token-file exclude each other")
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return errors.New("-tls-cert and -tls-key go together")
	}
	return nil
}

// newLogger returns the process logger: -log-format text or json, and for
// auto, text when out is a terminal (a person reads it) and JSON otherwise
// (a collector parses it).
func newLogger(c config, out io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.logLevel}
	text := c.logFormat == "text"
	if c.logFormat == "auto" {
		f, ok := out.(*os.File)
		text = ok && term.IsTerminal(int(f.Fd()))
	}
	if text {
		return slog.New(slog.NewTextHandler(out, opts))
	}
	return slog.New(slog.NewJSONHandler(out, opts))
}

// readTokenFile reads the admin token of -admin-token-file: the first
// line, trimmed. A file that others may read is logged, not refused
// (a secret store may mount it so).
func readTokenFile(path string, log *slog.Logger) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("-admin-token-file: %w", err)
	}
	tok, _, _ := strings.Cut(string(b), "\n")
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return "", fmt.Errorf("-admin-token-file: %s holds no token", path)
	}
	if fi, err := os.Stat(path); err == nil && runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("the admin token file is readable by others; chmod 600 it", "file", path, "mode", fi.Mode().Perm().String())
	}
	return tok, nil
}

// tlsConfig returns the TLS configuration of -tls-cert/-tls-key, or nil
// when TLS is off. Every listener that serves TLS (HTTP today, the Redis
// protocol listener too) wraps its net.Listener with tls.NewListener and
// this config, so they share the certificate and its reloads.
//
// The certificate is loaded now (a bad pair fails start-up) and re-read
// when a handshake finds the files changed (checked at most every ten
// seconds), so a renewed certificate is served without a restart; a pair
// that fails to load is logged and the previous one kept.
func (c config) tlsConfig(log *slog.Logger) (*tls.Config, error) {
	if c.tlsCert == "" {
		return nil, nil
	}
	cr := &certReloader{certFile: c.tlsCert, keyFile: c.tlsKey, log: log, now: time.Now}
	if err := cr.load(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: cr.get,
	}, nil
}

// certReloader serves a certificate pair and reloads it when its files
// change.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	now               func() time.Time

	mu struct {
		sync.Mutex
		cert    *tls.Certificate
		stamp   string // modification times and sizes of both files
		checked time.Time
	}
}

// stampOf identifies the files' current version.
func (cr *certReloader) stampOf() string {
	var b strings.Builder
	for _, p := range []string{cr.certFile, cr.keyFile} {
		if fi, err := os.Stat(p); err == nil {
			fmt.Fprintf(&b, "%d/%d;", fi.ModTime().UnixNano(), fi.Size())
		}
	}
	return b.String()
}

func (cr *certReloader) load() error {
	stamp := cr.stampOf()
	cert, err := tls.LoadX509KeyPair(cr.certFile, cr.keyFile)
	if err != nil {
		return fmt.Errorf("-tls-cert/-tls-key: %w", err)
	}
	cr.mu.Lock()
	cr.mu.cert, cr.mu.stamp, cr.mu.checked = &cert, stamp, cr.now()
	cr.mu.Unlock()
	return nil
}

// get is tls.Config.GetCertificate.
func (cr *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	cr.mu.Lock()
	cert := cr.mu.cert
	due := cr.now().Sub(cr.mu.checked) >= 10*time.Second
	if due {
		cr.mu.checked = cr.now()
	}
	stamp := cr.mu.stamp
	cr.mu.Unlock()
	if due && cr.stampOf() != stamp {
		if err := cr.load(); err != nil {
			cr.log.Error("TLS certificate changed but does not load; serving the previous one", "err", err)
		} else {
			cr.log.Info("TLS certificate reloaded", "cert", cr.certFile)
			cr.mu.Lock()
			cert = cr.mu.cert
			cr.mu.Unlock()
		}
	}
	return cert, nil
}
