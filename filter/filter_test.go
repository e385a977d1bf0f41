package filter

import (
	"errors"
	"runtime"
	"slices"
	"strings"
	"testing"
)

type conn struct {
	id, user, protocol string
	groups             []string
}

func (c conn) ConnectionID() string  { return c.id }
func (c conn) UserID() string        { return c.user }
func (c conn) Protocol() string      { return c.protocol }
func (c conn) InGroup(g string) bool { return slices.Contains(c.groups, g) }
func (c conn) GroupCount() int       { return len(c.groups) }

var conns = []conn{
	{id: "c1", user: "user1", protocol: "json.webpubsub.azure.v1", groups: []string{"group1"}},
	{id: "c2", user: "user2", groups: []string{"group1", "group2"}},
	{id: "c3", user: "user'1"},
	{id: "123", user: "Listener-Alpha", groups: []string{"group3"}},
	{id: "c5"}, // anonymous
	{id: "c6", user: "abcdefgh", groups: []string{"a", "b", "c"}},
}

// matching returns the ids of the connections f selects.
func matching(t *testing.T, src string) []string {
	t.Helper()
	f, err := Parse(src)
	if err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	var ids []string
	for _, c := range conns {
		if f.Match(c) {
			ids = append(ids, c.id)
		}
	}
	return ids
}

func TestFilters(t *testing.T) {
	cases := []struct {
		src  string
		want []string
	}{
		// The documentation's examples.
		{`'group1' in groups or 'group2' in groups or 'group3' in groups`, []string{"c1", "c2", "123"}},
		{`userId in ('user1', 'user2', 'user3') and 'group1' in groups`, []string{"c1", "c2"}},
		{`userId eq 'user1' and connectionId ne '123'`, []string{"c1"}},
		{`userId eq 'user1' and (not ('group1' in groups))`, nil},
		{`userId eq 'user''1'`, []string{"c3"}},
		{`length(userId) gt 0 and length(userId) lt 3 or length(userId) gt 7 and length(userId) lt 10`, []string{"c6"}},
		// Nulls.
		{`userId eq null`, []string{"c5"}},
		{`userId ne null`, []string{"c1", "c2", "c3", "123", "c6"}},
		{`null eq null`, []string{"c1", "c2", "c3", "123", "c5", "c6"}},
		{`length(userId) gt 0`, []string{"c1", "c2", "c3", "123", "c6"}},
		{`not (length(userId) gt 0)`, []string{"c5"}},
		{`startswith(userId, 'user')`, []string{"c1", "c2", "c3"}},
		{`indexof(userId, 'x') eq -1`, []string{"c1", "c2", "c3", "123", "c5", "c6"}},
		{`protocol eq 'json.webpubsub.azure.v1'`, []string{"c1"}},
		{`protocol eq null and userId ne null`, []string{"c2", "c3", "123", "c6"}},
		// String functions.
		{`startswith(tolower(userId), 'listener-')`, []string{"123"}},
		{`toupper(userId) eq 'USER2'`, []string{"c2"}},
		{`endswith(userId, '2') or contains(userId, 'def')`, []string{"c2", "c6"}},
		{`trim(concat(' ', userId)) eq 'user1'`, []string{"c1"}},
		{`substring(userId, 1) eq 'ser1'`, []string{"c1"}},
		{`substring(userId, 0, 4) eq 'abcd'`, []string{"c6"}},
		{`substring(userId, 99) eq ''`, []string{"c1", "c2", "c3", "123", "c6"}},
		{`substring(userId, 2, 9223372036854775807) eq 'cdefgh'`, []string{"c6"}},
		{`indexof(userId, 'def') eq 3`, []string{"c6"}},
		// Collections, lists, literals, precedence, case.
		{`length(groups) gt 1`, []string{"c2", "c6"}},
		{`length(groups) eq 0`, []string{"c3", "c5"}},
		{`'a' in (groups)`, []string{"c6"}},
		{`connectionId in ('c1', '123')`, []string{"c1", "123"}},
		{`true`, []string{"c1", "c2", "c3", "123", "c5", "c6"}},
		{`false or userId eq 'user2'`, []string{"c2"}},
		{`userId eq 'user1' or userId eq 'user2' and 'group2' in groups`, []string{"c1", "c2"}},
		{`(userId eq 'user1' or userId eq 'user2') and 'group2' in groups`, []string{"c2"}},
		{`not not true and false`, nil},
		{`UserId EQ 'user1' AND 'group1' IN Groups`, []string{"c1"}},
		{`1 lt 2`, []string{"c1", "c2", "c3", "123", "c5", "c6"}},
		{`-1 lt +1 and 10 ge 10`, []string{"c1", "c2", "c3", "123", "c5", "c6"}},
		{`((((userId eq 'user2'))))`, []string{"c2"}},
	}
	for _, tc := range cases {
		if got := matching(t, tc.src); !slices.Equal(got, tc.want) {
			t.Errorf("%s\n got %v\nwant %v", tc.src, got, tc.want)
		}
	}
}

