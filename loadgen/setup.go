package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"strconv"
	"time"

	apiclient "github.com/cohortd/cohortd/server/client"
)

// ErrNoAdminToken is returned when credentials are missing and there is no
// admin token to create them with.
var ErrNoAdminToken = errors.New("loadgen: credentials missing and no admin token to create them")

// ensureCredentials fills what creds lacks through the admin API: a
// workspace (and its API key) when needWorkspace, a partner and a data
// import key when needPartner. It reports what it created on log by name
// only: secrets never reach the log (Options.OnCredentials hands them to
// the caller instead).
func ensureCredentials(ctx context.Context, cl *client, admin string, creds *Credentials, needWorkspace, needPartner bool, log io.Writer) error {
	if needWorkspace && creds.APIKey == "" {
		if admin == "" {
			return fmt.Errorf("%w: workspace API key", ErrNoAdminToken)
		}
		id := creds.Workspace
		if id == "" {
			id = "loadgen-" + strconv.FormatInt(time.Now().Unix(), 10)
		}
		ac := cl.admin(admin)
		key, err := ac.CreateWorkspace(ctx, id)
		if apiclient.StatusOf(err) == http.StatusConflict && creds.Workspace == "" {
			// A run in the same second took the name; stay independent.
			id = fmt.Sprintf("loadgen-%d-%s", time.Now().Unix(), randomSuffix())
			key, err = ac.CreateWorkspace(ctx, id)
		}
		if err != nil {
			return fmt.Errorf("create workspace %q: %w", id, err)
		}
		if key == "" {
			return fmt.Errorf("create workspace %q: reply without api_key", id)
		}
		creds.Workspace, creds.APIKey = id, key
		fmt.Fprintf(log, "loadgen: created workspace %s (its API key is not printed)\n", id)
	}
	if creds.Partner == "" {
		// /v1 paths take any slug, so bulk runs and queries need no
		// registered partner.
		creds.Partner = "loadgen"
	}
	if !needPartner {
		return nil
	}
	if creds.PartnerAPIKey == "" {
		if admin == "" {
			return fmt.Errorf("%w: partner API key", ErrNoAdminToken)
		}
		ac := cl.admin(admin)
		slug := creds.Partner
		key, err := ac.CreatePartner(ctx, slug)
		if apiclient.StatusOf(err) == http.StatusConflict {
			// The partner exists and its key is shown only once: use a fresh
			// slug so that each run is independent.
			slug = "lg-" + randomSuffix()
			key, err = ac.CreatePartner(ctx, slug)
		}
		if err != nil {
			return fmt.Errorf("create partner %q: %w", slug, err)
		}
		if key == "" {
			return fmt.Errorf("create partner %q: reply without partner_api_key", slug)
		}
		creds.Partner, creds.PartnerAPIKey = slug, key
		fmt.Fprintf(log, "loadgen: created partner %s (its partner API key is not printed)\n", slug)
	}
	if creds.ClientSecret == "" {
		if admin == "" {
			return fmt.Errorf("%w: client secret", ErrNoAdminToken)
		}
		return createImportKey(ctx, cl, admin, creds, log)
	}
	return nil
}

// createImportKey issues a data import key of (creds.Workspace,
// creds.Partner) with the admin token.
func createImportKey(ctx context.Context, cl *client, admin string, creds *Credentials, log io.Writer) error {
	if creds.Workspace == "" {
		return errors.New("loadgen: a client secret can only be created for a named workspace")
	}
	out, err := cl.admin(admin).CreateImportKey(ctx, creds.Workspace, creds.Partner)
	if err != nil {
		return fmt.Errorf("create data import key: %w", err)
	}
	if out.ClientSecret == "" {
		return errors.New("create data import key: reply without client_secret")
	}
	creds.ClientSecret = out.ClientSecret
	fmt.Fprintf(log, "loadgen: created data import key %s (its client secret is not printed)\n", out.KeyID)
	return nil
}

func randomSuffix() string {
	return strconv.FormatUint(rand.Uint64()&0xffffffffff, 36)
}

func currentEnv() Env {
	return Env{
		GoVersion:  runtime.Version(),
		OS:         runtime.GOOS,
		Arch:       runtime.GOARCH,
		NumCPU:     runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
	}
}
