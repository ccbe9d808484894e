package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/cohortd/cohortd/loadgen"
)

// The Redis peer stores the workload as a Redis user would:
//
//   - a user is a hash user:<n> with the fields external_id, device_id and
//     alias (email:<label>) it has;
//   - a cohort is a set c:<partner>/<cohort_id> of identifiers as sent
//     (external id, alias label or device id), so membership needs no lookup;
//   - imports are pipelined SADD/SREM, up to 1,000 members a command;
//   - contains is SISMEMBER (one clause) or the clauses' SISMEMBERs in one
//     pipeline, SMISMEMBER for batches;
//   - counts are SINTERCARD, SINTERSTORE + SDIFFSTORE, SUNIONSTORE.
//
// It does not apply the matching rules: unknown identifiers are stored
// like any other.

// RedisCohortKey is the key of a cohort's set.
func RedisCohortKey(cohort string) string { return "c:" + Partner + "/" + cohort }

// SeedRedis empties the database and creates the universe's users in two
// passes, pipelined 1,000 commands at a time. It returns used_memory (bytes)
// before and after.
func SeedRedis(ctx context.Context, c *redis.Client, u loadgen.Universe) (before, after int64, err error) {
	if err := c.FlushAll(ctx).Err(); err != nil {
		return 0, 0, fmt.Errorf("flushall: %w", err)
	}
	if before, err = RedisUsedMemory(ctx, c); err != nil {
		return 0, 0, err
	}
	const batch = 1000
	for pass := 0; pass < 2; pass++ {
		for start := 1; start <= u.Users; start += batch {
			p := c.Pipeline()
			for n := start; n < start+batch && n <= u.Users; n++ {
				key := "user:" + strconv.Itoa(n)
				switch k := u.Kind(n); {
				case pass == 1 && k == loadgen.KindIdentifiedLater:
					p.HSet(ctx, key, "external_id", loadgen.ExternalID(n))
				case pass == 1:
				case k == loadgen.KindExternal:
					p.HSet(ctx, key, "external_id", loadgen.ExternalID(n))
				case k == loadgen.KindAlias:
					p.HSet(ctx, key, "alias", AliasName+":"+loadgen.AliasLabel(n))
				default:
					p.HSet(ctx, key, "device_id", u.DeviceID(n))
				}
			}
			if p.Len() > 0 {
				if _, err := p.Exec(ctx); err != nil {
					return 0, 0, fmt.Errorf("seed users %d…: %w", start, err)
				}
			}
		}
	}
	after, err = RedisUsedMemory(ctx, c)
	return before, after, err
}

// SeedRedisCohorts creates the algebra cohorts of both flavours and returns
// their total members and the used_memory they added.
func SeedRedisCohorts(ctx context.Context, c *redis.Client, u loadgen.Universe) (members int, bytes int64, err error) {
	before, err := RedisUsedMemory(ctx, c)
	if err != nil {
		return 0, 0, err
	}
	for _, f := range Flavours {
		for i := range algebraCohorts {
			ids := idents(u, algebraMembers(u, f, i), nil, 0)
			members += len(ids)
			if err := RedisApply(ctx, c, algebraID(f, i), Request{{IDs: ids}}, ""); err != nil {
				return 0, 0, err
			}
		}
	}
	after, err := RedisUsedMemory(ctx, c)
	return members, after - before, err
}

// RedisApply sends a request as one pipeline: SADD for adds, SREM for
// removes, up to 1,000 members a command. With upsertName set it first
// writes the cohort's metadata, as the partner /cohorts call does.
func RedisApply(ctx context.Context, c *redis.Client, cohort string, r Request, upsertName string) error {
	key := RedisCohortKey(cohort)
	p := c.Pipeline()
	if upsertName != "" {
		p.HSet(ctx, "cm:"+Partner+"/"+cohort, "name", upsertName)
	}
	args := make([]any, 0, 1000)
	for _, ch := range r {
		for start := 0; start < len(ch.IDs); start += 1000 {
			args = args[:0]
			for _, id := range ch.IDs[start:min(start+1000, len(ch.IDs))] {
				args = append(args, redisMember(id))
			}
			if ch.Remove {
				p.SRem(ctx, key, args...)
			} else {
				p.SAdd(ctx, key, args...)
			}
		}
	}
	_, err := p.Exec(ctx)
	return err
}

