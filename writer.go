package pubsub

import (
	"runtime"
	"sync"
	"time"
)

// writers writes the outboxes that have frames queued. A send puts its
// outbox in one FIFO queue, served by writer goroutines that exist only
// while the queue is not empty: one, or up to GOMAXPROCS while the writes
// gain from being parallel (writeStats.parallel). A writer writes what one
// outbox holds in one non-blocking writev and moves on; an outbox that
// filled again meanwhile goes to the back of the queue, so under load each
// connection's frames pile up and go out together, one syscall for many
// deliveries. A socket that cannot take everything at once (a slow reader,
// a full kernel buffer) is handed to a goroutine of its own that waits on
// it with the write timeout, so no broadcast waits for one slow client.
//
// Compared with a goroutine started per flush, this saves the goroutine's
// creation and scheduling and the write deadline on every write, and bounds
// the goroutines a broadcast to many connections wakes.
type writers struct {
	mu      sync.Mutex
	ring    []flushJob // a growable ring: queue[head], …, queue[head+n-1]
	head, n int
	running int
	limit   int // GOMAXPROCS when the first running writer started
	// parallel is the latest writes' verdict on whether more than one
	// writer is worth it (writeStats.parallel).
	parallel bool
}

type flushJob struct {
	c *conn
	o *outbox
}

// maxSpareSlices bounds the slice array an outbox keeps for its next
// batch: 1.5 KiB.
const maxSpareSlices = 64

// writerChunk is how many outboxes a writer takes from the queue at a time:
// few lock round trips, and the other writers still get their share.
const writerChunk = 16

// schedule queues o (whose flushing flag the caller set) to be written.
func (w *writers) schedule(c *conn, o *outbox) {
	w.mu.Lock()
	w.pushLocked(flushJob{c, o})
	if w.running == 0 {
		w.limit = runtime.GOMAXPROCS(0) // read once per busy spell: it takes the scheduler's lock
	}
	spawn := w.running == 0 || w.wantsMoreLocked()
	if spawn {
		w.running++
	}
	w.mu.Unlock()
	if spawn {
		go w.run()
	}
}

// wantsMoreLocked says whether another writer is to start: the writes gain
// from being parallel, and there is work enough for one more.
func (w *writers) wantsMoreLocked() bool {
	return w.parallel && w.running < w.limit && w.n >= writerChunk
}

func (w *writers) pushLocked(j flushJob) {
	if w.n == len(w.ring) {
		grown := make([]flushJob, max(64, 2*len(w.ring)))
		for i := 0; i < w.n; i++ {
			grown[i] = w.ring[(w.head+i)%len(w.ring)]
		}
		w.ring, w.head = grown, 0
	}
	w.ring[(w.head+w.n)%len(w.ring)] = j
	w.n++
}

// popLocked moves up to len(dst) jobs from the front of the queue to dst.
func (w *writers) popLocked(dst []flushJob) int {
	k := min(w.n, len(dst))
	for i := range k {
		dst[i] = w.ring[w.head]
		w.ring[w.head] = flushJob{}
		w.head = (w.head + 1) % len(w.ring)
	}
	w.n -= k
	return k
}

// run is one writer: it serves the queue until it is empty, or until it
// is one writer too many.
func (w *writers) run() {
	var batch [writerChunk]flushJob
	var again []flushJob
	var scratch writeScratch
	var st writeStats
	for {
		w.mu.Lock()
		for _, j := range again {
			w.pushLocked(j)
		}
		again = again[:0]
		if st.writes > 0 {
			w.parallel = st.parallel()
			st = writeStats{}
		}
		k := 0
		if w.parallel || w.running == 1 {
			k = w.popLocked(batch[:])
		}
		if k == 0 {
			w.running--
			if w.running == 0 && w.n == 0 && len(w.ring) > 4096 {
				w.ring, w.head = nil, 0 // a large broadcast's queue is not kept while idle
			}
			w.mu.Unlock()
			return
		}
		spawn := w.wantsMoreLocked()
		if spawn {
			w.running++
		}
		w.mu.Unlock()
		if spawn {
			go w.run()
		}
		for i := range k {
			if batch[i].c.writeOnce(batch[i].o, &scratch, &st) {
				again = append(again, batch[i])
			}
			batch[i] = flushJob{}
		}
	}
}

// writeStats is what one writer's last chunk of writes carried.
type writeStats struct{ writes, frames, bytes int }

// parallel says whether writes like these are worth spreading over several
// writers. They are when each carries a single frame: there is nothing to
// coalesce, and two writers reach the last connection of a broadcast in
// half the time. They are when each carries more than 64 KiB: copying, not
// the syscall, is the cost, and one writer would fall behind. In between,
// frames pile up while a connection waits its turn, and one writer sends
// them with the fewest syscalls: on 2 cores, 1,000 subscribers with 32
// messages of 64 B in flight took 0.67 µs of CPU per delivery with one
// writer and 1.0–1.2 µs with two.
func (st writeStats) parallel() bool {
	return st.frames < 2*st.writes || st.bytes > 64<<10*st.writes
}

// kick starts writing o, whose flushing flag the caller set: on a writer
// when the socket can be written without blocking, else on a goroutine.
func (c *conn) kick(o *outbox) {
	c.hub.svc.writers.schedule(c, o)
}

// writeOnce writes what o holds without blocking and reports whether o has
// more to write (it is to be queued again). Everything but a plain batch of
// frames on a socket that can be written directly — a close frame, a TLS
// connection, a write that did not take everything — goes to flush on a
// goroutine of its own, which then owns o until its queue is empty.
func (c *conn) writeOnce(o *outbox, s *writeScratch, st *writeStats) (more bool) {
	c.outMu.Lock()
	if o.closed || len(o.frames) == 0 && o.closeReq == nil {
		o.flushing = false
		c.outMu.Unlock()
		return false
	}
	if o.closeReq != nil || o.raw == nil {
		c.outMu.Unlock()
		go c.flush(o, nil)
		return false
	}
	batch, expires, frames := o.frames, o.expires, o.queued
	o.frames, o.expires, o.spare, o.queued = o.spare[:0], nil, nil, 0
	c.outMu.Unlock()

	dropped := 0
	if expires != nil {
		batch, dropped = dropExpired(batch, expires)
	}
	total := byteLen(batch)
	written, err := 0, error(nil)
	if total > 0 {
		written, err = s.writev(o.raw, batch)
	}

	c.outMu.Lock()
	o.size -= dropped + written
	switch {
	case err != nil:
		c.outMu.Unlock()
		c.abort(o)
		return false
	case written < total:
		// The socket is full: wait for it on a goroutine of its own.
		c.outMu.Unlock()
		go c.flush(o, unwritten(batch, written))
		return false
	}
	st.writes++
	st.frames += frames
	st.bytes += written
	if cap(batch) <= maxSpareSlices { // a burst's long array is not kept for the rest of the connection's life
		clear(batch[:cap(batch)])
		o.spare = batch[:0]
	}
	more = len(o.frames) > 0 || o.closeReq != nil
	if !more {
		o.flushing = false
	}
	c.outMu.Unlock()
	return more
}

// unwritten returns what of batch is left after its first n bytes were
// written.
func unwritten(batch [][]byte, n int) [][]byte {
	for len(batch) > 0 && n >= len(batch[0]) {
		n -= len(batch[0])
		batch = batch[1:]
	}
	if n > 0 {
		batch[0] = batch[0][n:]
	}
	return batch
}

// writeDeadline is when a blocking write that started now gives up.
func (c *conn) writeDeadline() time.Time {
	return time.Now().Add(c.hub.svc.cfg.WriteTimeout)
}
