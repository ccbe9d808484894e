package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sort"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/cohortd/cohortd/engine/codec"
	"github.com/cohortd/cohortd/index"
)

// Snapshot version 2 is a file header (magic, uvarint version 2) followed by
// sections, each a fixed header and a payload:
//
//	kind   uint32  what the payload holds (sec* below)
//	pad    uint32  zero bytes between this header and the payload
//	length uint64  payload bytes
//	crc    uint32  CRC-32C of the payload
//	hcrc   uint32  CRC-32C of the 20 bytes above, so a damaged length is caught
//	               before it is used
//
// Field sections (engine, workspace, users header, cohort) hold uvarint/varint
// fields as in WAL payloads. Array sections hold one of a Users' raw arrays
// (index.Image) as they are in memory, their payload aligned to 4 KiB in the
// file, so that recovery reads them straight into new regions at disk speed
// instead of inserting keys one by one. The last section (secEnd) counts the
// sections before it, so a file cut at a section boundary is refused. A new kind
// of state is a new section kind (or, for workspace state, fields appended to
// the workspace section); an unknown kind is refused. docs/FORMATS.md draws it.
const (
	secEngine    uint32 = 1      // engine lsn │ partners (with key digest and created_at) │ workspace count
	secWorkspace uint32 = 2      // one workspace: id, keys, usage, webhook sessions
	secUsers     uint32 = 3      // the workspace's index.ImageHeader; its arrays follow
	secCohort    uint32 = 4      // one cohort of the workspace: metadata and members
	secIdem      uint32 = 5      // the idempotency replies of the engine (after secEngine) or of the workspace before it
	secSyncs     uint32 = 6      // the sync histories of the workspace's cohorts (after them) and of its open webhook sessions
	secArray     uint32 = 16     // + index.Array: a raw array of the users image
	secEnd       uint32 = 0xffff // number of sections before it

	secHeaderSize = 24
	rawAlign      = 4096
)

var zeroPad [rawAlign]byte

// begin opens a field section of the given kind.
func (s *snapWriter) begin(kind uint32) {
	if s.kind != 0 {
		panic("BUG: engine: snapshot section opened inside another")
	}
	if s.Len() != 0 {
		panic("BUG: engine: snapshot field written outside a section")
	}
	s.kind = kind
}

// end writes the open section.
func (s *snapWriter) end() {
	s.emit(s.kind, s.Bytes(), 0)
	s.kind = 0
	s.Reset()
	if s.Cap() > 64<<20 {
		s.Encoder = codec.Encoder{} // don't keep a big cohort's buffer for the rest of the run
	}
}

// raw writes data as a section whose payload starts at a multiple of rawAlign.
func (s *snapWriter) raw(kind uint32, data []byte) { s.emit(kind, data, rawAlign) }

func (s *snapWriter) emit(kind uint32, payload []byte, align int64) {
	var h [secHeaderSize]byte
	pad := int64(0)
	if align > 0 {
		pad = (align - (s.n+secHeaderSize)%align) % align
	}
	binary.LittleEndian.PutUint32(h[0:], kind)
	binary.LittleEndian.PutUint32(h[4:], uint32(pad))
	binary.LittleEndian.PutUint64(h[8:], uint64(len(payload)))
	binary.LittleEndian.PutUint32(h[16:], codec.Checksum(payload))
	binary.LittleEndian.PutUint32(h[20:], codec.Checksum(h[:20]))
	s.fileWrite(h[:])
	s.fileWrite(zeroPad[:pad])
	s.fileWrite(payload)
	s.nsec++
}

// finish writes the end section and flushes.
func (s *snapWriter) finish() error {
	n := s.nsec
	s.begin(secEnd)
	s.Uvarint(n)
	s.end()
	if s.err != nil {
		return s.err
	}
	return s.w.Flush()
}

