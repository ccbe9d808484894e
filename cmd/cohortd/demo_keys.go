package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/cohortd/cohortd/server/client"
)

// demoKeysFile is the name, inside the data directory, of the demo's
// secrets (mode 0600, beside admin.token): cohortd itself keeps only
// digests, so the demo saves what it was given to show the same working
// commands on every start.
const demoKeysFile = "demo.keys"

// demoKeys are the demo workspace's secrets.
type demoKeys struct {
	APIKey        string `json:"api_key"`         // workspace "demo"
	PartnerAPIKey string `json:"partner_api_key"` // partner "amplitude"
	ClientSecret  string `json:"client_secret"`   // import key of demo/amplitude
}

func demoKeysPath(dataDir string) string { return filepath.Join(dataDir, demoKeysFile) }

// loadDemoKeys reads the saved keys; ok is false when there are none.
func loadDemoKeys(dataDir string) (k demoKeys, ok bool, err error) {
	b, err := os.ReadFile(demoKeysPath(dataDir))
	if errors.Is(err, os.ErrNotExist) {
		return k, false, nil
	}
	if err != nil {
		return k, false, fmt.Errorf("read demo keys: %w", err)
	}
	if err := json.Unmarshal(b, &k); err != nil {
		// A damaged file is replaced by keys issued anew.
		return demoKeys{}, false, nil
	}
	return k, true, nil
}

// saveDemoKeys writes the keys atomically with mode 0600.
func saveDemoKeys(dataDir string, k demoKeys) error {
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileSync(demoKeysPath(dataDir), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save demo keys: %w", err)
	}
	return nil
}

// ensureDemoKeys returns working keys for the existing demo workspace: the
// saved ones, each checked against the server, and in place of any that is
// missing or no longer works (rotated, revoked, deleted through the admin
// API, or a data dir from a version that did not save them) a new one
// issued with the admin token (admin's). It saves the result when anything
// changed and reports whether it did.
func ensureDemoKeys(ctx context.Context, admin *client.Client, p demoParams) (demoKeys, bool, error) {
	k, _, err := loadDemoKeys(p.dataDir)
	if err != nil {
		return k, false, err
	}
	changed := false
	ok, err := apiKeyWorks(ctx, admin, k.APIKey)
	if err != nil {
		return k, false, err
	}
	if !ok {
		if k.APIKey, err = admin.RotateWorkspaceKey(ctx, demoWorkspace); err != nil {
			return k, false, err
		}
		changed = true
	}
	partnerOK, secretOK, err := partnerCredentials(ctx, admin, k.PartnerAPIKey, k.ClientSecret)
	if err != nil {
		return k, false, err
	}
	if !partnerOK {
		// Re-key the partner, or register it again if it was deleted.
		key, err := admin.RotatePartnerKey(ctx, demoPartner)
		if err != nil {
			key, err = admin.CreatePartner(ctx, demoPartner)
		}
		if err != nil {
			return k, false, err
		}
		k.PartnerAPIKey, changed = key, true
		if _, secretOK, err = partnerCredentials(ctx, admin, k.PartnerAPIKey, k.ClientSecret); err != nil {
			return k, false, err
		}
	}
	if !secretOK {
		ik, err := admin.CreateImportKey(ctx, demoWorkspace, demoPartner)
		if err != nil {
			return k, false, err
		}
		k.ClientSecret, changed = ik.ClientSecret, true
	}
	if changed {
		if err := saveDemoKeys(p.dataDir, k); err != nil {
			return k, false, err
		}
	}
	return k, changed, nil
}

// apiKeyWorks reports whether the workspace API key is not refused as
// unauthenticated.
func apiKeyWorks(ctx context.Context, c *client.Client, apiKey string) (bool, error) {
	if apiKey == "" {
		return false, nil
	}
	_, err := c.WithToken(apiKey).Usage(ctx)
	if e, ok := errors.AsType[*client.Error](err); ok {
		return e.Status != http.StatusUnauthorized, nil
	}
	return err == nil, err
}

// partnerCredentials checks a partner_api_key and a client_secret without
// changing anything: a cohort upsert without a cohort is refused as
// malformed, but only after its credentials were checked, and a 401 says
// which one failed. secretOK is meaningful only when partnerOK.
func partnerCredentials(ctx context.Context, c *client.Client, partnerKey, secret string) (partnerOK, secretOK bool, err error) {
	if partnerKey == "" {
		return false, false, nil
	}
	err = c.WithToken("").UpsertPartnerCohort(ctx, demoPartner,
		client.PartnerCredentials{PartnerAPIKey: partnerKey, ClientSecret: secret}, "", "", time.Time{})
	e, ok := errors.AsType[*client.Error](err)
	switch {
	case !ok:
		// nil cannot happen (the body names no cohort); a transport error.
		return false, false, err
	case e.Status != http.StatusUnauthorized:
		return true, secret != "", nil
	}
	return e.Message != "Invalid Partner API key", false, nil
}
