package pubsub

import (
	"slices"
	"testing"
)

func TestUnwritten(t *testing.T) {
	batch := func() [][]byte { return [][]byte{[]byte("ab"), []byte("cde"), nil, []byte("f")} }
	for _, tc := range []struct {
		n    int
		want []string
	}{
		{0, []string{"ab", "cde", "", "f"}},
		{1, []string{"b", "cde", "", "f"}},
		{2, []string{"cde", "", "f"}},
		{4, []string{"e", "", "f"}},
		{5, []string{"f"}},
		{6, nil},
	} {
		var got []string
		for _, b := range unwritten(batch(), tc.n) {
			got = append(got, string(b))
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("unwritten(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

// The writers' queue stays first in, first out across wrap-arounds and
// growth.
func TestWritersQueueOrder(t *testing.T) {
	var w writers
	conns := make([]conn, 500)
	next, want := 0, 0
	var dst [7]flushJob
	for round := range 60 {
		for range round % 13 {
			w.pushLocked(flushJob{c: &conns[next%len(conns)]})
			next++
		}
		k := w.popLocked(dst[:round%5])
		for _, j := range dst[:k] {
			if j.c != &conns[want%len(conns)] {
				t.Fatalf("round %d: job %d out of order", round, want)
			}
			want++
		}
	}
	for w.n > 0 {
		k := w.popLocked(dst[:])
		for _, j := range dst[:k] {
			if j.c != &conns[want%len(conns)] {
				t.Fatalf("draining: job %d out of order", want)
			}
			want++
		}
	}
	if want != next {
		t.Fatalf("popped %d of %d", want, next)
	}
}
