//go:build !linux

package resp

import "net"

// eventLoop exists on Linux only (loop_linux.go); elsewhere every
// connection is served by a goroutine of its own.
type eventLoop struct{}

func (s *Server) newEventLoops(int) []*eventLoop { return nil }
func (l *eventLoop) adopt(*conn)                 {}
func (l *eventLoop) poke()                       {}
func (l *eventLoop) stop()                       {}
func rawFD(net.Conn) int                         { return -1 }
