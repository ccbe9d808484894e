package main

import (
	"io"
	"testing"
	"time"

	"github.com/cohortd/cohortd/engine/wal"
)

func TestByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{in: "1048576", want: 1 << 20},
		{in: "256MiB", want: 256 << 20},
		{in: "8mib", want: 8 << 20},
		{in: "1GiB", want: 1 << 30},
		{in: "64KiB", want: 64 << 10},
		{in: "8MB", want: 8_000_000},
		{in: "2k", want: 2048},
		{in: "10 MiB", want: 10 << 20},
		{in: "0", want: 0},
		{in: "", bad: true},
		{in: "MiB", bad: true},
		{in: "-1", bad: true},
		{in: "1.5MiB", bad: true},
		{in: "12XB", bad: true},
		{in: "99999999999TiB", bad: true},
	} {
		var b byteSize
		err := b.Set(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("%q: no error, got %d", tc.in, b)
			}
			continue
		}
		if err != nil || int64(b) != tc.want {
			t.Errorf("%q: got %d, %v; want %d", tc.in, b, err, tc.want)
		}
	}
	b := byteSize(256 << 20)
	if b.String() != "256MiB" {
		t.Errorf("String() = %q", b.String())
	}
}

func TestParseConfigPrecedence(t *testing.T) {
	env := map[string]string{
		"COHORTD_PARTNER_MAX_IDS":     "5",
		"COHORTD_FSYNC":               "off",
		"COHORTD_MAX_BODY":            "8MiB",
		"COHORTD_RETENTION_FLOOR":     "2020-01-01T00:00:00+02:00",
		"COHORTD_WEBHOOK_SESSION_TTL": "10m",
		"COHORTD_DEMO":                "true",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	c, err := parseConfig([]string{"-partner-max-ids", "7"}, lookup, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.partnerMaxIDs != 7 {
		t.Errorf("flag must beat env: partnerMaxIDs = %d", c.partnerMaxIDs)
	}
	if c.fsync != wal.SyncOff || c.maxBody != 8<<20 || c.webhookSessionTTL != 10*time.Minute || !c.demo {
		t.Errorf("env not applied: %+v", c)
	}
	if !c.retentionFloor.Equal(time.Date(2019, 12, 31, 22, 0, 0, 0, time.UTC)) {
		t.Errorf("retention floor %v", c.retentionFloor)
	}

	c, err = parseConfig(nil, func(string) (string, bool) { return "", false }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.addr != "127.0.0.1:8080" || c.dataDir != "./data" || c.fsync != wal.SyncAlways || c.maxBody != 256<<20 ||
		c.partnerMaxBody != 8<<20 || c.partnerMaxIDs != 1000 || c.shutdownTimeout != 30*time.Second ||
		c.webhookSessionTTL != time.Hour || !c.retentionFloor.Equal(time.Date(2010, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("defaults: %+v", c)
	}
}

func TestParseConfigQueryAndPartnerCaps(t *testing.T) {
	env := map[string]string{"COHORTD_QUERY_MAX_BODY": "2MiB", "COHORTD_PARTNER_MAX_INFLIGHT": "3"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	c, err := parseConfig(nil, lookup, io.Discard)
	if err != nil || c.queryMaxBody != 2<<20 || c.partnerInflight != 3 {
		t.Fatalf("%v: query-max-body %d partner-max-inflight %d", err, c.queryMaxBody, c.partnerInflight)
	}
	c, err = parseConfig(nil, func(string) (string, bool) { return "", false }, io.Discard)
	if err != nil || c.queryMaxBody != 8<<20 || c.partnerInflight != 16 {
		t.Fatalf("defaults: %v %d %d", err, c.queryMaxBody, c.partnerInflight)
	}
	for _, args := range [][]string{{"-query-max-body", "0"}, {"-partner-max-inflight", "0"}} {
		if _, err := parseConfig(args, func(string) (string, bool) { return "", false }, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
