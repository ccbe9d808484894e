package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/cohortd/cohortd/engine"
)

// Offline tools on a data directory, run as `cohortd <tool> …`:
//
//	cohortd check -data-dir D [-json]                 verify every snapshot and WAL record
//	cohortd wal dump -data-dir D [-from LSN] [-ids]   WAL records as JSON lines
//
// Exit status: 0 fine, 1 corruption found, 2 usage error or a directory
// that cannot be checked (missing, or in use by a running cohortd).
//
// `cohortd healthcheck` (healthcheck.go) asks a running server instead.

// runTool runs the tool named by args[0]; ok is false when args name none
// (then they are the server's flags).
func runTool(args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) (code int, ok bool) {
	if len(args) == 0 {
		return 0, false
	}
	switch args[0] {
	case "check":
		return runCheck(args[1:], lookupEnv, stdout, stderr), true
	case "wal":
		if len(args) < 2 || args[1] != "dump" {
			fmt.Fprintln(stderr, "usage: cohortd wal dump -data-dir DIR [-from LSN] [-ids]")
			return 2, true
		}
		return runWALDump(args[2:], lookupEnv, stdout, stderr), true
	case "healthcheck":
		return runHealthcheck(args[1:], lookupEnv, stderr), true
	}
	return 0, false
}

// toolFlags is a flag set with -data-dir (default $COHORTD_DATA_DIR, else
// ./data, as for the server).
func toolFlags(name, usage string, lookupEnv func(string) (string, bool), stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("cohortd "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := "./data"
	if v, ok := lookupEnv(envName("data-dir")); ok && v != "" {
		def = v
	}
	dir := fs.String("data-dir", def, "the data `directory` [$COHORTD_DATA_DIR]")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: cohortd %s\n\n", usage)
		fs.PrintDefaults()
	}
	return fs, dir
}

// parseTool parses a tool's flags; done means exit with code.
func parseTool(fs *flag.FlagSet, args []string) (code int, done bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, true
		}
		return 2, true
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected arguments %q\n", fs.Name(), fs.Args())
		return 2, true
	}
	return 0, false
}

func runCheck(args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) int {
	fs, dir := toolFlags("check", "check -data-dir DIR [-json]\n\n"+
		"Verifies a data directory offline, changing nothing: every snapshot in full,\n"+
		"every WAL record (checksum, sequence, payload). Then it rebuilds the state as\n"+
		"start-up would — from the newest snapshot that reads back whole (start-up sets\n"+
		"a damaged newer one aside) and the WAL after it — checks its consistency, and\n"+
		"says whether start-up would get through despite any damage found.\n"+
		"Exit 0: sound; 1: damage found (the report says whether the directory is still\n"+
		"recoverable); 2: usage, or the directory is missing or in use by a running\n"+
		"cohortd (check a copy, e.g. a backup, instead).", lookupEnv, stderr)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if code, done := parseTool(fs, args); done {
		return code
	}
	rep, err := engine.CheckDir(*dir)
	var inUse bool
	if err != nil {
		inUse = errors.Is(err, engine.ErrDataDirInUse)
		if inUse || (len(rep.Snapshots) == 0 && rep.WAL.Segments == 0 && errors.Is(err, os.ErrNotExist)) {
			fmt.Fprintln(stderr, "cohortd check:", err)
			return 2
		}
	}
	if *asJSON {
		writeCheckJSON(stdout, *dir, rep, err)
	} else {
		writeCheckText(stdout, *dir, rep, err)
	}
	if err != nil {
		return 1
	}
	return 0
}

func countsText(c engine.StateCounts) string {
	return fmt.Sprintf("%d partners, %d workspaces, %d users, %d cohorts, %d memberships, %d import keys, %d open webhook sessions",
		c.Partners, c.Workspaces, c.Users, c.Cohorts, c.Members, c.ImportKeys, c.Sessions)
}