func TestInvalidFilters(t *testing.T) {
	cases := []struct {
		src string
		pos int
	}{
		{``, 0},
		{`   `, 0},
		{`userId`, 0},                    // not a boolean
		{`userId eq`, 9},                 // missing operand
		{`userId eq 'a`, 10},             // unterminated string
		{`userId == 'a'`, 7},             // not an operator
		{`not length(userId) gt 5`, 0},   // not binds tighter than gt
		{`userId eq 1`, 7},               // string vs int
		{`userId gt 'a'`, 7},             // ordering needs integers
		{`'a' in userId`, 7},             // in needs a list or groups
		{`groups eq 'a'`, 7},             // collections do not compare
		{`unknown eq 'a'`, 0},            // unknown identifier
		{`frobnicate(userId)`, 0},        // unknown function
		{`startswith(userId)`, 0},        // arity
		{`substring(userId, 'a')`, 0},    // argument type
		{`length(1)`, 0},                 // argument type
		{`userId eq 'a' and 1`, 14},      // and needs booleans
		{`userId eq 'a' or`, 16},         // dangling or
		{`(userId eq 'a'`, 14},           // unclosed paren
		{`userId eq 'a')`, 13},           // stray paren
		{`userId eq 'a' userId`, 14},     // trailing tokens
		{`99999999999999999999 eq 1`, 0}, // integer overflow
		{`userId eq 'a' # comment`, 14},  // bad character
		{`1 in groups`, 2},               // only strings are in groups
		{`userId in ('a', 1)`, 7},        // list item type
	}
	for _, tc := range cases {
		_, err := Parse(tc.src)
		var fe *Error
		if !errors.As(err, &fe) {
			t.Errorf("%q: err %v, want *Error", tc.src, err)
			continue
		}
		if fe.Pos != tc.pos {
			t.Errorf("%q: error at %d (%s), want %d", tc.src, fe.Pos, fe.Msg, tc.pos)
		}
	}
}

// limitFilters are filters just at each limit and one step past it.
func limitFilters() (at, past map[string]string) {
	nest := func(n int, open, close string) string {
		return strings.Repeat(open, n) + "true" + strings.Repeat(close, n)
	}
	pad := func(n int) string { // userId eq '…' of n bytes
		return "userId eq '" + strings.Repeat("a", n-len("userId eq ''")) + "'"
	}
	return map[string]string{
			"length": pad(MaxLength),
			"tokens": "not true" + strings.Repeat(" or true", (MaxTokens-2)/2), // 2 + 2k tokens
			"text":   textBuilder(MaxDepth-3, MaxLength-2000),
			"parens": nest(MaxDepth, "(", ")"),
			"not":    nest(MaxDepth, "not ", ""),
			"calls":  strings.Repeat("tolower(", MaxDepth) + "userId" + strings.Repeat(")", MaxDepth) + " eq 'a'",
		}, map[string]string{
			"length": pad(MaxLength + 1),
			"tokens": "true" + strings.Repeat(" or true", MaxTokens/2), // 1 + 2k tokens
			"parens": nest(MaxDepth+1, "(", ")"),
			"not":    nest(MaxDepth+1, "not ", ""),
			"calls":  strings.Repeat("tolower(", MaxDepth+1) + "userId" + strings.Repeat(")", MaxDepth+1) + " eq 'a'",
		}
}

