//go:build !linux

package loadgen

import (
	"context"
	"errors"
)

// RunRaw needs epoll (raw_linux.go); elsewhere the Go clients measure.
func RunRaw(context.Context, RawLoad) (*RawResult, error) {
	return nil, errors.New("loadgen: the raw client runs on Linux only")
}
