package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/cohortd/cohortd/engine"
	"github.com/valyala/fasthttp"
)

// apiError is an HTTP error reply: JSON {"message": message, "errors": errors}
// sent with status. Handlers return it (possibly wrapped) and writeError
// turns it into the reply; any other error becomes a 500.
type apiError struct {
	status  int
	message string
	errors  []string
}

// Error returns the message, followed by the details when there are any.
func (e *apiError) Error() string {
	if len(e.errors) == 0 {
		return e.message
	}
	return fmt.Sprintf("%s %q", e.message, e.errors)
}

// errorf returns an apiError with status and a formatted message.
func errorf(status int, format string, args ...any) *apiError {
	return &apiError{status: status, message: fmt.Sprintf(format, args...)}
}

// errorReply is the wire shape of an error; encoding/json is fine here because
// errors are off the hot path, and it turns invalid UTF-8 that a message may
// quote from the request into U+FFFD instead of emitting invalid JSON.
type errorReply struct {
	Message string   `json:"message"`
	Errors  []string `json:"errors"`
}

// writeError writes err as the reply of ctx. An *apiError anywhere in err's
// chain (errors.As) is sent as is; anything else is logged and answered with
// 500 {"message":"internal error"} so that no internal detail leaks.
func writeError(ctx *fasthttp.RequestCtx, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		slog.Error("internal error", "method", string(ctx.Method()), "path", string(ctx.Path()), "err", err)
		ae = &apiError{status: fasthttp.StatusInternalServerError, message: "internal error"}
	}
	reply := errorReply{Message: ae.message, Errors: ae.errors}
	if reply.Errors == nil {
		reply.Errors = []string{} // the contract says [] when empty, never null
	}
	b, mErr := json.Marshal(reply)
	if mErr != nil {
		// Cannot happen for two strings; keep the reply well-formed anyway.
		b = []byte(`{"message":"internal error","errors":[]}`)
	}
	ctx.Response.Header.SetContentType("application/json")
	if ae.status == fasthttp.StatusServiceUnavailable && len(ctx.Response.Header.Peek("Retry-After")) == 0 {
		ctx.Response.Header.Set("Retry-After", "1") // every 503 is worth a retry
	}
	ctx.SetStatusCode(ae.status)
	ctx.SetBody(b)
}

// mapError turns engine errors into API errors (docs/API.md §5). Other errors
// pass through unchanged (an apiError, or a 500 for fail to log).
func mapError(err error) error {
	var ae *apiError
	if errors.As(err, &ae) {
		return err
	}
	var inv *engine.InvalidError
	var pne *engine.PartnerNotEnabledError
	switch {
	case errors.As(err, &inv):
		return errorf(fasthttp.StatusBadRequest, "%s", inv.Message)
	case errors.As(err, &pne):
		return errorf(fasthttp.StatusUnauthorized, "Partner not enabled for client with client secret: %s...", pne.Prefix)
	case errors.Is(err, engine.ErrBadPartnerKey):
		return errorf(fasthttp.StatusUnauthorized, "Invalid Partner API key")
	case errors.Is(err, engine.ErrBadClientSecret):
		return errorf(fasthttp.StatusUnauthorized, "Invalid client secret")
	case errors.Is(err, engine.ErrNotFound):
		return errorf(fasthttp.StatusNotFound, "not found")
	case errors.Is(err, engine.ErrExists):
		return errorf(fasthttp.StatusConflict, "already exists")
	case errors.Is(err, engine.ErrCapacity):
		return errorf(fasthttp.StatusInsufficientStorage, "the workspace's identity tables are full (8 GiB of identifier bytes, or 4 billion users): delete users or split the workspace")
	case errors.Is(err, engine.ErrClosed):
		return errorf(fasthttp.StatusServiceUnavailable, "shutting down")
	case errors.Is(err, engine.ErrRecordTooLarge):
		return errorf(fasthttp.StatusRequestEntityTooLarge, "the request does not fit in one record of the replicated log (-kafka-max-record): send it in smaller requests")
	case errors.Is(err, engine.ErrUnavailable):
		// The outcome is unknown: the record may still be applied. A retry
		// with the same Idempotency-Key is safe (docs/API.md §7).
		return errorf(fasthttp.StatusServiceUnavailable, "the replicated log is unavailable; the write may or may not be applied: retry, with the same Idempotency-Key to be safe")
	case errors.Is(err, engine.ErrPositionTimeout):
		return errorf(fasthttp.StatusServiceUnavailable, "this node is behind the log; retry")
	case errors.Is(err, engine.ErrUsersChanged):
		return errorf(fasthttp.StatusServiceUnavailable, "users changed while the request was being resolved (nothing was applied): send it again")
	}
	return err
}