// TestLimits: a filter just at each limit parses and matches; one past it
// is refused with the limit and where it was passed.
func TestLimits(t *testing.T) {
	at, past := limitFilters()
	if len(at["length"]) != MaxLength || len(past["tokens"]) > MaxLength {
		t.Fatal("the limit filters are not what they say")
	}
	for name, src := range at {
		f, err := Parse(src)
		if err != nil {
			t.Errorf("%s at the limit: %v", name, err)
			continue
		}
		f.Match(conns[0])
	}
	for name, want := range map[string]struct {
		pos int
		msg string
	}{
		"length": {MaxLength, "longer than 16384 bytes"},
		"tokens": {strings.LastIndex(past["tokens"], "true"), "more than 1000 tokens"},
		"parens": {MaxDepth, "nested deeper than 100"},
		"not":    {4 * MaxDepth, "nested deeper than 100"},
		"calls":  {len("tolower(")*MaxDepth + len("tolower"), "nested deeper than 100"},
	} {
		_, err := Parse(past[name])
		var fe *Error
		if !errors.As(err, &fe) || fe.Pos != want.pos || !strings.Contains(fe.Msg, want.msg) {
			t.Errorf("%s past the limit: %v, want %q at position %d", name, err, want.msg, want.pos)
		}
	}
	// A filter of 40,000 clauses is refused before any of it is lexed.
	huge := "userId eq 'u'" + strings.Repeat(" or userId eq 'u'", 39999)
	if allocs := testing.AllocsPerRun(10, func() { _, _ = Parse(huge) }); allocs > 10 { // the error alone, not one per token
		t.Errorf("refusing a huge filter allocated %v times", allocs)
	}
}

// BenchmarkMaxTokens: what one connection costs a filter of MaxTokens
// tokens, the most a send pays per connection it considers.
func BenchmarkMaxTokens(b *testing.B) {
	clause := " or userId eq 'someone' and 'group' in groups" // 8 tokens
	f, err := Parse("false" + strings.Repeat(clause, (MaxTokens-1)/8))
	if err != nil {
		b.Fatal(err)
	}
	var c Connection = conns[1]
	for b.Loop() {
		f.Match(c)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`'group1' in groups or 'group2' in groups`,
		`userId in ('user1', 'user2') and 'group1' in groups`,
		`userId eq 'user''1' and connectionId ne '123'`,
		`not (length(userId) gt 5)`,
		`substring(tolower(userId), 1, 2) eq 'se' or indexof(userId, 'x') ge 0`,
		`startswith(concat(userId, trim(' a ')), 'u') and length(groups) le 3`,
		`protocol eq null or endswith(toupper(userId), 'X') or contains(userId, '''')`,
		`((true))`,
	} {
		f.Add(s)
	}
	at, past := limitFilters()
	for _, m := range []map[string]string{at, past} {
		for _, s := range m {
			f.Add(s)
		}
	}
	f.Fuzz(func(t *testing.T, src string) {
		flt, err := Parse(src)
		if err != nil {
			var fe *Error
			if !errors.As(err, &fe) || fe.Pos < 0 || fe.Pos > len(src) {
				t.Fatalf("%q: bad error %v", src, err)
			}
			return
		}
		for _, c := range conns {
			flt.Match(c)
		}
	})
}

// textBuilder nests concat n deep around a literal of size bytes; every
// level copies the text built so far.
func textBuilder(n, size int) string {
	return "length(" + strings.Repeat("concat(", n) + "'" + strings.Repeat("a", size) + "'" + strings.Repeat(", userId)", n) + ") gt 0"
}

// TestMaxText: a filter that would build more than MaxText bytes of text
// for a connection does not select it, and building stops there: at the
// length and depth limits, nested concats once copied 1.6 MB for each
// connection a send considered.
func TestMaxText(t *testing.T) {
	var c Connection = conns[1] // user2; an interface already, so that only Match allocates
	under, err := Parse(textBuilder(4, MaxText/4-100))
	if err != nil {
		t.Fatal(err)
	}
	if !under.Match(c) {
		t.Fatal("a filter within MaxText does not match")
	}
	worst, err := Parse(textBuilder(MaxDepth-3, MaxLength-2000))
	if err != nil {
		t.Fatal(err)
	}
	if worst.Match(c) {
		t.Fatal("a filter past MaxText matched")
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const n = 20
	for range n {
		worst.Match(c)
	}
	runtime.ReadMemStats(&after)
	if perMatch := (after.TotalAlloc - before.TotalAlloc) / n; perMatch > 2*MaxText {
		t.Fatalf("a match allocated %d bytes, want at most about MaxText (%d)", perMatch, MaxText)
	}
	// Functions that only read text allocate nothing.
	reader, err := Parse("length(userId) gt 1 and substring(userId, 1, 2) eq 'se' and indexof(userId, 'r2') eq 3 and trim(userId) ne ''")
	if err != nil {
		t.Fatal(err)
	}
	if allocs := testing.AllocsPerRun(100, func() { reader.Match(c) }); allocs != 0 {
		t.Fatalf("reading functions allocated %v times per match", allocs)
	}
}
