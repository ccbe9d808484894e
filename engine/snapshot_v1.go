package engine

import (
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"github.com/cohortd/cohortd/index"
)

// Version 1 snapshots (cohortd before the memory-layer rewrite) are still read,
// so that a data dir written by an older binary starts: its snapshot loads key by
// key, its WAL tail replays, and the next snapshot is written as version 2. The
// layout is in docs/FORMATS.md ("Snapshot, version 1").
const snapVersionV1 = 1

// readSnapshotV1 reads the rest of a version 1 snapshot (after magic and
// version): fields through one running CRC-32C checked at the end.
func (e *Engine) readSnapshotV1(s *snapReader) error {
	e.mu.lsn = s.uvarint()
	np := s.uvarint()
	for i := uint64(0); i < np && s.err == nil; i++ {
		slug := s.str()
		d := s.digest()
		e.mu.partners[slug] = newPartner(slug, d, time.Time{})
	}
	nw := s.uvarint()
	for i := uint64(0); i < nw && s.err == nil; i++ {
		e.readWorkspaceV1(s)
	}
	if s.err != nil {
		return s.err
	}
	want := s.crc.Sum32()
	var tail [4]byte
	if _, err := io.ReadFull(s.r, tail[:]); err != nil {
		s.fail("missing checksum")
		return s.err
	}
	if binary.LittleEndian.Uint32(tail[:]) != want {
		s.fail("checksum mismatch")
		return s.err
	}
	if _, err := s.r.ReadByte(); err != io.EOF {
		s.off += 4
		s.fail("trailing bytes after checksum")
		return s.err
	}
	return nil
}

// readWorkspaceV1 reads one workspace of a version 1 snapshot: users are
// re-attached key by key.
func (e *Engine) readWorkspaceV1(s *snapReader) {
	id := s.str()
	d := s.digest()
	if s.err != nil {
		return
	}
	if !ValidWorkspaceID(id) {
		s.fail(fmt.Sprintf("invalid workspace id %q", id))
		return
	}
	w := e.applyWorkspaceLocked(id, d, time.Time{}, 0)
	w.lsn = s.uvarint()
	nk := s.uvarint()
	for i := uint64(0); i < nk && s.err == nil; i++ {
		p, kid := s.str(), s.str()
		kd := s.digest()
		created := time.Unix(s.varint(), 0).UTC()
		lastUsed := s.varint()
		revoked := s.uvarint() == 1
		w.applyImportKey(p, kid, kd, created, revoked, lastUsed)
	}
	np := s.uvarint()
	for i := uint64(0); i < np && s.err == nil; i++ {
		p := s.str()
		nd := s.uvarint()
		for j := uint64(0); j < nd && s.err == nil; j++ {
			day := int32(s.varint())
			w.addUsage(p, day, s.uvarint())
		}
	}
	next := s.uvarint()
	if next > uint64(index.NoUser) {
		s.fail("user count too large")
		return
	}
	// Size the identity table once for every user instead of growing it
	// through a dozen rehashes (most users hold one key). Every user takes
	// at least two bytes of the file, so a corrupt count cannot reserve
	// more than the file could describe.
	w.users.Close()
	w.users = index.NewUsers(index.Options{Capacity: int(min(next, uint64(s.size/2)))})
	for id := uint64(0); id < next && s.err == nil; id++ {
		nkeys := s.uvarint()
		deleted := s.uvarint() == 1
		uid := w.users.Create()
		if uint64(uid) != id {
			s.fail(fmt.Sprintf("user id %d restored as %d", id, uid))
			return
		}
		for k := uint64(0); k < nkeys && s.err == nil; k++ {
			kind, err := s.ReadByte()
			if err != nil {
				s.fail("truncated user key")
				return
			}
			key := s.bytes()
			if s.err != nil {
				return
			}
			if err := w.users.Attach(uid, index.Kind(kind), key); err != nil {
				s.fail(fmt.Sprintf("user %d: %v", id, err))
				return
			}
		}
		if deleted {
			w.users.Delete(uid)
		}
	}
	w.users.Publish()
	nc := s.uvarint()
	for i := uint64(0); i < nc && s.err == nil; i++ {
		p, cid, name := s.str(), s.str(), s.str()
		created := time.Unix(0, s.varint()).UTC()
		updated := time.Unix(0, s.varint()).UTC()
		bm := s.bitmap()
		if s.err != nil {
			return
		}
		c := w.applyCohortUpsert(p, cid, name, created, updated)
		c.members.Reset(bm)
	}
	w.readSessions(s)
}
