package pubsub

import (
	"io"
	"net"
	"syscall"
	"unsafe"
)

// rawConn returns the socket under nc for non-blocking writes, or nil when
// there is none (a TLS connection, a test's pipe): those are written by a
// goroutine of their own.
func rawConn(nc net.Conn) syscall.RawConn {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// maxIovecs is Linux's IOV_MAX: the most slices one writev takes.
const maxIovecs = 1024

// writeScratch is one writer's reusable iovec array and writev callback,
// so that a write allocates nothing.
type writeScratch struct {
	iov   []syscall.Iovec
	n     int
	errno syscall.Errno
	call  func(fd uintptr)
}

// writev writes batch to rc with as many writev calls as it takes while
// the socket accepts everything, and returns the bytes written. It never
// waits: a socket that would block ends it early with no error.
func (s *writeScratch) writev(rc syscall.RawConn, batch [][]byte) (int, error) {
	if s.call == nil {
		s.call = s.writevFD
	}
	written := 0
	for len(batch) > 0 {
		s.iov = s.iov[:0]
		want, used := 0, 0
		for _, b := range batch {
			if len(s.iov) == maxIovecs {
				break
			}
			used++
			if len(b) == 0 {
				continue
			}
			v := syscall.Iovec{Base: &b[0]}
			v.SetLen(len(b))
			s.iov = append(s.iov, v)
			want += len(b)
		}
		if want == 0 {
			return written, nil
		}
		s.n, s.errno = 0, 0
		// Control, not Write: Write would first take the socket's write
		// lock, which gws holds while it answers a client's close frame,
		// with no deadline, to a client that may not read; the writer must
		// not wait behind it. Control only keeps the descriptor open while
		// the call runs; this writer is the only one writing the outbox.
		if err := rc.Control(s.call); err != nil {
			clear(s.iov)
			return written, err
		}
		clear(s.iov) // drop the references to the frames
		switch s.errno {
		case 0:
		case syscall.EAGAIN:
			return written, nil
		default:
			return written, s.errno
		}
		written += s.n
		if s.n < want {
			return written, nil
		}
		batch = batch[used:]
	}
	return written, nil
}

// writevFD is the one syscall, made inside RawConn.Control on the
// non-blocking socket: it never waits.
func (s *writeScratch) writevFD(fd uintptr) {
	for {
		n, _, e := syscall.Syscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&s.iov[0])), uintptr(len(s.iov)))
		if e == syscall.EINTR {
			continue
		}
		s.n, s.errno = int(n), e
		return
	}
}

// rawReader reads a socket with read(2) inside RawConn.Read, for the
// wire's net.Conn: an idle connection's goroutine then waits under two
// small frames of the net and poll packages rather than three larger ones,
// which keeps its stack within 2 KiB.
type rawReader struct {
	rc    syscall.RawConn
	buf   []byte
	n     int
	err   error // RawConn.Read's, or else fdErr
	fdErr error // read(2)'s
	fn    func(fd uintptr) bool
}

func (r *rawReader) init(rc syscall.RawConn) {
	r.rc = rc
	r.fn = r.readFD
}

// read reads into p, waiting for the socket (and its read deadline) as
// net.Conn.Read does; the result is in n and err. Small enough to be
// inlined: one frame fewer.
func (r *rawReader) read(p []byte) {
	r.buf, r.n = p, 0
	r.err = r.rc.Read(r.fn)
	r.buf = nil
}

// readFD is the read(2) itself: false, to wait, when the socket has
// nothing.
func (r *rawReader) readFD(fd uintptr) bool {
	for {
		n, err := syscall.Read(int(fd), r.buf)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return false
		case err != nil:
			r.fdErr = err
		case n == 0 && len(r.buf) > 0:
			r.fdErr = io.EOF
		default:
			r.n = n
		}
		return true
	}
}

// result is the read's error: the socket's (closed, deadline), or read(2)'s.
func (r *rawReader) result() error {
	err := r.err
	if err == nil {
		err, r.fdErr = r.fdErr, nil
	}
	return err
}
