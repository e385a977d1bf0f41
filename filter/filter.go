// Package filter parses and evaluates the OData filters of Azure Web PubSub's
// REST API (rest-api.md §6): expressions over a connection's userId,
// connectionId, groups and protocol, such as
//
//	userId in ('user1', 'user2') and 'group1' in groups
//
// A filter is parsed and type-checked once (Parse), then evaluated per
// connection at send time (Match). No I/O; the parser is fuzzed.
//
// Parse refuses a filter longer than MaxLength bytes, of more than
// MaxTokens tokens, or nested deeper than MaxDepth, and Match builds at
// most MaxText bytes of text per connection, so that what a send costs is
// bounded: evaluating a filter for one connection takes at most about
// MaxTokens steps and MaxText bytes copied (a few µs, beside reading the
// connection's own ids), and a send costs that per connection it
// considers. Azure asks for filters under about 100 clauses; a clause
// such as userId eq 'a' or is 4 tokens, and startswith(tolower(userId),
// 'a') 9, so the limits leave room for 100 clauses of any kind.
package filter

import (
	"fmt"
	"strings"
)

// Limits of a filter, checked by Parse.
const (
	// MaxLength bounds a filter's source in bytes: 16 KiB, twice the
	// request line Azure's front end takes, so any filter Azure accepts in
	// a URL fits.
	MaxLength = 16 << 10
	// MaxTokens bounds the names, keywords, literals, parentheses and
	// commas of a filter, and with them the work of evaluating it.
	MaxTokens = 1000
	// MaxDepth bounds the nesting of parentheses, function calls, lists
	// and 'not', as Azure's emulator does.
	MaxDepth = 100
	// MaxText bounds the bytes concat, tolower and toupper may build while
	// a filter is evaluated for one connection (16 KiB, as long as the
	// longest filter); a connection that would need more is not selected.
	// Nested concats would otherwise copy their text once per level: 100
	// times a 16 KiB literal.
	MaxText = 16 << 10
)

// Connection is what a filter can see of a connection.
type Connection interface {
	ConnectionID() string
	// UserID returns the user id, or "" for an anonymous connection (null).
	UserID() string
	// Protocol returns the subprotocol, or "" for none (null).
	Protocol() string
	InGroup(group string) bool
	GroupCount() int
}

// Filter is a parsed, type-checked filter.
type Filter struct {
	src    string
	eval   func(Connection) value
	builds bool // it calls a function that builds text (MaxText)
}

// String returns the filter's source.
func (f *Filter) String() string { return f.src }

// Match reports whether the filter selects c.
func (f *Filter) Match(c Connection) bool {
	if f.builds { // only then the budget's allocation
		b := &textBudget{Connection: c, left: MaxText}
		v := f.eval(b)
		return b.left >= 0 && v.kind == kBool && v.b
	}
	v := f.eval(c)
	return v.kind == kBool && v.b
}

// textBudget is the Connection a filter that builds text is evaluated
// with: it counts down what is built, to -1 once MaxText is passed.
type textBudget struct {
	Connection
	left int
}

// build spends n bytes of c's budget, reporting whether they were left.
// Without a budget (a function evaluated outside Match) it allows all.
func build(c Connection, n int) bool {
	b, ok := c.(*textBudget)
	if !ok {
		return true
	}
	if b.left < 0 || n > b.left {
		b.left = -1
		return false
	}
	b.left -= n
	return true
}

// Error is a syntax or type error, with the byte offset in the filter where
// it was found.
type Error struct {
	Pos int
	Msg string
}

func (e *Error) Error() string {
	return fmt.Sprintf("invalid filter at position %d: %s", e.Pos, e.Msg)
}

// Parse parses and type-checks a filter. The result must be a boolean
// expression.
func Parse(src string) (*Filter, error) {
	if len(src) > MaxLength {
		return nil, &Error{MaxLength, fmt.Sprintf("the filter is longer than %d bytes", MaxLength)}
	}
	p := &parser{src: src}
	if err := p.lex(); err != nil {
		return nil, err
	}
	if len(p.toks) == 1 {
		return nil, &Error{0, "the filter is empty"}
	}
	e, err := p.parseOr()
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind != tEOF {
		return nil, p.errorf(t, "unexpected %s", t.describe())
	}
	if e.typ != kBool {
		return nil, &Error{0, fmt.Sprintf("the filter is of type %s, not a boolean", e.typ)}
	}
	return &Filter{src: src, eval: e.eval, builds: p.builds}, nil
}

// kind is the static and dynamic type of a value.
type kind uint8

const (
	kNull kind = iota
	kBool
	kInt
	kString
	kCollection // groups
)

func (k kind) String() string {
	return [...]string{"null", "bool", "int", "string", "collection"}[k]
}

// value is a dynamic value: a string typed expression may be null at run time.
type value struct {
	kind kind
	b    bool
	i    int64
	s    string
}

var (
	null      = value{}
	boolTrue  = value{kind: kBool, b: true}
	boolFalse = value{kind: kBool}
)

func boolValue(b bool) value {
	if b {
		return boolTrue
	}
	return boolFalse
}

// expr is a compiled sub-expression: its static type and its evaluator.
// String-typed expressions may evaluate to null.
type expr struct {
	typ  kind
	pos  int
	eval func(Connection) value
}

// lowerASCII folds keywords and identifiers.
func lowerASCII(s string) string { return strings.ToLower(s) }
