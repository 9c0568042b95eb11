//go:build !linux

package redirect

import (
	"context"
	"errors"
	"fmt"
	"net"
)

// ErrNoPredecessor is returned by Take when no running process serves the hand-off socket.
var ErrNoPredecessor = errors.New("no process serves the hand-off socket")

// NamedListener is a listening socket with the name both processes know it by.
type NamedListener struct {
	Name string
	Ln   *net.TCPListener
	PC   *net.UDPConn
}

// HandoffServer serves a process's listeners to its successor (Linux only).
type HandoffServer struct{}

// ListenHandoff returns ErrNotSupported: the hand-off needs Linux.
func ListenHandoff(path string) (*HandoffServer, error) {
	return nil, fmt.Errorf("%w: listener hand-off needs Linux", ErrNotSupported)
}

// Serve returns ErrNotSupported.
func (s *HandoffServer) Serve(ctx context.Context, lns []NamedListener, failed func(error)) error {
	return ErrNotSupported
}

// Close does nothing.
func (s *HandoffServer) Close() {}

// Takeover is the successor's side of a hand-off (Linux only).
type Takeover struct {
	Listeners   map[string]*net.TCPListener
	PacketConns map[string]*net.UDPConn
}

// Take returns ErrNoPredecessor: the hand-off needs Linux.
func Take(ctx context.Context, path string) (*Takeover, error) {
	return nil, fmt.Errorf("%w: listener hand-off needs Linux", ErrNoPredecessor)
}

// Commit does nothing.
func (t *Takeover) Commit() error { return nil }

// Abort does nothing.
func (t *Takeover) Abort() {}
