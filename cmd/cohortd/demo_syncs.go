package main

import (
	"context"
	"fmt"
	"io"

	"github.com/cohortd/cohortd/server/client"
)

// demoSyncRounds gives each demo cohort a few syncs after its import, so
// that the page (/ui/) shows a sync history and health from the start:
// rounds alternate between bulk changes and the partner endpoint (requests
// of one source less than five minutes apart merge into one sync, docs/API.md
// §8), each moving a few members and sending a few identifiers that match
// nobody. The last sync of demoShrunkCohort is a snapshot replace keeping a
// third of its members: a "shrunk" cohort, the unhealthy example.
const (
	demoSyncRounds   = 3
	demoShrunkCohort = "newsletter"
)

// demoSyncs sends the extra syncs through the public API: ws with the
// workspace API key, exporter with gzip bodies for the partner endpoint.
func demoSyncs(ctx context.Context, ws, exporter *client.Client, cred client.PartnerCredentials) error {
	for _, ch := range demoCohorts {
		var members, others []string
		for i := 0; i < demoUsers; i++ {
			if ch.member(i) {
				members = append(members, demoUserID(i))
			} else {
				others = append(others, demoUserID(i))
			}
		}
		for round := 0; round < demoSyncRounds; round++ {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// Round r removes a slice of the members and adds newcomers,
			// plus identifiers that match nobody (unknown ghosts).
			leave := pick(members, 40+round*7, 150)
			join := pick(others, 31+round*11, 400)
			ghosts := make([]string, 10+round*5)
			for i := range ghosts {
				ghosts[i] = fmt.Sprintf("ghost-%s-%d-%d", ch.id, round, i)
			}
			changes := []client.Change{
				{Identifiers: client.Identifiers{UserIDs: append(join, ghosts...)}},
				{Identifiers: client.Identifiers{UserIDs: leave}, ShouldRemove: true},
			}
			var err error
			if round%2 == 0 {
				_, err = ws.Changes(ctx, demoPartner, ch.id, changes)
			} else {
				_, err = exporter.PartnerChanges(ctx, demoPartner, cred, ch.id, changes)
			}
			if err != nil {
				return fmt.Errorf("demo sync of %s: %w", ch.id, err)
			}
		}
		if ch.id == demoShrunkCohort {
			if _, err := ws.ReplaceMembers(ctx, demoPartner, ch.id, client.Identifiers{UserIDs: members[:len(members)/3]}); err != nil {
				return fmt.Errorf("demo replace of %s: %w", ch.id, err)
			}
		}
	}
	return nil
}

// pick returns n elements of ids, every step-th from the start.
func pick(ids []string, step, n int) []string {
	out := make([]string, 0, n)
	for i := 0; i < len(ids) && len(out) < n; i += step {
		out = append(out, ids[i])
	}
	return out
}

// printDemoPage tells where the page is: the first thing a new user opens.
func printDemoPage(out io.Writer, base string) {
	fmt.Fprintf(out, "\nThe page: open %s/ui/ and paste the workspace API key to see the cohorts, their sync\n", base)
	fmt.Fprintf(out, "history and health, build segments and look users up.\n")
}
