//go:build !linux

package pubsub

import (
	"net"
	"syscall"
)

// rawConn returns nil: outside Linux every outbox is written by a goroutine
// of its own with net.Buffers (which still uses one writev per burst where
// the platform has it).
func rawConn(net.Conn) syscall.RawConn { return nil }

type writeScratch struct{}

func (*writeScratch) writev(syscall.RawConn, [][]byte) (int, error) {
	panic("pubsub: no raw writes on this platform")
}

// rawReader is unused outside Linux: rc is always nil there.
type rawReader struct {
	rc syscall.RawConn
	n  int
}

func (r *rawReader) init(syscall.RawConn) {}

func (r *rawReader) read([]byte) { panic("pubsub: no raw reads on this platform") }

func (r *rawReader) result() error { return nil }

var _ = (*rawReader).result
