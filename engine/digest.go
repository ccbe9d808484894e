package engine

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/index"
)

// Digest returns a SHA-256 over the whole state, in hex, and the
// positions it covers (docs/API.md §7 GET /v1/admin/digest): partners
// (slug, key digest, creation, generation), the admin idempotency replies,
// and per workspace its key digest, import keys, usage, every user id with
// its flags and identifiers, every cohort's metadata, members and sync
// history, open and committed webhook sessions and idempotency replies.
// Only what every node of a group computes alike is in it: not the last
// use of keys, counters, the identity tables' layout or their hash seeds.
// Two nodes at the same positions have the same digest; so do a node
// restored from a snapshot and one that applied the whole log.
//
// In log mode the apply loop is held while the digest is computed, so it
// sees the state at exactly the positions returned; on a single node each
// workspace is read under its writer lock.
func (e *Engine) Digest() (string, []PartitionStatus) { return e.digestTo(nil) }

// digestTo is Digest, writing every field to tr as text when it is set
// (tests compare two nodes field by field).
func (e *Engine) digestTo(tr io.Writer) (string, []PartitionStatus) {
	var positions []PartitionStatus
	if r := e.repl; r != nil {
		r.applyMu.Lock()
		defer r.applyMu.Unlock()
		positions = r.positions()
	}
	d := digester{h: sha256.New(), tr: tr}
	e.mu.RLock()
	parts := make([]*partner, 0, len(e.mu.partners))
	for _, p := range e.mu.partners {
		parts = append(parts, p)
	}
	adminIdem := e.idem.capture()
	e.mu.RUnlock()
	sort.Slice(parts, func(i, j int) bool { return parts[i].slug < parts[j].slug })
	d.str("partners")
	d.u64(uint64(len(parts)))
	for _, p := range parts {
		d.str(p.slug)
		d.bytes(p.digest.Load()[:])
		d.time(p.createdAt)
		d.u64(p.gen)
	}
	d.idem(adminIdem)
	wss := e.Workspaces()
	d.str("workspaces")
	d.u64(uint64(len(wss)))
	for _, w := range wss {
		w.digest(&d)
	}
	return hex.EncodeToString(d.h.Sum(nil)), positions
}

// digester feeds length-prefixed fields to a hash.
type digester struct {
	h   hash.Hash
	tr  io.Writer // tests: every field as text
	buf [binary.MaxVarintLen64]byte
	ids []uint32
}

func (d *digester) u64(v uint64) {
	d.h.Write(binary.AppendUvarint(d.buf[:0], v))
	if d.tr != nil {
		fmt.Fprintln(d.tr, v)
	}
}

func (d *digester) i64(v int64) {
	d.h.Write(binary.AppendVarint(d.buf[:0], v))
	if d.tr != nil {
		fmt.Fprintln(d.tr, v)
	}
}

func (d *digester) bytes(b []byte) {
	d.u64(uint64(len(b)))
	d.h.Write(b)
	if d.tr != nil {
		fmt.Fprintf(d.tr, "%q\n", b)
	}
}

func (d *digester) str(s string) {
	d.u64(uint64(len(s)))
	d.h.Write([]byte(s))
	if d.tr != nil {
		fmt.Fprintf(d.tr, "%q\n", s)
	}
}

func (d *digester) time(t time.Time) {
	d.i64(t.Unix())
	d.u64(uint64(t.Nanosecond()))
}

// bitmap hashes a set's values, not its serialization (which depends on
// how the containers were built).
func (d *digester) bitmap(bm *roaring.Bitmap) {
	d.u64(bm.GetCardinality())
	if cap(d.ids) == 0 {
		d.ids = make([]uint32, 4096)
	}
	it := bm.ManyIterator()
	out := make([]byte, 0, 4*len(d.ids))
	for {
		n := it.NextMany(d.ids)
		if n == 0 {
			return
		}
		out = out[:0]
		for _, v := range d.ids[:n] {
			out = binary.LittleEndian.AppendUint32(out, v)
		}
		d.h.Write(out)
		if d.tr != nil {
			fmt.Fprintln(d.tr, d.ids[:n])
		}
	}
}

