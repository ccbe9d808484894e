package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
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

// demoSyncs sends the extra syncs through the public API.
func demoSyncs(ctx context.Context, c *demoClient, apiKey, partnerKey, secret string) error {
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
			changes := []map[string]any{
				{"user_ids": append(join, ghosts...), "device_ids": []string{}, "aliases": []any{}},
				{"user_ids": leave, "device_ids": []string{}, "aliases": []any{}, "should_remove": true},
			}
			if round%2 == 0 {
				if err := c.json("POST", "/v1/cohorts/"+demoPartner+"/"+ch.id+"/changes", apiKey,
					map[string]any{"cohort_changes": changes}, 200, nil); err != nil {
					return fmt.Errorf("demo sync of %s: %w", ch.id, err)
				}
				continue
			}
			b, err := json.Marshal(map[string]any{"partner_api_key": partnerKey, "client_secret": secret,
				"cohort_id": ch.id, "cohort_changes": changes})
			if err != nil {
				return err
			}
			if _, err := c.do("POST", "/partners/"+demoPartner+"/cohorts/users", "", "application/json", "gzip", gzipBytes(b), 201); err != nil {
				return fmt.Errorf("demo sync of %s: %w", ch.id, err)
			}
		}
		if ch.id == demoShrunkCohort {
			if err := c.json("PUT", "/v1/cohorts/"+demoPartner+"/"+ch.id+"/members", apiKey,
				map[string]any{"user_ids": members[:len(members)/3]}, 200, nil); err != nil {
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
