// Package statuswriter records the status an http.Handler answers with,
// for the middlewares of metrics, tracing and livetrace, without hiding
// what the ResponseWriter underneath can do.
package statuswriter

import (
	"bufio"
	"net"
	"net/http"
)

// Writer records the status a handler answers with. It implements
// http.Hijacker and FlushError itself, as http.ResponseController looks
// for them before it unwraps: through Unwrap alone, a hijack would not be
// seen.
type Writer struct {
	http.ResponseWriter
	status   int
	hijacked bool
}

// New wraps w.
func New(w http.ResponseWriter) *Writer { return &Writer{ResponseWriter: w} }

// Status is the status answered: 200 when the handler wrote nothing, 101
// when it took the connection over.
func (w *Writer) Status() int {
	switch {
	case w.hijacked:
		return http.StatusSwitchingProtocols
	case w.status == 0:
		return http.StatusOK
	}
	return w.status
}

// Hijacked reports whether the handler took the connection over.
func (w *Writer) Hijacked() bool { return w.hijacked }

func (w *Writer) WriteHeader(code int) {
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code // informational answers (100, 103) come before the real one
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *Writer) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *Writer) Flush() { _ = w.FlushError() }

func (w *Writer) FlushError() error {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *Writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.hijacked = true
	}
	return nc, brw, err
}

// Unwrap lets http.ResponseController reach the connection (deadlines).
func (w *Writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

var (
	_ http.Flusher  = (*Writer)(nil)
	_ http.Hijacker = (*Writer)(nil)
)