// writeSnapshot captures each scope under its lock and returns the lowest
// WAL position any scope covers: every record at or below it is inside.
func (e *Engine) writeSnapshot(sw *snapWriter) (uint64, error) {
	// Log mode: every record below these offsets is applied; the scopes
	// captured below cover them and maybe more (their lsn says how much).
	var offsets []int64
	if e.repl != nil {
		offsets = e.repl.resumeOffsets()
	}
	e.mu.Lock()
	engineLSN := e.mu.lsn
	if e.wal != nil {
		engineLSN = e.wal.LastLSN()
	}
	parts := make([]*partner, 0, len(e.mu.partners))
	for _, p := range e.mu.partners {
		parts = append(parts, p)
	}
	wss := make([]*Workspace, 0, len(e.mu.workspaces))
	for _, w := range e.mu.workspaces {
		wss = append(wss, w)
	}
	adminIdem := e.idem.capture()
	e.mu.Unlock()
	sort.Slice(parts, func(i, j int) bool { return parts[i].slug < parts[j].slug })
	sort.Slice(wss, func(i, j int) bool { return wss[i].id < wss[j].id })
	sw.begin(secEngine)
	sw.Uvarint(engineLSN)
	sw.Uvarint(uint64(len(parts)))
	for _, p := range parts {
		sw.Str(p.slug)
		sw.Digest(*p.digest.Load())
		sw.Time(p.createdAt)
	}
	sw.Uvarint(uint64(len(wss)))
	sw.end()
	writeIdempotency(sw, "", adminIdem)
	minLSN := engineLSN
	for _, w := range wss {
		lsn := w.writeSnapshot(sw)
		minLSN = min(minLSN, lsn)
	}
	if e.repl != nil {
		writeRepl(sw, offsets, parts)
		minLSN = logSnapshotName(offsets)
	}
	return minLSN, sw.err
}

// writeSnapshot writes one workspace. Its state is captured at one WAL
// position: under the writer lock only the cheap parts are copied (the LSN,
// keys, usage, cohort metadata and the immutable published bitmaps, open
// webhook sessions); the user table's arrays are then written as they are
// under usersMu alone, which holds user upserts and deletes — the only changes
// to the table — at that position while imports carry on (they change cohorts,
// whose state was already captured).
func (w *Workspace) writeSnapshot(sw *snapWriter) uint64 {
	w.usersMu.Lock()
	w.mu.Lock()
	lsn := w.lsn
	if w.e.wal != nil {
		lsn = w.e.wal.LastLSN()
	}
	keyDigest := w.keyDigest // a rotation changes it under mu
	type cohortCap struct {
		c  *Cohort
		m  *cohortMeta
		bm *roaring.Bitmap
	}
	cohorts := w.Cohorts()
	caps := make([]cohortCap, len(cohorts))
	for i, c := range cohorts {
		caps[i] = cohortCap{c, c.meta.Load(), c.Members()}
	}
	sessions := w.captureSessionsLocked()
	nextSeq := w.sessions.nextSeq
	done := w.captureDoneLocked()
	syncs, sessionSyncs := w.captureSyncsLocked(cohorts)
	w.keys.RLock()
	keys := make([]*importKey, 0, len(w.keys.byID))
	for _, k := range w.keys.byID {
		keys = append(keys, k)
	}
	w.keys.RUnlock()
	type usageCap struct {
		partner string
		days    map[int32]uint64
	}
	w.usage.Lock()
	usage := make([]usageCap, 0, len(w.usage.m))
	for p, days := range w.usage.m {
		usage = append(usage, usageCap{p, maps.Clone(days)})
	}
	w.usage.Unlock()
	idem := w.idem.capture()
	w.mu.Unlock()

	sw.begin(secWorkspace)
	sw.Str(w.id)
	sw.Digest(keyDigest)
	sw.Time(w.createdAt)
	sw.Uvarint(lsn)
	sort.Slice(keys, func(i, j int) bool { return keys[i].partner+"/"+keys[i].id < keys[j].partner+"/"+keys[j].id })
	sw.Uvarint(uint64(len(keys)))
	for _, k := range keys {
		sw.Str(k.partner)
		sw.Str(k.id)
		sw.Digest(k.digest)
		sw.Time(k.createdAt)
		lu := k.lastUsed.Load()
		sw.Varint(lu / 1e9) // unix nanoseconds in memory: split without a time.Time
		sw.Uvarint(uint64(lu % 1e9))
		if k.revoked.Load() {
			sw.Uvarint(1)
		} else {
			sw.Uvarint(0)
		}
	}
	sort.Slice(usage, func(i, j int) bool { return usage[i].partner < usage[j].partner })
	sw.Uvarint(uint64(len(usage)))
	for _, u := range usage {
		sw.Str(u.partner)
		days := make([]int32, 0, len(u.days))
		for d := range u.days {
			days = append(days, d)
		}
		sort.Slice(days, func(i, j int) bool { return days[i] < days[j] })
		sw.Uvarint(uint64(len(days)))
		for _, d := range days {
			sw.Varint(int64(d))
			sw.Uvarint(u.days[d])
		}
	}
	writeSessions(sw, sessions, done)
	if w.e.repl != nil {
		writeWorkspaceRepl(sw, w.gen, nextSeq, keys)
	}
	sw.end()
	writeIdempotency(sw, w.id, idem)

	h, arrays := w.users.Image()
	sw.begin(secUsers)
	for _, v := range imageFields(&h) {
		sw.Uvarint(*v)
	}
	sw.end()
	for i, a := range arrays {
		sw.raw(secArray+uint32(i+1), a)
	}
	w.usersMu.Unlock()

	for _, c := range caps {
		sw.begin(secCohort)
		sw.Str(c.c.partner)
		sw.Str(c.c.id)
		sw.Str(c.m.name)
		sw.Time(c.m.createdAt)
		sw.Time(c.m.updatedAt)
		sw.Bitmap(c.bm)
		sw.end()
	}
	if len(syncs) > 0 || len(sessionSyncs) > 0 {
		sw.begin(secSyncs)
		writeSyncHistory(sw, syncs, sessionSyncs)
		sw.end()
	}
	return lsn
}