func (d *digester) idem(entries idemCapture) {
	d.str("idempotency")
	d.u64(uint64(len(entries)))
	for _, en := range entries {
		d.str(en.key)
		d.bytes(en.r.Sum[:])
		d.u64(uint64(en.r.Status))
		d.str(en.r.ContentType)
		d.bytes(en.r.Body)
		d.time(en.r.At)
	}
}

// digest feeds one workspace, read under its locks.
func (w *Workspace) digest(d *digester) {
	w.usersMu.Lock()
	defer w.usersMu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	d.str(w.id)
	d.time(w.createdAt)
	d.bytes(w.keyDigest[:])
	d.u64(w.gen)

	w.keys.RLock()
	keys := slices.Collect(maps.Values(w.keys.byID))
	w.keys.RUnlock()
	sort.Slice(keys, func(i, j int) bool { return keys[i].partner+"/"+keys[i].id < keys[j].partner+"/"+keys[j].id })
	d.u64(uint64(len(keys)))
	for _, k := range keys {
		d.str(k.partner)
		d.str(k.id)
		d.bytes(k.digest[:])
		d.time(k.createdAt)
		d.u64(uint64(boolByte(k.revoked.Load())))
		d.u64(k.partnerGen)
	}

	w.usage.Lock()
	partners := slices.Sorted(maps.Keys(w.usage.m))
	d.u64(uint64(len(partners)))
	for _, p := range partners {
		days := w.usage.m[p]
		d.str(p)
		ds := slices.Sorted(maps.Keys(days))
		d.u64(uint64(len(ds)))
		for _, day := range ds {
			d.i64(int64(day))
			d.u64(days[day])
		}
	}
	w.usage.Unlock()

	u := w.users
	next := u.NextID()
	d.str("users")
	d.u64(uint64(next))
	d.u64(uint64(u.Len()))
	var ident []byte
	for id := index.UserID(0); id < next; id++ {
		if u.Deleted(id) {
			d.u64(0)
			continue
		}
		ident = ident[:0]
		u.Identifiers(id, func(kind index.Kind, key []byte) {
			ident = append(ident, uint8(kind))
			ident = binary.AppendUvarint(ident, uint64(len(key)))
			ident = append(ident, key...)
		})
		d.u64(1 + uint64(boolByte(u.Anonymous(id))))
		d.bytes(ident)
	}

	cohorts := w.Cohorts()
	d.str("cohorts")
	d.u64(uint64(len(cohorts)))
	for _, c := range cohorts {
		m := c.meta.Load()
		d.str(c.partner)
		d.str(c.id)
		d.str(m.name)
		d.time(m.createdAt)
		d.time(m.updatedAt)
		d.bitmap(c.Members())
		syncs := c.Syncs(MaxSyncs)
		d.u64(uint64(len(syncs)))
		for _, s := range syncs {
			d.time(s.StartedAt)
			d.time(s.EndedAt)
			for _, v := range [...]uint64{uint64(s.Source), s.Requests, s.Matched, s.Added, s.Removed, s.Unknown, s.DeviceIdentified, s.DroppedBeforeFloor, s.SizeAfter} {
				d.u64(v)
			}
		}
	}

	sessions := w.captureSessionsLocked()
	d.str("sessions")
	d.u64(w.sessions.nextSeq)
	d.u64(uint64(len(sessions)))
	for _, s := range sessions {
		d.str(s.key.partner)
		d.str(s.key.cohort)
		d.str(s.key.id)
		d.u64(uint64(s.total))
		d.u64(s.seq)
		d.i64(s.lastPage)
		d.bitmap(s.pages)
		d.bitmap(s.members)
		acc := w.sessions.m[s.key].sync
		d.i64(acc.first)
		d.u64(acc.requests)
		d.u64(acc.matched)
		d.u64(acc.unknown)
	}
	done := w.captureDoneLocked()
	d.u64(uint64(len(done)))
	for _, dc := range done {
		d.str(dc.key.partner)
		d.str(dc.key.cohort)
		d.str(dc.key.id)
		d.i64(dc.at)
	}
	d.idem(w.idem.capture())
}
