package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/cohortd/cohortd/engine/kafkalog"
	"github.com/cohortd/cohortd/index"
)

// The replication tests run engines of one group on an in-process kfake
// cluster (three brokers, replication factor 3), each with its own
// kafkalog.Log and data directory, the way cmd/cohortd wires them.

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// logCluster starts a kfake cluster with the topic "cohortd".
func logCluster(t testing.TB, partitions int32) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(3))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := kafkalog.CreateTopic(context.Background(), c.ListenAddrs(), "cohortd", partitions, 3, 1<<20); err != nil {
		t.Fatal(err)
	}
	return c
}

// node is one engine of a group and its apply loop.
type node struct {
	e      *Engine
	log    *kafkalog.Log
	cancel context.CancelFunc
	done   chan error
	dir    string
}

type nodeOpts struct {
	dir       string
	maxRecord int
	timeout   time.Duration
	now       func() time.Time
}

func openNode(t testing.TB, c *kfake.Cluster, o nodeOpts) *node {
	t.Helper()
	n, err := tryOpenNode(c, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.close(t) })
	select {
	case <-n.e.CaughtUp():
	case err := <-n.done:
		t.Fatalf("apply loop ended before catching up: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("node did not catch up")
	}
	return n
}

func tryOpenNode(c *kfake.Cluster, o nodeOpts) (*node, error) {
	l, err := kafkalog.Open(context.Background(), kafkalog.Options{Brokers: c.ListenAddrs(), Topic: "cohortd", ClientID: "test",
		Logger: quietLog(), MaxRecordBytes: o.maxRecord, ProduceTimeout: o.timeout})
	if err != nil {
		return nil, err
	}
	e, err := Open(Options{Dir: o.dir, Log: l, NodeID: "n", CursorSecret: []byte("group secret"), Logger: quietLog(),
		Now: o.now, ApplyTimeout: o.timeout, OnFatal: func(err error) { panic(err) }})
	if err != nil {
		l.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{e: e, log: l, cancel: cancel, done: make(chan error, 1), dir: o.dir}
	go func() { n.done <- e.RunLog(ctx) }()
	return n, nil
}

func (n *node) close(t testing.TB) {
	if n.cancel == nil {
		return
	}
	n.cancel()
	if err := <-n.done; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("apply loop: %v", err)
	}
	if err := n.e.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	n.log.Close()
	n.cancel = nil
}