// imageFields lists the header's fields in the order the users section holds them.
func imageFields(h *index.ImageHeader) []*uint64 {
	return []*uint64{&h.Seed, &h.Next, &h.Users, &h.Buckets, &h.Live, &h.Tombs, &h.ArenaUsed, &h.FreeBytes, &h.PoolLen, &h.FreeNode}
}

// secHeader is a section's header as read, with where its payload starts.
type secHeader struct {
	kind   uint32
	length uint64
	crc    uint32
	at     int64 // file offset of the payload
}

// section reads the next section header and its padding.
func (s *snapReader) section() secHeader {
	if s.err != nil {
		return secHeader{}
	}
	at := s.off
	var h [secHeaderSize]byte
	if _, err := io.ReadFull(s.r, h[:]); err != nil {
		s.fail("truncated section header")
		return secHeader{}
	}
	s.off += secHeaderSize
	if codec.Checksum(h[:20]) != binary.LittleEndian.Uint32(h[20:]) {
		s.off = at
		s.fail("section header checksum mismatch")
		return secHeader{}
	}
	sh := secHeader{
		kind:   binary.LittleEndian.Uint32(h[0:]),
		length: binary.LittleEndian.Uint64(h[8:]),
		crc:    binary.LittleEndian.Uint32(h[16:]),
	}
	pad := binary.LittleEndian.Uint32(h[4:])
	if pad >= rawAlign || sh.length > uint64(max(s.size-s.off-int64(pad), 0)) {
		s.off = at
		s.fail(fmt.Sprintf("section of kind %d: padding %d and length %d past the end of the file", sh.kind, pad, sh.length))
		return secHeader{}
	}
	var zeros [rawAlign]byte
	if _, err := io.ReadFull(s.r, zeros[:pad]); err != nil || !bytes.Equal(zeros[:pad], zeroPad[:pad]) {
		s.fail("bad section padding")
		return secHeader{}
	}
	s.off += int64(pad)
	sh.at = s.off
	return sh
}

// fields reads a field section's payload, checks its CRC, and returns a
// decoder over it whose offsets are the file's. done must be called after
// parsing.
func (s *snapReader) fields(h secHeader) *codec.Decoder {
	p := s.full(h.length)
	if s.err == nil && codec.Checksum(p) != h.crc {
		s.off = h.at
		s.fail(fmt.Sprintf("section of kind %d: checksum mismatch", h.kind))
	}
	if s.err != nil {
		d := codec.NewFileDecoder(nil, s.name, h.at)
		d.Fail("section unread")
		return d
	}
	// p is s's buffer, which the next read of s reuses: the section is
	// parsed first, and what is kept of it is copied.
	return codec.NewFileDecoder(p, s.name, h.at)
}

// done ends a field section: its error, or trailing bytes, become the file's.
func (s *snapReader) done(f *codec.Decoder) {
	if err := f.Done(); err != nil && s.err == nil {
		s.err = err
	}
}

