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
	boxes := make([]outbox, 500)
	next, want := 0, 0
	var dst [7]*outbox
	for round := range 60 {
		for range round % 13 {
			w.pushLocked(&boxes[next%len(boxes)])
			next++
		}
		k := w.popLocked(dst[:round%5])
		for _, j := range dst[:k] {
			if j != &boxes[want%len(boxes)] {
				t.Fatalf("round %d: job %d out of order", round, want)
			}
			want++
		}
	}
	for w.n > 0 {
		k := w.popLocked(dst[:])
		for _, j := range dst[:k] {
			if j != &boxes[want%len(boxes)] {
				t.Fatalf("draining: job %d out of order", want)
			}
			want++
		}
	}
	if want != next {
		t.Fatalf("popped %d of %d", want, next)
	}
}

func TestSplitChunk(t *testing.T) {
	str := func(bufs [][]byte) []string {
		var out []string
		for _, b := range bufs {
			out = append(out, string(b))
		}
		return out
	}
	for _, tc := range []struct {
		limit       int
		chunk, rest []string
	}{
		{10, []string{"ab", "cde", "", "f"}, nil},
		{6, []string{"ab", "cde", "", "f"}, nil},
		{5, []string{"ab", "cde", ""}, []string{"f"}},
		{4, []string{"ab", "cd"}, []string{"e", "", "f"}},
		{1, []string{"a"}, []string{"b", "cde", "", "f"}},
	} {
		batch := [][]byte{[]byte("ab"), []byte("cde"), nil, []byte("f")}
		chunk, rest := splitChunk(batch, tc.limit)
		if !slices.Equal(str(chunk), tc.chunk) || !slices.Equal(str(rest), tc.rest) {
			t.Errorf("splitChunk(%d) = %q, %q; want %q, %q", tc.limit, str(chunk), str(rest), tc.chunk, tc.rest)
		}
	}
}