// redisMember is the set member naming an identifier; aliases carry their
// name so that they never collide with other identifiers.
func redisMember(id Ident) string {
	if id.Kind == loadgen.KindAlias {
		return AliasName + ":" + id.Value
	}
	return id.Value
}

// RedisClauses returns the cohort keys of a contains query and whether each
// is negated; queries are "A", "A and B" or "A and B and not C".
func RedisClauses(f loadgen.Flavour, clauses int) (keys []string, neg []bool) {
	for i := 0; i < clauses; i++ {
		keys = append(keys, RedisCohortKey(algebraID(f, i)))
		neg = append(neg, i == 2)
	}
	return keys, neg
}

// RedisContains answers one user: one SISMEMBER for one clause, else the
// clauses' SISMEMBERs in one pipeline (one round trip).
func RedisContains(ctx context.Context, c *redis.Client, keys []string, neg []bool, member string) (bool, error) {
	if len(keys) == 1 {
		return c.SIsMember(ctx, keys[0], member).Result()
	}
	p := c.Pipeline()
	cmds := make([]*redis.BoolCmd, len(keys))
	for i, k := range keys {
		cmds[i] = p.SIsMember(ctx, k, member)
	}
	if _, err := p.Exec(ctx); err != nil {
		return false, err
	}
	for i, cmd := range cmds {
		if cmd.Val() == neg[i] {
			return false, nil
		}
	}
	return true, nil
}

// RedisContainsBatch answers many users with one SMISMEMBER per clause, in
// one pipeline.
func RedisContainsBatch(ctx context.Context, c *redis.Client, keys []string, neg []bool, members []any, dst []bool) ([]bool, error) {
	p := c.Pipeline()
	cmds := make([]*redis.BoolSliceCmd, len(keys))
	for i, k := range keys {
		cmds[i] = p.SMIsMember(ctx, k, members...)
	}
	if _, err := p.Exec(ctx); err != nil {
		return dst, err
	}
	for j := range members {
		ok := true
		for i, cmd := range cmds {
			if cmd.Val()[j] == neg[i] {
				ok = false
				break
			}
		}
		dst = append(dst, ok)
	}
	return dst, nil
}

// RedisCount evaluates a count query by name (and2, and_and_not, or_or);
// tmp is a scratch key owned by the caller.
func RedisCount(ctx context.Context, c *redis.Client, f loadgen.Flavour, query, tmp string) (int64, error) {
	a, b, cc := RedisCohortKey(algebraID(f, 0)), RedisCohortKey(algebraID(f, 1)), RedisCohortKey(algebraID(f, 2))
	switch query {
	case "and2":
		return c.SInterCard(ctx, 0, a, b).Result()
	case "and_and_not":
		p := c.Pipeline()
		p.SInterStore(ctx, tmp, a, b)
		n := p.SDiffStore(ctx, tmp, tmp, cc)
		p.Del(ctx, tmp)
		_, err := p.Exec(ctx)
		return n.Val(), err
	case "or_or":
		p := c.Pipeline()
		n := p.SUnionStore(ctx, tmp, a, b, cc)
		p.Del(ctx, tmp)
		_, err := p.Exec(ctx)
		return n.Val(), err
	}
	return 0, fmt.Errorf("redis count: unknown query %q", query)
}

// RedisUsedMemory returns INFO memory's used_memory.
func RedisUsedMemory(ctx context.Context, c *redis.Client) (int64, error) {
	s, err := c.Info(ctx, "memory").Result()
	if err != nil {
		return 0, fmt.Errorf("info memory: %w", err)
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("info memory: no used_memory")
}