// readSnapshotV2 reads the sections of a version 2 snapshot (after magic and
// version) into the engine, or with check set only verifies them: every
// checksum and bound, the users' arrays streamed through index.ArrayCheck
// rather than loaded, cohorts validated and dropped.
func (e *Engine) readSnapshotV2(s *snapReader, check bool) error {
	var (
		w       *Workspace
		hasUser bool
		nw, nws uint64
		nsec    uint64
	)
	endWorkspace := func() {
		if w != nil && !hasUser {
			s.fail(fmt.Sprintf("workspace %s has no users section", w.id))
		}
	}
	for s.err == nil {
		h := s.section()
		if s.err != nil {
			break
		}
		if nsec == 0 && h.kind != secEngine {
			s.off = h.at
			s.fail("first section is not the engine's")
			break
		}
		nsec++
		switch h.kind {
		case secEngine:
			if nsec != 1 {
				s.fail("second engine section")
				break
			}
			f := s.fields(h)
			e.mu.lsn = f.Uvarint()
			np := f.Uvarint()
			for i := uint64(0); i < np && f.Err() == nil; i++ {
				slug := f.Str()
				d := f.Digest()
				created := f.Time()
				e.mu.partners[slug] = newPartner(slug, d, created)
			}
			nw = f.Uvarint()
			s.done(f)
		case secWorkspace:
			endWorkspace()
			f := s.fields(h)
			w, hasUser = e.readWorkspaceV2(f), false
			nws++
			s.done(f)
		case secUsers:
			if w == nil || hasUser {
				s.fail("users section out of place")
				break
			}
			hasUser = true
			f := s.fields(h)
			var ih index.ImageHeader
			for _, v := range imageFields(&ih) {
				*v = f.Uvarint()
			}
			s.done(f)
			if s.err == nil {
				if err := ih.Validate(); err != nil {
					s.off = h.at
					s.fail(err.Error())
					break
				}
				// The arrays must fit in what is left of the file before
				// anything is allocated for them.
				total := uint64(0)
				for a := index.ArrayTable; a <= index.ArrayPool; a++ {
					total += ih.Size(a) + secHeaderSize
				}
				if total > uint64(s.size-s.off) {
					s.off = h.at
					s.fail(fmt.Sprintf("users arrays of %d bytes past the end of the file", total))
					break
				}
				s.readUsers(w, ih, check)
				nsec += index.NumArrays
			}
		case secIdem:
			f := s.fields(h)
			scope := f.Str()
			var st *idemStore
			switch {
			case scope == "" && nsec == 2:
				st = &e.idem.s
			case w != nil && scope == w.id && !hasUser:
				st = &w.idem.s
			default:
				f.Fail(fmt.Sprintf("idempotency section of scope %q out of place", scope))
			}
			readIdempotency(f, st, e.idemTTL(), check)
			s.done(f)
		case secRepl:
			f := s.fields(h)
			e.readRepl(f, check)
			s.done(f)
		case secSyncs:
			if w == nil || !hasUser {
				s.fail("sync history section out of place")
				break
			}
			f := s.fields(h)
			w.readSyncHistory(f, check)
			s.done(f)
		case secCohort:
			if w == nil || !hasUser {
				s.fail("cohort section out of place")
				break
			}
			f := s.fields(h)
			p, cid, name := f.Str(), f.Str(), f.Str()
			created, updated := f.Time(), f.Time()
			bm := f.Bitmap()
			s.done(f)
			if s.err == nil && !check {
				c := w.applyCohortUpsert(p, cid, name, created, updated)
				c.members.Reset(bm)
			}
		case secEnd:
			endWorkspace()
			f := s.fields(h)
			if n := f.Uvarint(); f.Err() == nil && n != nsec-1 {
				f.Fail(fmt.Sprintf("end section counts %d sections, file has %d", n, nsec-1))
			}
			s.done(f)
			if s.err == nil && nws != nw {
				s.fail(fmt.Sprintf("engine section announces %d workspaces, file has %d", nw, nws))
			}
			if s.err == nil {
				if _, err := s.r.ReadByte(); err != io.EOF {
					s.fail("trailing bytes after the end section")
				}
			}
			return s.err
		default:
			s.off = h.at
			s.fail(fmt.Sprintf("unknown section kind %d", h.kind))
		}
	}
	return s.err
}

// readWorkspaceV2 reads a workspace section (its users and cohorts follow in
// sections of their own).
func (e *Engine) readWorkspaceV2(s *codec.Decoder) *Workspace {
	id := s.Str()
	d := s.Digest()
	created := s.Time()
	if s.Err() != nil {
		return nil
	}
	if !ValidWorkspaceID(id) {
		s.Fail(fmt.Sprintf("invalid workspace id %q", id))
		return nil
	}
	if e.mu.workspaces[id] != nil {
		s.Fail(fmt.Sprintf("workspace %q twice", id))
		return nil
	}
	w := e.applyWorkspaceLocked(id, d, created, 0)
	w.lsn = s.Uvarint()
	nk := s.Uvarint()
	for i := uint64(0); i < nk && s.Err() == nil; i++ {
		p, kid := s.Str(), s.Str()
		kd := s.Digest()
		created := s.Time()
		luSec := s.Varint()
		luNs := s.Uvarint()
		revoked := s.Uvarint() == 1
		if luNs >= 1e9 {
			s.Fail("last_used nanoseconds out of range")
		}
		w.applyImportKey(p, kid, kd, created, revoked, luSec*1e9+int64(luNs))
	}
	w.readUsage(s)
	w.readSessions(s)
	w.readWorkspaceRepl(s)
	return w
}

