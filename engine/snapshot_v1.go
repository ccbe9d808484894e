package engine

import (
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"github.com/cohortd/cohortd/engine/codec"
	"github.com/cohortd/cohortd/index"
)

// Version 1 snapshots (cohortd before the memory-layer rewrite) are still read,
// so that a data dir written by an older binary starts: its snapshot loads key by
// key, its WAL tail replays, and the next snapshot is written as version 2. The
// layout is in docs/FORMATS.md ("Snapshot, version 1").
const snapVersionV1 = 1

// readSnapshotV1 reads the rest of a version 1 snapshot (after magic and
// version): fields, then a CRC-32C of every byte before it. The file is
// read into memory whole — it is read once, when a data dir is upgraded —
// and its fields decoded with codec.Decoder like any payload.
func (e *Engine) readSnapshotV1(s *snapReader) error {
	body, err := io.ReadAll(s.r)
	if err != nil {
		s.fail("read: " + err.Error())
		return s.err
	}
	d := codec.NewFileDecoder(body, s.name, s.off)
	e.mu.lsn = d.Uvarint()
	np := d.Uvarint()
	for i := uint64(0); i < np && d.Err() == nil; i++ {
		slug := d.Str()
		dg := d.Digest()
		e.mu.partners[slug] = newPartner(slug, dg, time.Time{})
	}
	nw := d.Uvarint()
	for i := uint64(0); i < nw && d.Err() == nil; i++ {
		e.readWorkspaceV1(d)
	}
	if err := d.Err(); err != nil {
		return err
	}
	tail := d.Rest()
	if len(tail) < 4 {
		d.Fail("missing checksum")
		return d.Err()
	}
	header := binary.AppendUvarint([]byte(snapMagic), snapVersionV1)
	want := codec.UpdateChecksum(codec.Checksum(header), body[:len(body)-len(tail)])
	if binary.LittleEndian.Uint32(tail) != want {
		d.Fail("checksum mismatch")
		return d.Err()
	}
	if len(tail) > 4 {
		return &codec.CorruptError{File: s.name, Offset: d.Offset() + 4, Reason: "trailing bytes after checksum"}
	}
	return nil
}

// readWorkspaceV1 reads one workspace of a version 1 snapshot: users are
// re-attached key by key.
func (e *Engine) readWorkspaceV1(d *codec.Decoder) {
	id := d.Str()
	dg := d.Digest()
	if d.Err() != nil {
		return
	}
	if !ValidWorkspaceID(id) {
		d.Fail(fmt.Sprintf("invalid workspace id %q", id))
		return
	}
	w := e.applyWorkspaceLocked(id, dg, time.Time{}, 0)
	w.lsn = d.Uvarint()
	nk := d.Uvarint()
	for i := uint64(0); i < nk && d.Err() == nil; i++ {
		p, kid := d.Str(), d.Str()
		kd := d.Digest()
		created := time.Unix(d.Varint(), 0).UTC()
		lastUsed := d.Varint()
		revoked := d.Uvarint() == 1
		w.applyImportKey(p, kid, kd, created, revoked, lastUsed)
	}
	w.readUsage(d)
	next := d.Uvarint()
	if next > uint64(index.NoUser) {
		d.Fail("user count too large")
		return
	}
	// Size the identity table once for every user instead of growing it
	// through a dozen rehashes (most users hold one key). Every user takes
	// at least two bytes of the file, so a corrupt count cannot reserve
	// more than the rest of the file could describe.
	w.users.Close()
	w.users = index.NewUsers(index.Options{Capacity: int(min(next, uint64(d.Len()/2))), DenseBudget: w.e.dense})
	for id := uint64(0); id < next && d.Err() == nil; id++ {
		nkeys := d.Uvarint()
		deleted := d.Uvarint() == 1
		uid := w.users.Create()
		if uint64(uid) != id {
			d.Fail(fmt.Sprintf("user id %d restored as %d", id, uid))
			return
		}
		for k := uint64(0); k < nkeys && d.Err() == nil; k++ {
			kind := d.U8()
			key := d.Blob()
			if d.Err() != nil {
				return
			}
			if err := w.users.Attach(uid, index.Kind(kind), key); err != nil {
				d.Fail(fmt.Sprintf("user %d: %v", id, err))
				return
			}
		}
		if deleted {
			w.users.Delete(uid)
		}
	}
	w.users.Publish()
	nc := d.Uvarint()
	for i := uint64(0); i < nc && d.Err() == nil; i++ {
		p, cid, name := d.Str(), d.Str(), d.Str()
		created := time.Unix(0, d.Varint()).UTC()
		updated := time.Unix(0, d.Varint()).UTC()
		bm := d.Bitmap()
		if d.Err() != nil {
			return
		}
		c := w.applyCohortUpsert(p, cid, name, created, updated)
		c.members.Reset(bm)
	}
	w.readSessions(d)
}
