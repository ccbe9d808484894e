package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"

	"github.com/cohortd/cohortd/engine"
	"github.com/cohortd/cohortd/engine/wal"
	"github.com/cohortd/cohortd/server"
)

// Fixtures are built once per universe size and shared by every benchmark
// of the process: seeding 1M users takes seconds, 100M minutes.
var fixtures struct {
	sync.Mutex
	engine map[int]*EngineFixture
	server map[int]*serverFixture
	naive  map[int]*naiveFixture
	redis  *redisFixture
}

func engineFixture(tb testing.TB, users int) *EngineFixture {
	fixtures.Lock()
	defer fixtures.Unlock()
	if f := fixtures.engine[users]; f != nil {
		return f
	}
	start := time.Now()
	opts, err := engineOptions()
	if err != nil {
		tb.Fatal(err)
	}
	f, err := NewEngineFixture(users, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Logf("engine fixture: %d users seeded in %v (%s)", users, time.Since(start).Round(time.Millisecond), durability())
	if fixtures.engine == nil {
		fixtures.engine = map[int]*EngineFixture{}
	}
	fixtures.engine[users] = f
	return f
}

// engineOptions opens the engine in memory (no WAL: what the in-process
// benchmarks use unless said otherwise) or, with COHORTD_BENCH_FSYNC set to
// always, interval or off, with a WAL in a temporary data directory that
// TestMain removes.
func engineOptions() (engine.Options, error) {
	mode := os.Getenv("COHORTD_BENCH_FSYNC")
	if mode == "" {
		return engine.Options{}, nil
	}
	sync, err := wal.ParseSyncMode(mode)
	if err != nil {
		return engine.Options{}, fmt.Errorf("COHORTD_BENCH_FSYNC: %w", err)
	}
	dir, err := os.MkdirTemp(os.Getenv("COHORTD_BENCH_DIR"), "cohortd-bench-")
	if err != nil {
		return engine.Options{}, err
	}
	tempDirs = append(tempDirs, dir)
	return engine.Options{Dir: dir, Sync: sync, Logger: quietLogger}, nil
}

// durability names the engine's mode for logs.
func durability() string {
	if m := os.Getenv("COHORTD_BENCH_FSYNC"); m != "" {
		return "WAL, -fsync=" + m
	}
	return "in memory, no WAL"
}

// tempDirs are the data directories to remove when the benchmarks end.
var tempDirs []string

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range tempDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

// quietLogger keeps server and engine logs out of the go-bench output.
var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

const adminToken = "bench-admin-token"

// serverFixture is the HTTP server over an engine fixture, on a loopback
// listener, with a fasthttp client for it.
type serverFixture struct {
	*EngineFixture
	srv *server.Server
	hc  *fasthttp.HostClient
}

func serverFixtureFor(tb testing.TB, users int) *serverFixture {
	ef := engineFixture(tb, users)
	fixtures.Lock()
	defer fixtures.Unlock()
	if s := fixtures.server[users]; s != nil {
		return s
	}
	s, err := startServer(ef)
	if err != nil {
		tb.Fatal(err)
	}
	if fixtures.server == nil {
		fixtures.server = map[int]*serverFixture{}
	}
	fixtures.server[users] = s
	return s
}

func startServer(ef *EngineFixture) (*serverFixture, error) {
	srv := server.New(server.Options{
		AdminToken: adminToken,
		Logger:     quietLogger,
	})
	srv.SetEngine(ef.E)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	go srv.Serve(ln) //nolint:errcheck // Serve returns nil after Shutdown; the process ends first.
	return &serverFixture{
		EngineFixture: ef,
		srv:           srv,
		hc: &fasthttp.HostClient{
			Addr:                ln.Addr().String(),
			MaxConns:            256,
			ReadBufferSize:      64 << 10,
			WriteBufferSize:     64 << 10,
			MaxResponseBodySize: 64 << 20,
		},
	}, nil
}

// post sends one request and fails unless the status is want. The caller
// owns body; the response is discarded.
func (s *serverFixture) post(path, bearer, contentType, encoding string, body []byte, want int) error {
	return s.postReply(path, bearer, contentType, encoding, body, want, nil)
}

// postReply is post that decodes the JSON reply into out when out is not
// nil.
func (s *serverFixture) postReply(path, bearer, contentType, encoding string, body []byte, want int, out any) error {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI(path)
	req.Header.SetHost("bench")
	req.Header.SetContentType(contentType)
	if encoding != "" {
		req.Header.Set(fasthttp.HeaderContentEncoding, encoding)
	}
	if bearer != "" {
		req.Header.Set(fasthttp.HeaderAuthorization, "Bearer "+bearer)
	}
	req.SetBodyRaw(body)
	if err := s.hc.Do(req, resp); err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	if resp.StatusCode() != want {
		return fmt.Errorf("POST %s: status %d, want %d: %.300s", path, resp.StatusCode(), want, resp.Body())
	}
	if out != nil {
		if err := json.Unmarshal(resp.Body(), out); err != nil {
			return fmt.Errorf("POST %s: reply: %w", path, err)
		}
	}
	return nil
}

type naiveFixture struct {
	*Naive
	heapPerUser, heapPerMember float64
}

func naiveFixtureFor(tb testing.TB, users int) *naiveFixture {
	if users > PeerMaxUsers() {
		tb.Skipf("naive peer skipped above COHORTD_BENCH_PEER_MAX_USERS=%d users", PeerMaxUsers())
	}
	fixtures.Lock()
	defer fixtures.Unlock()
	if f := fixtures.naive[users]; f != nil {
		return f
	}
	start := time.Now()
	u := universe(users)
	h0 := heapBytes()
	n := NewNaive()
	SeedNaive(n, u)
	h1 := heapBytes()
	members := 0
	for _, f := range Flavours {
		for i := range algebraCohorts {
			ids := idents(u, algebraMembers(u, f, i), nil, 0)
			members += len(ids)
			n.Apply(Partner+"/"+algebraID(f, i), Request{{IDs: ids}})
		}
	}
	f := &naiveFixture{Naive: n,
		heapPerUser:   float64(h1-h0) / float64(users),
		heapPerMember: float64(heapBytes()-h1) / float64(members)}
	tb.Logf("naive fixture: %d users seeded in %v", users, time.Since(start).Round(time.Millisecond))
	if fixtures.naive == nil {
		fixtures.naive = map[int]*naiveFixture{}
	}
	fixtures.naive[users] = f
	return f
}

// redisFixture is a seeded redis-server; one universe at a time.
type redisFixture struct {
	c                            *redis.Client
	users                        int
	bytesPerUser, bytesPerMember float64
}

func redisFixtureFor(tb testing.TB, users int) *redisFixture {
	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		tb.Skip("redis peer skipped: REDIS_ADDR is unset (start one with bench/redis.sh start)")
	}
	if users > PeerMaxUsers() {
		tb.Skipf("redis peer skipped above COHORTD_BENCH_PEER_MAX_USERS=%d users", PeerMaxUsers())
	}
	fixtures.Lock()
	defer fixtures.Unlock()
	if f := fixtures.redis; f != nil && f.users == users {
		return f
	}
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 256, ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	start := time.Now()
	u := universe(users)
	before, after, err := SeedRedis(ctx, c, u)
	if err != nil {
		tb.Fatal(err)
	}
	members, mbytes, err := SeedRedisCohorts(ctx, c, u)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Logf("redis fixture: %d users seeded in %v", users, time.Since(start).Round(time.Millisecond))
	f := &redisFixture{c: c, users: users,
		bytesPerUser:   float64(after-before) / float64(users),
		bytesPerMember: float64(mbytes) / float64(members)}
	fixtures.redis = f
	return f
}