// readUsage reads a workspace's usage counters (both snapshot versions):
// per partner, its days and their data points.
func (w *Workspace) readUsage(d *codec.Decoder) {
	np := d.Uvarint()
	for i := uint64(0); i < np && d.Err() == nil; i++ {
		p := d.Str()
		nd := d.Uvarint()
		for j := uint64(0); j < nd && d.Err() == nil; j++ {
			day := int32(d.Varint())
			w.addUsage(p, day, d.Uvarint())
		}
	}
}

// loadPart is how much of an identity array is read before its bounds
// check starts on it (index.LoadUsers checks on another goroutine).
const loadPart = 4 << 20

// readUsers reads the users image's array sections: straight into the
// regions of a new index.Users, or, with check, streamed through the checks.
func (s *snapReader) readUsers(w *Workspace, ih index.ImageHeader, check bool) {
	next := func(a index.Array, size uint64) secHeader {
		h := s.section()
		if s.err == nil && (h.kind != secArray+uint32(a) || h.length != size) {
			s.off = h.at
			s.fail(fmt.Sprintf("expected the %v array section of %d bytes, found kind %d of %d bytes", a, size, h.kind, h.length))
		}
		return h
	}
	if check {
		buf := make([]byte, loadPart)
		for a := index.ArrayTable; a <= index.ArrayPool && s.err == nil; a++ {
			h := next(a, ih.Size(a))
			c := index.NewArrayCheck(ih, a)
			crc := s.readArray(h, func(_, n int) []byte { return buf[:n] }, func(p []byte) { c.Write(p) })
			s.arrayDone(h, crc, c.Close())
		}
		return
	}
	u, err := index.LoadUsers(ih, index.Options{DenseBudget: w.e.dense}, func(a index.Array, dst []byte, got func([]byte)) error {
		h := next(a, uint64(len(dst)))
		if s.err != nil {
			return s.err
		}
		crc := s.readArray(h, func(off, n int) []byte { return dst[off : off+n] }, got)
		s.arrayDone(h, crc, nil)
		return s.err
	})
	if err != nil {
		if s.err == nil {
			s.fail(err.Error())
		}
		return
	}
	w.users.Close()
	w.users = u
}

// readArray reads the h.length bytes of an array section loadPart at a
// time, each into the slice into gives for (offset, length), hands each part
// to got, and returns their CRC (arrayDone checks it).
func (s *snapReader) readArray(h secHeader, into func(off, n int) []byte, got func([]byte)) uint32 {
	crc := uint32(0)
	for off := 0; off < int(h.length) && s.err == nil; {
		part := into(off, min(loadPart, int(h.length)-off))
		if _, err := io.ReadFull(s.r, part); err != nil {
			s.fail("truncated array")
			break
		}
		crc = codec.UpdateChecksum(crc, part)
		got(part)
		off += len(part)
		s.off += int64(len(part))
	}
	return crc
}

// arrayDone checks an array section's CRC, then the bounds check's verdict.
func (s *snapReader) arrayDone(h secHeader, crc uint32, checkErr error) {
	if s.err != nil {
		return
	}
	if crc != h.crc {
		s.off = h.at
		s.fail(fmt.Sprintf("array section of kind %d: checksum mismatch", h.kind))
		return
	}
	if checkErr != nil {
		s.off = h.at
		s.fail(checkErr.Error())
	}
}

// checkSnapshotFile verifies every checksum and structural bound of the
// snapshot file at path, of any supported version, without loading it into
// an engine: a version 2 file is streamed (its user arrays are never held in
// memory; one cohort bitmap at a time is); a version 1 file is read into a
// scratch in-memory engine that is then dropped. A damaged file gives a
// *codec.CorruptError naming the file and the offset.
func checkSnapshotFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("engine: check snapshot: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("engine: check snapshot: %w", err)
	}
	return checkSnapshot(f, fi.Size(), filepath.Base(path))
}

// checkSnapshot is checkSnapshotFile over a reader of size bytes.
func checkSnapshot(f io.Reader, size int64, name string) error {
	scratch, err := Open(Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return fmt.Errorf("engine: check snapshot: %w", err)
	}
	defer scratch.Close()
	s, v, err := newSnapReader(f, size, name)
	if err != nil {
		return err
	}
	if v == snapVersionV1 {
		return scratch.readSnapshotV1(s)
	}
	return scratch.readSnapshotV2(s, true)
}
