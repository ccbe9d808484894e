package engine

// sessionTable holds the open webhook snapshot sessions of a workspace.
// Sessions are added by the Mixpanel webhook (issue 6); until then the
// snapshot format carries an empty section for them.
type sessionCapture struct{}

func (w *Workspace) captureSessionsLocked() []sessionCapture { return nil }

func writeSessions(sw *snapWriter, s []sessionCapture) { sw.uvarint(uint64(len(s))) }

func (w *Workspace) readSessions(s *snapReader) {
	if n := s.uvarint(); n != 0 && s.err == nil {
		s.fail("webhook sessions are not supported by this version")
	}
}

func (w *Workspace) replaySession(typ uint8, d *recordDecoder) error {
	return invalidf("webhook session records are not supported by this version (type %d)", typ)
}
