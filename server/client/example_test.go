package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/server"
	"github.com/cohortd/cohortd/server/client"
)

// startServer runs a cohortd server with an in-memory engine on a loopback
// port and returns its base URL and a function that stops it.
func startServer(adminToken string) (base string, stop func(), err error) {
	e, err := engine.Open(engine.Options{})
	if err != nil {
		return "", nil, err
	}
	s := server.New(server.Options{AdminToken: adminToken, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	s.SetEngine(e)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, errors.Join(err, e.Close())
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() {
		_ = s.Shutdown(context.Background())
		<-done
		_ = e.Close()
	}, nil
}

// A program that creates a workspace, loads users, imports a cohort and
// queries it.
func Example() {
	base, stop, err := startServer("admin-secret")
	if err != nil {
		log.Fatal(err)
	}
	defer stop()
	ctx := context.Background()

	admin := client.New(base, client.Options{Token: "admin-secret"})
	apiKey, err := admin.CreateWorkspace(ctx, "acme")
	if err != nil {
		log.Fatal(err)
	}
	// The workspace endpoints take the workspace's API key; bulk bodies
	// go out compressed.
	c := client.New(base, client.Options{Token: apiKey, Encoding: client.EncodingZstd})
	up, err := c.UpsertUsers(ctx, []client.User{
		{ExternalID: "u1"},
		{ExternalID: "u2", Aliases: []client.Alias{{Name: "email", Label: "u2@example.com"}}},
		{DeviceID: "d-9"},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("created", up.Created)

	ch, err := c.Changes(ctx, "amplitude", "power_users", []client.Change{
		{Identifiers: client.Identifiers{UserIDs: []string{"u1", "ghost"}, Aliases: []client.Alias{{Name: "email", Label: "u2@example.com"}}}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("added", ch.Added, "unmatched", ch.Unmatched)

	n, err := c.Count(ctx, client.And(client.Cohort("amplitude/power_users"), client.Not(client.Cohort("amplitude/churn_risk"))))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("count", n.Count, n.Warnings)

	err = c.Members(ctx, "amplitude", "power_users", func(m client.Member) error {
		fmt.Println("member", m.ExternalID, m.Aliases)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}

	// Errors carry the status and the JSON error body.
	_, err = c.UpsertUsers(ctx, []client.User{{}})
	if e, ok := errors.AsType[*client.Error](err); ok {
		fmt.Println(e.Status, e.Message)
	}
	// Output:
	// created 3
	// added 2 unmatched 1
	// count 2 [unknown cohort amplitude/churn_risk]
	// member u1 []
	// member u2 [{email u2@example.com}]
	// 400 user record must have external_id, device_id or aliases
}
