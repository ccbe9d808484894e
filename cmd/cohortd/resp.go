package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"

	"github.com/VictoriaMetrics/metrics"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server/ratelimit"
	"github.com/cohortd/cohortd/server/resp"
)

// respListener is the optional Redis-protocol listener (-resp-addr); its
// methods do nothing when it is off.
type respListener struct{ srv *resp.Server }

// startRESP listens on -resp-addr, when set, before recovery (clients get
// -LOADING meanwhile, as from a Redis loading its data) and serves in a
// goroutine whose error goes to serveErr.
func startRESP(cfg config, tlsCfg *tls.Config, limits *ratelimit.Set, met *metrics.Set, log *slog.Logger, serveErr chan<- error) (respListener, error) {
	if cfg.respAddr == "" {
		return respListener{}, nil
	}
	ln, err := net.Listen("tcp", cfg.respAddr)
	if err != nil {
		return respListener{}, fmt.Errorf("listen on -resp-addr %s: %w", cfg.respAddr, err)
	}
	// The same certificate as the HTTP listener (reloaded with it): the
	// AUTH password is a workspace API key.
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	srv := resp.New(resp.Options{Limits: limits, Metrics: met, Logger: log})
	log.Info("resp listening", "addr", ln.Addr().String(), "tls", tlsCfg != nil)
	go func() {
		if err := srv.Serve(ln); err != nil {
			serveErr <- fmt.Errorf("resp: %w", err)
		}
	}()
	return respListener{srv}, nil
}

func (l respListener) setEngine(e *engine.Engine) {
	if l.srv != nil {
		l.srv.SetEngine(e)
	}
}

// shutdown drains the listener: batches being executed finish, then every
// connection closes.
func (l respListener) shutdown(ctx context.Context, log *slog.Logger) {
	if l.srv == nil {
		return
	}
	if err := l.srv.Shutdown(ctx); err != nil {
		log.Warn("resp shutdown timeout exceeded", "err", err)
	}
}
