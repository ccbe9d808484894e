package engine

// Record types of the engine's WAL. Every state change of the engine is one
// of these; replay applies them through the same code as the live path, so a
// record means exactly one thing whether it arrives from a request or from
// the log. Payloads are fields of package codec; the byte layouts are drawn
// in docs/FORMATS.md.
const (
	recWorkspace    uint8 = 1  // a workspace and its API key digest
	recPartner      uint8 = 2  // a partner slug and its partner_api_key digest
	recImportKey    uint8 = 3  // a data import key (digest) for (workspace, partner)
	recRevokeKey    uint8 = 4  // revocation of a data import key
	recUsers        uint8 = 5  // a batch of user operations (create, attach, detach, merge, delete)
	recCohortUpsert uint8 = 6  // cohort created or renamed
	recCohortDelete uint8 = 7  // cohort deleted
	recMembers      uint8 = 8  // effective membership change: added and removed dense ids
	recSession      uint8 = 9  // a staged webhook page (dense ids) of a snapshot session
	recSessionDrop  uint8 = 10 // a webhook session dropped (expired or superseded)

	// Types 11–19 were added by the hardening work.

	// recCohortUpsertV2 is recCohortUpsert with times as unix seconds and
	// nanoseconds: a UnixNano cannot hold a created_at outside 1678–2262,
	// and a sender's timestamp must read back as sent. Type 6 records are
	// still replayed.
	recCohortUpsertV2 uint8 = 11
	// recIdempotency is the reply to a write that carried an
	// Idempotency-Key (idempotency.go).
	recIdempotency uint8 = 12

	// Types 40–49 are the command records of the replicated log, never
	// written to a WAL (commands.go).
)

// User operations inside a recUsers record.
const (
	opCreate uint8 = 1 // id
	opAttach uint8 = 2 // id, kind, key
	opDetach uint8 = 3 // kind, key
	opMerge  uint8 = 4 // from, into: memberships of from OR-ed into into, from deleted
	opDelete uint8 = 5 // id: every membership cleared, user deleted
)