// recoveryText says, in one line, the path start-up would take.
func recoveryText(rep engine.CheckReport) string {
	var aside []string
	for _, s := range rep.Snapshots {
		if rep.RecoverFrom == "" || s.File > rep.RecoverFrom {
			if s.Err != nil {
				aside = append(aside, s.File)
			}
		}
	}
	if len(rep.Snapshots) == 0 && rep.WAL.Segments == 0 {
		return "nothing to recover: start-up would begin with an empty state"
	}
	var b strings.Builder
	b.WriteString("start-up would ")
	if len(aside) > 0 {
		fmt.Fprintf(&b, "set %s aside as damaged (renamed *.corrupt), then ", strings.Join(aside, ", "))
	}
	if rep.RecoverFrom != "" {
		fmt.Fprintf(&b, "load %s and ", rep.RecoverFrom)
	} else {
		b.WriteString("rebuild from the WAL alone: ")
	}
	if rep.WAL.Segments == 0 {
		b.WriteString("start an empty WAL")
	} else {
		fmt.Fprintf(&b, "replay the WAL from lsn %d (%d records)", rep.ReplayFrom, rep.Replayed)
	}
	return b.String()
}

func writeCheckText(w io.Writer, dir string, rep engine.CheckReport, err error) {
	fmt.Fprintf(w, "data dir %s\n", dir)
	if len(rep.Snapshots) == 0 {
		fmt.Fprintln(w, "snapshots: none")
	}
	for i, s := range rep.Snapshots {
		role := "older"
		if i == 0 {
			role = "newest"
		}
		if s.Err != nil {
			fmt.Fprintf(w, "snapshot %s (%s, %d bytes): CORRUPT: %v\n", s.File, role, s.Bytes, s.Err)
			continue
		}
		fmt.Fprintf(w, "snapshot %s (%s, %d bytes, covers lsn ≤ %d): ok: %s\n", s.File, role, s.Bytes, s.LSN, countsText(s.Counts))
	}
	for _, f := range rep.SetAside {
		fmt.Fprintf(w, "snapshot %s: set aside by an earlier start-up (not read; keep it for analysis or delete it)\n", f)
	}
	wr := rep.WAL
	switch {
	case wr.Segments == 0:
		fmt.Fprintln(w, "wal: no segments")
	case wr.Records == 0:
		fmt.Fprintf(w, "wal: %d segments, %d bytes, no records (the next is lsn %d)\n", wr.Segments, wr.Bytes, wr.NextLSN)
	default:
		fmt.Fprintf(w, "wal: %d segments, %d bytes, %d records (lsn %d…%d)\n",
			wr.Segments, wr.Bytes, wr.Records, wr.FirstLSN, max(wr.NextLSN, 1)-1)
	}
	if len(rep.Records) > 0 {
		names := make([]string, 0, len(rep.Records))
		for n := range rep.Records {
			names = append(names, n)
		}
		sort.Strings(names)
		parts := make([]string, len(names))
		for i, n := range names {
			parts[i] = fmt.Sprintf("%s %d", n, rep.Records[n])
		}
		fmt.Fprintf(w, "wal records: %s\n", strings.Join(parts, ", "))
	}
	if wr.Torn != nil {
		fmt.Fprintf(w, "wal: torn tail in %s at offset %d (%s): left by a crash; start-up trims it\n", wr.Torn.File, wr.Torn.Offset, wr.Torn.Reason)
	}
	if rep.ReplayFrom > 0 {
		fmt.Fprintf(w, "recovery: %s\n", recoveryText(rep))
	}
	if rep.Recoverable {
		fmt.Fprintf(w, "recovered state: %s\n", countsText(rep.State))
	}
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintf(w, "CORRUPT: %s\n", line)
		}
	}
	switch {
	case err == nil:
		fmt.Fprintln(w, "result: OK")
	case rep.Recoverable:
		fmt.Fprintln(w, "result: CORRUPT, but recoverable: start-up rebuilds the recovered state above (see recovery:); once it runs, take a new backup (POST /v1/admin/snapshot)")
	default:
		fmt.Fprintln(w, "result: CORRUPT, not recoverable: cohortd would refuse to start, or start with this damage; keep this directory for analysis and restore a backup")
	}
}

