package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/valyala/fasthttp"
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
// issued with the admin token. It saves the result when anything changed
// and reports whether it did.
func ensureDemoKeys(c *demoClient, p demoParams) (demoKeys, bool, error) {
	k, _, err := loadDemoKeys(p.dataDir)
	if err != nil {
		return k, false, err
	}
	changed := false
	ok, err := c.accepts("GET", "/v1/usage", k.APIKey)
	if err != nil {
		return k, false, err
	}
	if !ok {
		var r struct {
			APIKey string `json:"api_key"`
		}
		if err := c.json("POST", "/v1/workspaces/"+demoWorkspace+"/api-key", p.adminToken, struct{}{}, 201, &r); err != nil {
			return k, false, err
		}
		k.APIKey, changed = r.APIKey, true
	}
	partnerOK, secretOK, err := c.partnerCredentials(k.PartnerAPIKey, k.ClientSecret)
	if err != nil {
		return k, false, err
	}
	if !partnerOK {
		var r struct {
			Key string `json:"partner_api_key"`
		}
		// Re-key the partner, or register it again if it was deleted.
		err := c.json("POST", "/v1/partners/"+demoPartner+"/api-key", p.adminToken, struct{}{}, 201, &r)
		if err != nil {
			err = c.json("POST", "/v1/partners", p.adminToken, map[string]string{"slug": demoPartner}, 201, &r)
		}
		if err != nil {
			return k, false, err
		}
		k.PartnerAPIKey, changed = r.Key, true
		if _, secretOK, err = c.partnerCredentials(k.PartnerAPIKey, k.ClientSecret); err != nil {
			return k, false, err
		}
	}
	if !secretOK {
		var r struct {
			Secret string `json:"client_secret"`
		}
		if err := c.json("POST", "/v1/workspaces/"+demoWorkspace+"/partners/"+demoPartner+"/keys", p.adminToken, struct{}{}, 201, &r); err != nil {
			return k, false, err
		}
		k.ClientSecret, changed = r.Secret, true
	}
	if changed {
		if err := saveDemoKeys(p.dataDir, k); err != nil {
			return k, false, err
		}
	}
	return k, changed, nil
}

// accepts reports whether a request with the bearer token is not refused
// as unauthenticated.
func (c *demoClient) accepts(method, path, token string) (bool, error) {
	if token == "" {
		return false, nil
	}
	_, status, err := c.send(method, path, token, nil)
	return status != 401, err
}

// partnerCredentials checks a partner_api_key and a client_secret without
// changing anything: a cohort upsert without a cohort is refused as
// malformed, but only after its credentials were checked, and a 401 says
// which one failed. secretOK is meaningful only when partnerOK.
func (c *demoClient) partnerCredentials(partnerKey, secret string) (partnerOK, secretOK bool, err error) {
	if partnerKey == "" {
		return false, false, nil
	}
	b, err := json.Marshal(map[string]string{"partner_api_key": partnerKey, "client_secret": secret})
	if err != nil {
		return false, false, err
	}
	body, status, err := c.send("POST", "/partners/"+demoPartner+"/cohorts", "", b)
	if err != nil || status != 401 {
		return err == nil, err == nil && secret != "", err
	}
	var e struct {
		Message string `json:"message"`
	}
	_ = json.Unmarshal(body, &e)
	return e.Message != "Invalid Partner API key", false, nil
}

// send sends one request (a JSON body if any) and returns the reply's body
// and status, whatever the status.
func (c *demoClient) send(method, path, token string, body []byte) ([]byte, int, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(method)
	req.SetRequestURI(c.base + path)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.SetContentType("application/json")
		req.SetBodyRaw(body)
	}
	if err := c.hc.DoTimeout(req, resp, time.Minute); err != nil {
		return nil, 0, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return append([]byte(nil), resp.Body()...), resp.StatusCode(), nil
}
