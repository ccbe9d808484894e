package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// runHealthcheck is `cohortd healthcheck [-addr host:port] [-tls]`: GET
// /readyz of a running cohortd, exit 0 on 200, else 1 with one line on
// stderr; 2 for a usage error. It lets a container image check its server
// with the binary it already holds (deploy/Dockerfile's HEALTHCHECK), with
// no shell, wget or curl in the image.
//
// -addr defaults to $COHORTD_ADDR, as the server reads it, so that the
// check finds the server of the same environment; an unspecified host
// (0.0.0.0, ::, or none) is asked on the loopback address. -tls defaults to
// on when $COHORTD_TLS_CERT is set. The certificate is not verified: the
// check runs beside the server it asks, sends no secret, and a certificate
// is issued for a public name, not for 127.0.0.1.
func runHealthcheck(args []string, lookupEnv func(string) (string, bool), stderr io.Writer) int {
	fs := flag.NewFlagSet("cohortd healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: cohortd healthcheck [-addr host:port] [-tls] [-timeout d]\n\n"+
			"Asks a running cohortd's /readyz. Exit 0: ready (200); 1: not ready, or no\n"+
			"answer (one line on stderr says why); 2: usage. For container and service\n"+
			"health checks: it needs no shell, wget or curl.\n\n")
		fs.PrintDefaults()
	}
	defAddr := "127.0.0.1:8080"
	if v, ok := lookupEnv(envName("addr")); ok && v != "" {
		defAddr = v
	}
	cert, _ := lookupEnv(envName("tls-cert"))
	addr := fs.String("addr", defAddr, "the server's HTTP `host:port` [$COHORTD_ADDR]")
	useTLS := fs.Bool("tls", cert != "", "ask over HTTPS, without verifying the certificate (default on when $COHORTD_TLS_CERT is set)")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this long")
	if code, done := parseTool(fs, args); done {
		return code
	}
	if *timeout <= 0 {
		fmt.Fprintln(stderr, "cohortd healthcheck: -timeout must be positive")
		return 2
	}
	target, err := healthcheckURL(*addr, *useTLS)
	if err != nil {
		fmt.Fprintln(stderr, "cohortd healthcheck:", err)
		return 2
	}
	if err := checkReady(target, *timeout); err != nil {
		fmt.Fprintln(stderr, "cohortd healthcheck:", err)
		return 1
	}
	return 0
}

// healthcheckURL is the /readyz URL of a server listening on addr; an
// unspecified host is asked on the loopback address.
func healthcheckURL(addr string, useTLS bool) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("-addr %q: %w", addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	scheme := "http"
	if useTLS {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, port) + "/readyz", nil
}

// checkReady asks url once and returns why it is not ready, in one line.
func checkReady(url string, timeout time.Duration) error {
	c := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // see runHealthcheck
			DisableKeepAlives: true,
			Proxy:             nil, // never through $HTTP_PROXY: the server is local
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	why := strings.Join(strings.Fields(string(body)), " ")
	var e struct{ Message string }
	if json.Unmarshal(body, &e) == nil && e.Message != "" {
		why = e.Message
	}
	if len(why) > 200 {
		why = why[:200] + "…"
	}
	return fmt.Errorf("%s answered %s: %s", url, resp.Status, why)
}