// checkJSON is the -json report.
type checkJSON struct {
	DataDir     string          `json:"data_dir"`
	OK          bool            `json:"ok"`
	Recoverable bool            `json:"recoverable"`
	RecoverFrom string          `json:"recover_from"` // "": the WAL alone
	ReplayFrom  uint64          `json:"replay_from"`
	Errors      []string        `json:"errors"`
	Snapshots   []snapshotJSON  `json:"snapshots"`
	SetAside    []string        `json:"set_aside"`
	WAL         walJSON         `json:"wal"`
	Records     map[string]int  `json:"records"`
	State       json.RawMessage `json:"state"`
}

type snapshotJSON struct {
	File   string          `json:"file"`
	LSN    uint64          `json:"lsn"`
	Bytes  int64           `json:"bytes"`
	Error  string          `json:"error,omitempty"`
	Counts json.RawMessage `json:"counts,omitempty"`
}

type walJSON struct {
	Segments int    `json:"segments"`
	Bytes    int64  `json:"bytes"`
	Records  int    `json:"records"`
	FirstLSN uint64 `json:"first_lsn"`
	LastLSN  uint64 `json:"last_lsn"`
	Replayed int    `json:"replayed"`
	TornTail string `json:"torn_tail,omitempty"`
}

func countsJSON(c engine.StateCounts) json.RawMessage {
	b, _ := json.Marshal(map[string]any{
		"partners": c.Partners, "workspaces": c.Workspaces, "users": c.Users, "cohorts": c.Cohorts,
		"memberships": c.Members, "import_keys": c.ImportKeys, "open_webhook_sessions": c.Sessions,
	})
	return b
}

func writeCheckJSON(w io.Writer, dir string, rep engine.CheckReport, err error) {
	out := checkJSON{DataDir: dir, OK: err == nil, Recoverable: rep.Recoverable, RecoverFrom: rep.RecoverFrom, ReplayFrom: rep.ReplayFrom,
		Errors: []string{}, Snapshots: []snapshotJSON{}, SetAside: []string{}, Records: rep.Records, State: json.RawMessage("null")}
	if rep.Recoverable {
		out.State = countsJSON(rep.State)
	}
	if err != nil {
		out.Errors = strings.Split(err.Error(), "\n")
	}
	out.SetAside = append(out.SetAside, rep.SetAside...)
	for _, s := range rep.Snapshots {
		sj := snapshotJSON{File: s.File, LSN: s.LSN, Bytes: s.Bytes}
		if s.Err != nil {
			sj.Error = s.Err.Error()
		} else {
			sj.Counts = countsJSON(s.Counts)
		}
		out.Snapshots = append(out.Snapshots, sj)
	}
	wr := rep.WAL
	out.WAL = walJSON{Segments: wr.Segments, Bytes: wr.Bytes, Records: wr.Records, FirstLSN: wr.FirstLSN, LastLSN: max(wr.NextLSN, 1) - 1, Replayed: rep.Replayed}
	if wr.Torn != nil {
		out.WAL.TornTail = wr.Torn.Error()
	}
	b, _ := json.MarshalIndent(out, "", "  ")
	fmt.Fprintf(w, "%s\n", b)
}

func runWALDump(args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) int {
	fs, dir := toolFlags("wal dump", "wal dump -data-dir DIR [-from LSN] [-ids]\n\n"+
		"Writes the WAL's records as JSON lines: lsn, type, workspace and the decoded\n"+
		"fields. It changes nothing and may run beside a live cohortd (the record being\n"+
		"written then shows as a torn tail). Exit 1 if a record does not decode or the\n"+
		"log is corrupt (from the segment holding -from on).", lookupEnv, stderr)
	from := fs.Uint64("from", 1, "first `lsn` to dump")
	ids := fs.Bool("ids", false, "list the dense user ids of membership changes, not only their counts")
	if code, done := parseTool(fs, args); done {
		return code
	}
	rep, err := engine.DumpWAL(*dir, *from, stdout, *ids)
	if rep.Torn != nil {
		fmt.Fprintf(stderr, "cohortd wal dump: torn tail in %s at offset %d (%s)\n", rep.Torn.File, rep.Torn.Offset, rep.Torn.Reason)
	}
	if err != nil {
		fmt.Fprintln(stderr, "cohortd wal dump:", err)
		if rep.Segments == 0 && errors.Is(err, os.ErrNotExist) {
			return 2
		}
		return 1
	}
	return 0
}