// synced waits until every node has applied everything in the log.
func synced(t testing.TB, nodes ...*node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ends, err := nodes[0].log.EndOffsets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		for p, end := range ends {
			if end == 0 {
				continue
			}
			if err := n.e.WaitPosition(ctx, Position{Partition: int32(p), Offset: end - 1}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// sameDigest checks that every node has the digest of the first.
func sameDigest(t testing.TB, nodes ...*node) string {
	t.Helper()
	synced(t, nodes...)
	want, pos := nodes[0].e.Digest()
	for i, n := range nodes[1:] {
		got, gpos := n.e.Digest()
		if got != want {
			var ta, tb bytes.Buffer
			nodes[0].e.digestTo(&ta)
			n.e.digestTo(&tb)
			la, lb := bytes.Split(ta.Bytes(), []byte("\n")), bytes.Split(tb.Bytes(), []byte("\n"))
			for j := 0; j < min(len(la), len(lb)); j++ {
				if !bytes.Equal(la[j], lb[j]) {
					lo := max(0, j-8)
					t.Errorf("first difference at field %d:\nnode 0: %q\nnode %d: %q", j, la[lo:j+1], i+1, lb[lo:j+1])
					break
				}
			}
			t.Fatalf("node %d digest %s at %v, node 0 %s at %v", i+1, got, gpos, want, pos)
		}
	}
	for i, n := range nodes {
		if err := n.e.Check(); err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
	}
	return want
}

func userBatch(recs ...[3]string) *UserBatch {
	var b UserBatch
	for _, r := range recs {
		var ext, dev []byte
		var aliases [][]byte
		if r[0] != "" {
			ext = []byte(r[0])
		}
		if r[1] != "" {
			dev = []byte(r[1])
		}
		if r[2] != "" {
			aliases = [][]byte{index.AliasKey(nil, []byte("email"), []byte(r[2]))}
		}
		b.Add(ext, dev, aliases)
	}
	return &b
}

func idKeys(ss ...string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

// TestReplicationWrites runs every kind of write once through different
// nodes and checks the replies and the converged state.
func TestReplicationWrites(t *testing.T) {
	c := logCluster(t, 4)
	a := openNode(t, c, nodeOpts{dir: t.TempDir()})
	b := openNode(t, c, nodeOpts{dir: t.TempDir()})
	cn := openNode(t, c, nodeOpts{})

	apiKey, err := a.e.CreateWorkspace("acme")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.e.CreateWorkspace("acme"); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: %v", err)
	}
	pkey, err := b.e.CreatePartner("amplitude")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cn.e.CreatePartner("mixpanel"); err != nil {
		t.Fatal(err)
	}
	synced(t, a, b, cn)
	wa, wb, wc := a.e.Workspace("acme"), b.e.Workspace("acme"), cn.e.Workspace("acme")
	if wa == nil || wb == nil || wc == nil {
		t.Fatal("workspace missing on a node")
	}
	if cn.e.WorkspaceByAPIKey([]byte(apiKey)) != wc {
		t.Fatal("api key does not select the workspace on another node")
	}
	kid, secret, err := wc.CreateImportKey("amplitude")
	if err != nil || kid == "" {
		t.Fatal(kid, err)
	}
	synced(t, a, b, cn)
	if w, err := a.e.AuthPartner("amplitude", []byte(pkey), []byte(secret)); err != nil || w != wa {
		t.Fatalf("auth on another node: %v", err)
	}

	up, err := wa.UpsertUsers(userBatch([3]string{"u1", "", ""}, [3]string{"u2", "", "u2@x"}, [3]string{"", "dev-anon", ""}, [3]string{"u3", "dev-3", ""}))
	if err != nil || up.Created != 4 {
		t.Fatalf("upsert: %+v %v", up, err)
	}
	// The anonymous device user is identified through another node.
	up, err = wb.UpsertUsers(userBatch([3]string{"u4", "dev-anon", ""}))
	if err != nil || up.Identified != 1 {
		t.Fatalf("identify: %+v %v", up, err)
	}
	if err := wc.UpsertCohort("amplitude", "c1", "First", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	cs := wa.NewChangeSet()
	cs.SetSource(SourcePartner)
	cs.AddMany(index.KindExternal, idKeys("u1", "u2", "nobody"), false)
	cs.AddMany(index.KindDevice, idKeys("dev-3"), false) // identified: device_id_identified
	cs.AddMany(index.KindAlias, [][]byte{index.AliasKey(nil, []byte("email"), []byte("u2@x"))}, true)
	cs.Drop(2)
	res, err := wa.ApplyChanges("amplitude", "c1", cs)
	if err != nil {
		t.Fatal(err)
	}
	want := ApplyResult{Matched: 3, Unmatched: 2, Unknown: 1, DeviceIdentified: 1, Added: 1, Removed: 0, DroppedBeforeFloor: 2, DataPoints: 1}
	if res != want {
		t.Fatalf("changes: %+v, want %+v", res, want)
	}
	ms := wb.NewMemberSet()
	ms.AddMany(index.KindExternal, idKeys("u3", "u4", "ghost"))
	rr, err := wb.ReplaceMembers("amplitude", "c2", ms)
	if err != nil || rr.Added != 2 || rr.Unmatched != 1 {
		t.Fatalf("replace: %+v %v", rr, err)
	}
	// A webhook snapshot in two pages through two nodes, with the alias
	// fallback.
	var p1, p2 Candidates
	p1.Add([]byte("u1"), nil)
	p1.Add([]byte("nope"), index.AliasKey(nil, []byte("email"), []byte("u2@x")))
	p2.Add(nil, nil)
	ms = wa.NewMemberSet()
	ms.AddCandidates(&p1)
	st, err := wa.StagePage("mixpanel", "77", "Mixpanel 77", "s1", 1, 2, ms)
	if err != nil || st.Staged != 2 || st.Matched != 2 || st.Committed {
		t.Fatalf("page 1: %+v %v", st, err)
	}
	ms = wc.NewMemberSet()
	ms.AddCandidates(&p2)
	st, err = wc.StagePage("mixpanel", "77", "", "s1", 2, 2, ms)
	if err != nil || !st.Committed || st.Replace.Added != 2 || st.Unmatched != 1 {
		t.Fatalf("page 2: %+v %v", st, err)
	}
	cs = wb.NewChangeSet()
	cs.SetSource(SourceWebhook)
	cs.AddCandidates(&p1, true)
	if res, err := wb.ApplyChanges("mixpanel", "77", cs); err != nil || res.Removed != 2 {
		t.Fatalf("webhook remove: %+v %v", res, err)
	}
	if err := wa.RememberReply("k1", IdempotentReply{Status: 201, ContentType: "application/json", Body: []byte(`{"x":1}`)}); err != nil {
		t.Fatal(err)
	}
	if err := b.e.RememberReply("ka", IdempotentReply{Status: 201, Body: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	del, err := wc.DeleteUsers(IdentifierSet{ExternalIDs: idKeys("u3", "zzz")})
	if err != nil || del.Deleted != 1 || del.Unmatched != 1 {
		t.Fatalf("delete users: %+v %v", del, err)
	}
	if err := wa.DeleteCohort("amplitude", "c2"); err != nil {
		t.Fatal(err)
	}
	if err := wa.DeleteCohort("amplitude", "c2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if err := wb.RevokeImportKey("amplitude", kid); err != nil {
		t.Fatal(err)
	}
	newKey, err := cn.e.RotateWorkspaceKey("acme")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.e.RotatePartnerKey("amplitude"); err != nil {
		t.Fatal(err)
	}
	sameDigest(t, a, b, cn)

	if a.e.WorkspaceByAPIKey([]byte(apiKey)) != nil || a.e.WorkspaceByAPIKey([]byte(newKey)) == nil {
		t.Fatal("rotation not applied on another node")
	}
	if _, err := b.e.AuthPartner("amplitude", []byte(pkey), []byte(secret)); err == nil {
		t.Fatal("revoked key still works")
	}
	if c := wb.Cohort("amplitude", "c1"); c == nil || c.Members().GetCardinality() != 1 || c.Info().Name != "First" {
		t.Fatalf("cohort c1 on b: %+v", c)
	}
	if r, ok := wc.IdempotentReply("k1"); !ok || string(r.Body) != `{"x":1}` {
		t.Fatal("idempotency reply not replicated")
	}
	if _, ok := a.e.IdempotentReply("ka"); !ok {
		t.Fatal("admin idempotency reply not replicated")
	}
	if _, ok := a.e.ScopePosition("acme"); !ok {
		t.Fatal("no position for the workspace")
	}
	// A member-page cursor handed out by one node pages on another.
	seg, err := parseSegment([]byte(`{"all":true}`))
	if err != nil {
		t.Fatal(err)
	}
	first, cursor, err := wa.Bind(seg).Page("", 1)
	if err != nil || len(first) != 1 || cursor == "" {
		t.Fatalf("first page: %v %q %v", first, cursor, err)
	}
	next, _, err := wc.Bind(seg).Page(cursor, 1)
	if err != nil || len(next) != 1 || next[0] <= first[0] {
		t.Fatalf("next page on another node: %v %v", next, err)
	}
	if err := b.e.DeleteWorkspace("acme", false); err == nil {
		t.Fatal("deleting a non-empty workspace without force")
	}
	if err := b.e.DeleteWorkspace("acme", true); err != nil {
		t.Fatal(err)
	}
	if err := cn.e.DeletePartner("mixpanel"); err != nil {
		t.Fatal(err)
	}
	sameDigest(t, a, b, cn)
	if a.e.Workspace("acme") != nil {
		t.Fatal("workspace not deleted everywhere")
	}
}

// TestReplicationPartnerDelete: deleting a partner invalidates its keys on
// every node, whatever the order of the partitions, and registering the
// slug again does not revive them.
func TestReplicationPartnerDelete(t *testing.T) {
	c := logCluster(t, 3)
	a := openNode(t, c, nodeOpts{})
	b := openNode(t, c, nodeOpts{})
	if _, err := a.e.CreateWorkspace("w1"); err != nil {
		t.Fatal(err)
	}
	pk, err := a.e.CreatePartner("segment")
	if err != nil {
		t.Fatal(err)
	}
	synced(t, a, b)
	_, secret, err := b.e.Workspace("w1").CreateImportKey("segment")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.e.DeletePartner("segment"); err != nil {
		t.Fatal(err)
	}
	pk2, err := a.e.CreatePartner("segment")
	if err != nil {
		t.Fatal(err)
	}
	sameDigest(t, a, b)
	for _, n := range []*node{a, b} {
		if _, err := n.e.AuthPartner("segment", []byte(pk2), []byte(secret)); !errors.Is(err, ErrBadClientSecret) {
			t.Fatalf("old key after re-registration: %v", err)
		}
		if ks := n.e.Workspace("w1").ImportKeys("segment"); len(ks) != 1 || !ks[0].Revoked {
			t.Fatalf("listing: %+v", ks)
		}
	}
	_, secret2, err := a.e.Workspace("w1").CreateImportKey("segment")
	if err != nil {
		t.Fatal(err)
	}
	synced(t, a, b)
	if _, err := b.e.AuthPartner("segment", []byte(pk2), []byte(secret2)); err != nil {
		t.Fatalf("new key: %v", err)
	}
	if _, err := b.e.AuthPartner("segment", []byte(pk), []byte(secret2)); !errors.Is(err, ErrBadPartnerKey) {
		t.Fatalf("old partner key: %v", err)
	}
}

// TestReplicationTooLarge: a request whose record would not fit is
// refused before anything reaches the log.
func TestReplicationTooLarge(t *testing.T) {
	c := logCluster(t, 1)
	a := openNode(t, c, nodeOpts{maxRecord: 64 << 10})
	if _, err := a.e.CreateWorkspace("w"); err != nil {
		t.Fatal(err)
	}
	w := a.e.Workspace("w")
	cs := w.NewChangeSet()
	for i := range 10_000 {
		cs.AddMany(index.KindExternal, idKeys(fmt.Sprintf("user-%014d", i)), false)
	}
	if _, err := w.ApplyChanges("p", "c", cs); !errors.Is(err, ErrRecordTooLarge) {
		t.Fatalf("large batch: %v", err)
	}
	if w.Cohort("p", "c") != nil {
		t.Fatal("a refused batch created the cohort")
	}
}

// TestReplicationUnavailable: with the log gone, writes fail with
// ErrUnavailable and reads keep working.
func TestReplicationUnavailable(t *testing.T) {
	c := logCluster(t, 2)
	a := openNode(t, c, nodeOpts{timeout: 2 * time.Second})
	if _, err := a.e.CreateWorkspace("w"); err != nil {
		t.Fatal(err)
	}
	w := a.e.Workspace("w")
	if _, err := w.UpsertUsers(userBatch([3]string{"u1", "", ""})); err != nil {
		t.Fatal(err)
	}
	c.Close()
	start := time.Now()
	_, err := w.UpsertUsers(userBatch([3]string{"u2", "", ""}))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("write with the log down: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("write took %s", d)
	}
	if w.Resolve(index.KindExternal, []byte("u1")) == index.NoUser {
		t.Fatal("read failed with the log down")
	}
}

// TestReplicationRestart: a node restarted from its snapshot catches up
// with what the others wrote meanwhile, and a snapshot-restored node has
// the digest of nodes that applied the whole log.
func TestReplicationRestart(t *testing.T) {
	c := logCluster(t, 3)
	dir := t.TempDir()
	a := openNode(t, c, nodeOpts{dir: dir})
	b := openNode(t, c, nodeOpts{})
	rng := rand.New(rand.NewPCG(7, 7))
	g := newGroupLoad(t, rng, []*node{a, b})
	g.setup()
	g.run(150)
	synced(t, a, b)
	if _, err := a.e.SnapshotNow(); err != nil {
		t.Fatal(err)
	}
	g.run(50) // after the snapshot: replayed from the log
	synced(t, a, b)
	a.close(t)
	g.nodes = []*node{b}
	g.run(100)
	a2 := openNode(t, c, nodeOpts{dir: dir})
	sameDigest(t, a2, b)
}

// TestReplicationDeterministicReplay replays the same log into two fresh
// engines: their snapshots are the same bytes.
func TestReplicationDeterministicReplay(t *testing.T) {
	c := logCluster(t, 3)
	a := openNode(t, c, nodeOpts{})
	b := openNode(t, c, nodeOpts{})
	rng := rand.New(rand.NewPCG(3, 9))
	g := newGroupLoad(t, rng, []*node{a, b})
	g.setup()
	g.runConcurrent(4, 60)
	sameDigest(t, a, b)
	var snaps [][]byte
	for range 2 {
		dir := t.TempDir()
		n := openNode(t, c, nodeOpts{dir: dir})
		synced(t, n)
		info, err := n.e.SnapshotNow()
		if err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(filepath.Join(dir, info.File))
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, raw)
		if d, _ := n.e.Digest(); d != sameDigest(t, a, b) {
			t.Fatal("replayed node has another digest")
		}
	}
	if !bytes.Equal(snaps[0], snaps[1]) {
		t.Fatalf("two replays of one log wrote different snapshots (%d and %d bytes)", len(snaps[0]), len(snaps[1]))
	}
}

// TestReplicationConvergence: three nodes under a random mix of every
// write kind, from concurrent writers on every node, several of them on
// the same cohorts, converge to one digest.
func TestReplicationConvergence(t *testing.T) {
	c := logCluster(t, 4)
	nodes := []*node{openNode(t, c, nodeOpts{dir: t.TempDir()}), openNode(t, c, nodeOpts{}), openNode(t, c, nodeOpts{})}
	rng := rand.New(rand.NewPCG(1, 2))
	g := newGroupLoad(t, rng, nodes)
	g.setup()
	rounds := 600
	if testing.Short() {
		rounds = 200
	}
	g.runConcurrent(6, rounds)
	t.Logf("%d of %d writes succeeded", g.ok.Load(), 6*rounds)
	if g.ok.Load() < int64(6*rounds/2) {
		t.Fatalf("only %d of %d writes succeeded: the mix proves little", g.ok.Load(), 6*rounds)
	}
	sameDigest(t, nodes...)
	// A fourth node replaying everything from the start agrees.
	d := openNode(t, c, nodeOpts{})
	sameDigest(t, append(nodes, d)...)
}

// groupLoad drives random writes of every kind through the nodes of a
// group.
type groupLoad struct {
	t        testing.TB
	mu       sync.Mutex
	rng      *rand.Rand
	nodes    []*node
	wss      []string
	partners []string
	ok       atomic.Int64 // writes that succeeded
}

func newGroupLoad(t testing.TB, rng *rand.Rand, nodes []*node) *groupLoad {
	return &groupLoad{t: t, rng: rng, nodes: nodes}
}

func (g *groupLoad) intn(n int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.rng.IntN(n)
}

func (g *groupLoad) setup() {
	n := g.nodes[0]
	for _, p := range []string{"amplitude", "mixpanel", "segment"} {
		if _, err := n.e.CreatePartner(p); err != nil {
			g.t.Fatal(err)
		}
		g.partners = append(g.partners, p)
	}
	for i := range 3 {
		id := fmt.Sprintf("ws%d", i)
		if _, err := g.nodes[i%len(g.nodes)].e.CreateWorkspace(id); err != nil {
			g.t.Fatal(err)
		}
		g.wss = append(g.wss, id)
	}
	synced(g.t, g.nodes...)
}

func (g *groupLoad) run(n int) {
	for range n {
		g.step()
	}
}

func (g *groupLoad) runConcurrent(writers, n int) {
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.run(n)
		}()
	}
	wg.Wait()
}

func (g *groupLoad) user(i int) string { return fmt.Sprintf("user-%04d", i) }

// idents returns a few random identifiers of one kind.
func (g *groupLoad) idents(kind index.Kind, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		u := g.intn(300)
		switch kind {
		case index.KindExternal:
			out[i] = []byte(g.user(u))
		case index.KindDevice:
			out[i] = []byte(fmt.Sprintf("dev-%04d", u))
		default:
			out[i] = index.AliasKey(nil, []byte("email"), []byte(fmt.Sprintf("%d@x", u)))
		}
	}
	return out
}

// step runs one random write on a random node. Errors that the mix
// provokes on purpose (unknown cohorts, revoked keys) are fine; anything
// else fails the test.
func (g *groupLoad) step() {
	n := g.nodes[g.intn(len(g.nodes))]
	wsID := g.wss[g.intn(len(g.wss))]
	w := n.e.Workspace(wsID)
	if w == nil {
		return
	}
	partner := g.partners[g.intn(len(g.partners))]
	cohort := fmt.Sprintf("c%d", g.intn(4)) // few cohorts: writers collide
	kinds := []index.Kind{index.KindExternal, index.KindDevice, index.KindAlias}
	var err error
	if g.intn(100) == 0 {
		// Rarely, a lifecycle change: the last workspace or partner is
		// deleted and registered again, while others write to it.
		switch g.intn(4) {
		case 0:
			err = n.e.DeleteWorkspace(g.wss[len(g.wss)-1], true)
		case 1:
			_, err = n.e.CreateWorkspace(g.wss[len(g.wss)-1])
		case 2:
			err = n.e.DeletePartner(g.partners[len(g.partners)-1])
		default:
			_, err = n.e.CreatePartner(g.partners[len(g.partners)-1])
		}
		if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrExists) {
			g.t.Errorf("lifecycle: %v", err)
		}
		return
	}
	switch op := g.intn(100); {
	case op < 20:
		var b UserBatch
		for range 1 + g.intn(20) {
			u := g.intn(300)
			var ext, dev []byte
			var aliases [][]byte
			switch g.intn(4) {
			case 0:
				ext = []byte(g.user(u))
			case 1:
				dev = []byte(fmt.Sprintf("dev-%04d", u))
			case 2:
				aliases = [][]byte{index.AliasKey(nil, []byte("email"), []byte(fmt.Sprintf("%d@x", u)))}
			default:
				ext, dev = []byte(g.user(u)), []byte(fmt.Sprintf("dev-%04d", g.intn(300)))
			}
			b.Add(ext, dev, aliases)
		}
		_, err = w.UpsertUsers(&b)
	case op < 50:
		cs := w.NewChangeSet()
		cs.SetSource(SyncSource(g.intn(2)))
		for range 1 + g.intn(4) {
			cs.AddMany(kinds[g.intn(3)], g.idents(kinds[g.intn(3)], 1+g.intn(30)), g.intn(3) == 0)
		}
		cs.Drop(g.intn(2))
		_, err = w.ApplyChanges(partner, cohort, cs)
	case op < 58:
		ms := w.NewMemberSet()
		ms.AddMany(index.KindExternal, g.idents(index.KindExternal, g.intn(40)))
		ms.AddMany(index.KindDevice, g.idents(index.KindDevice, g.intn(5)))
		_, err = w.ReplaceMembers(partner, cohort, ms)
	case op < 70:
		var c Candidates
		for range g.intn(30) {
			var alias []byte
			if g.intn(2) == 0 {
				alias = index.AliasKey(nil, []byte("email"), []byte(fmt.Sprintf("%d@x", g.intn(300))))
			}
			c.Add([]byte(g.user(g.intn(400))), alias)
		}
		total := 1 + g.intn(3)
		ms := w.NewMemberSet()
		ms.AddCandidates(&c)
		_, err = w.StagePage("mixpanel", cohort, "Mixpanel "+cohort, fmt.Sprintf("s%d", g.intn(3)), 1+g.intn(total), total, ms)
		var inv *InvalidError
		if errors.As(err, &inv) {
			err = nil // total_pages differing from an earlier page of the session
		}
	case op < 75:
		var c Candidates
		c.Add([]byte(g.user(g.intn(300))), nil)
		cs := w.NewChangeSet()
		cs.SetSource(SourceWebhook)
		cs.AddCandidates(&c, g.intn(2) == 0)
		_, err = w.ApplyChanges("mixpanel", cohort, cs)
	case op < 80:
		err = w.UpsertCohort(partner, cohort, fmt.Sprintf("name %d", g.intn(3)), time.Unix(int64(g.intn(1e9)), 0))
	case op < 83:
		_, err = w.DeleteUsers(IdentifierSet{ExternalIDs: g.idents(index.KindExternal, 2), DeviceIDs: g.idents(index.KindDevice, 1)})
	case op < 85:
		err = w.DeleteCohort(partner, cohort)
	case op < 89:
		_, _, err = w.CreateImportKey(partner)
	case op < 91:
		if ks := w.ImportKeys(partner); len(ks) > 0 {
			err = w.RevokeImportKey(partner, ks[g.intn(len(ks))].KeyID)
		}
	case op < 95:
		err = w.RememberReply(fmt.Sprintf("key-%d", g.intn(20)), IdempotentReply{Status: 200, Body: []byte(cohort)})
	case op < 97:
		_, err = n.e.RotateWorkspaceKey(wsID)
	case op < 98:
		_, err = n.e.RotatePartnerKey(partner)
	default:
		err = n.e.RememberReply(fmt.Sprintf("admin-%d", g.intn(5)), IdempotentReply{Status: 201, Body: []byte("{}")})
	}
	switch {
	case err == nil:
		g.ok.Add(1)
	case !errors.Is(err, ErrNotFound):
		g.t.Errorf("write: %v", err)
	}
}

// applyEngine is an in-memory engine set up as a group node without a log,
// for feeding records straight to applyCommand.
func applyEngine(t testing.TB) *Engine {
	e, err := Open(Options{Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	e.repl = &replicator{parts: 1, applied: make([]atomic.Int64, 1), ends: make([]atomic.Int64, 1), maxRec: 1 << 20, readyCh: make(chan struct{}), done: make(chan struct{})}
	e.repl.mu.waiters = map[uint64]chan cmdResult{}
	e.repl.mu.tick = make(chan struct{})
	e.repl.at.Store(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixMilli())
	return e
}

// commandValue builds a record value: type, header and fields.
func commandValue(typ uint8, scope string, gen uint64, fields []byte) []byte {
	var enc recordEncoder
	enc.u8(typ)
	enc.b = append(enc.b, "origin!!"...)
	enc.uvarint(1)
	enc.str(scope)
	enc.uvarint(gen)
	return append(enc.b, fields...)
}

// FuzzApplyCommand feeds arbitrary records of the log to the apply: errors
// are fine, panics are not, and the engine stays consistent.
func FuzzApplyCommand(f *testing.F) {
	var enc recordEncoder
	enc.u8(admWorkspaceCreate)
	enc.digest([32]byte{1})
	f.Add(commandValue(cmdAdmin, "w2", 0, enc.b))
	cc := &changeCmd{max: 1 << 20}
	cc.add(index.KindExternal, idKeys("u1", "u2"), false)
	cc.add(index.KindDevice, idKeys("d1"), true)
	var cands Candidates
	cands.Add([]byte("u1"), index.AliasKey(nil, []byte("email"), []byte("a@x")))
	cands.Add(nil, nil)
	cc.addCandidates(&cands, false)
	enc.reset()
	enc.str("p")
	enc.str("c")
	enc.u8(1)
	enc.uvarint(2)
	cc.appendGroups(&enc)
	f.Add(commandValue(cmdChanges, "ws", 0, enc.b))
	enc.reset()
	enc.str("mixpanel")
	enc.str("7")
	enc.str("name")
	enc.str("s1")
	enc.uvarint(1)
	enc.uvarint(1)
	cc.appendGroups(&enc)
	f.Add(commandValue(cmdWebhookPage, "ws", 0, enc.b))
	enc.reset()
	enc.u8(cmdOpUpsert)
	enc.uvarint(2)
	enc.optBytes([]byte("u1"))
	enc.optBytes(nil)
	enc.uvarint(0)
	enc.optBytes([]byte("u3"))
	enc.optBytes([]byte("d1"))
	enc.uvarint(1)
	enc.bytes(index.AliasKey(nil, []byte("email"), []byte("a@x")))
	f.Add(commandValue(cmdUsers, "ws", 0, enc.b))
	f.Add(commandValue(cmdExpireSessions, "ws", 0, nil))
	f.Fuzz(func(t *testing.T, value []byte) {
		e := applyEngine(t)
		defer e.Close()
		e.mu.Lock()
		w := e.applyWorkspaceSeeded("ws", [32]byte{9}, e.writeTime(), 0, 7)
		w.gen = 1
		e.mu.Unlock()
		var b UserBatch
		b.Add([]byte("u1"), nil, nil)
		b.Add(nil, []byte("d1"), nil)
		if _, err := w.upsertUsers(&b); err != nil {
			t.Fatal(err)
		}
		e.applyCommand(kafkalog.Record{Position: Position{Offset: 10}, Value: value})
		e.applyCommand(kafkalog.Record{Position: Position{Offset: 11}, Value: value})
		if err := e.Check(); err != nil {
			t.Fatal(err)
		}
	})
}

// TestReplicationRecordsGone: a node whose snapshot is older than what the
// log still holds refuses to start and says to bootstrap from a peer; so
// does an empty node when the log no longer starts at offset 0.
func TestReplicationRecordsGone(t *testing.T) {
	c := logCluster(t, 1)
	dir := t.TempDir()
	a := openNode(t, c, nodeOpts{dir: dir})
	if _, err := a.e.CreateWorkspace("w"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.e.SnapshotNow(); err != nil {
		t.Fatal(err)
	}
	w := a.e.Workspace("w")
	for i := range 5 {
		if err := w.UpsertCohort("p", fmt.Sprint(i), "n", time.Unix(0, 0)); err != nil {
			t.Fatal(err)
		}
	}
	ends, err := a.log.EndOffsets(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	a.close(t)
	// Keep only the snapshot taken before the last records (Close wrote a
	// newer one).
	snaps, _ := listSnapshots(dir)
	for _, s := range snaps[:len(snaps)-1] {
		os.Remove(filepath.Join(dir, s.name))
	}
	// Retention deletes everything but the last two records.
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var os_ kadm.Offsets
	os_.Add(kadm.Offset{Topic: "cohortd", Partition: 0, At: ends[0] - 2})
	if _, err := kadm.NewClient(cl).DeleteRecords(context.Background(), os_); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, t.TempDir()} {
		_, err := tryOpenNode(c, nodeOpts{dir: d})
		if !errors.Is(err, kafkalog.ErrGone) || !bytes.Contains([]byte(err.Error()), []byte("-bootstrap-from")) {
			t.Fatalf("open with records gone (dir %s): %v", d, err)
		}
	}
}

// TestReplicationClockFree: nodes whose clocks disagree wildly still agree,
// because applies use the record's log time: cohort updated_at, usage
// days and session expiry come out the same, and a node whose clock says
// a session is idle only produces an expiry record, which drops nothing
// when, by the log's time, the session is fresh.
func TestReplicationClockFree(t *testing.T) {
	c := logCluster(t, 2)
	past := func() time.Time { return time.Date(1999, 1, 1, 0, 0, 0, 0, time.UTC) }
	future := func() time.Time { return time.Now().Add(48 * time.Hour) }
	a := openNode(t, c, nodeOpts{now: past})
	b := openNode(t, c, nodeOpts{now: future})
	if _, err := a.e.CreateWorkspace("w"); err != nil {
		t.Fatal(err)
	}
	synced(t, a, b)
	wa, wb := a.e.Workspace("w"), b.e.Workspace("w")
	if _, err := wa.UpsertUsers(userBatch([3]string{"u1", "", ""}, [3]string{"u2", "", ""})); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cs := wb.NewChangeSet()
	cs.AddMany(index.KindExternal, idKeys("u1"), false)
	if _, err := wb.ApplyChanges("p", "c", cs); err != nil {
		t.Fatal(err)
	}
	var cands Candidates
	cands.Add([]byte("u2"), nil)
	ms := wa.NewMemberSet()
	ms.AddCandidates(&cands)
	if _, err := wa.StagePage("mixpanel", "9", "", "s", 1, 2, ms); err != nil {
		t.Fatal(err)
	}
	synced(t, a, b)
	if err := wb.ExpireSessions(); err != nil { // b's clock: two days later
		t.Fatal(err)
	}
	sameDigest(t, a, b)
	for _, w := range []*Workspace{wa, wb} {
		info := w.Cohort("p", "c").Info()
		if info.UpdatedAt.Before(start.Add(-time.Minute)) || info.UpdatedAt.After(time.Now().Add(time.Minute)) {
			t.Fatalf("updated_at %v is not the log's time (now %v)", info.UpdatedAt, time.Now())
		}
		if w.OpenSessions() != 1 {
			t.Fatalf("%d open sessions: an expiry went by a node's clock", w.OpenSessions())
		}
		days := w.Usage().Partners["p"].Days
		if len(days) != 1 || (days[start.UTC().Format("2006-01-02")] != 1 && days[time.Now().UTC().Format("2006-01-02")] != 1) {
			t.Fatalf("usage %+v is not on the log's day", days)
		}
	}
}
