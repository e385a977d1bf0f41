package filter

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

type tokKind uint8

const (
	tEOF tokKind = iota
	tIdent
	tString
	tInt
	tLParen
	tRParen
	tComma
)

type token struct {
	kind tokKind
	pos  int
	text string // identifier (lower-cased) or decoded string literal
	raw  string // as written
	i    int64
}

func (t token) describe() string {
	switch t.kind {
	case tEOF:
		return "end of filter"
	case tString:
		return "string " + t.raw
	}
	return "'" + t.raw + "'"
}

type parser struct {
	src    string
	toks   []token
	i      int
	depth  int
	builds bool // a function that builds text was called
}

func (p *parser) errorf(t token, format string, args ...any) error {
	return &Error{t.pos, fmt.Sprintf(format, args...)}
}

func isIdentStart(c byte) bool { return c == '_' || c|0x20 >= 'a' && c|0x20 <= 'z' }
func isDigit(c byte) bool      { return c >= '0' && c <= '9' }

// add appends a token unless the filter already has MaxTokens.
func (p *parser) add(t token) error {
	if len(p.toks) == MaxTokens {
		return &Error{t.pos, fmt.Sprintf("the filter has more than %d tokens (names, literals, operators, parentheses and commas)", MaxTokens)}
	}
	p.toks = append(p.toks, t)
	return nil
}

// lex splits the filter into tokens.
func (p *parser) lex() error {
	s := p.src
	for i := 0; i < len(s); {
		c := s[i]
		var t token
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
			continue
		case c == '(':
			t = token{kind: tLParen, pos: i, raw: "("}
			i++
		case c == ')':
			t = token{kind: tRParen, pos: i, raw: ")"}
			i++
		case c == ',':
			t = token{kind: tComma, pos: i, raw: ","}
			i++
		case c == '\'':
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(s) {
					return &Error{i, "unterminated string literal"}
				}
				if s[j] == '\'' {
					if j+1 < len(s) && s[j+1] == '\'' { // '' is a quote
						b.WriteByte('\'')
						j += 2
						continue
					}
					break
				}
				b.WriteByte(s[j])
				j++
			}
			if !utf8.ValidString(b.String()) {
				return &Error{i, "string literal is not valid UTF-8"}
			}
			t = token{kind: tString, pos: i, text: b.String(), raw: s[i : j+1]}
			i = j + 1
		case isDigit(c) || (c == '+' || c == '-') && i+1 < len(s) && isDigit(s[i+1]):
			j := i + 1
			for j < len(s) && isDigit(s[j]) {
				j++
			}
			v, err := strconv.ParseInt(s[i:j], 10, 64)
			if err != nil {
				return &Error{i, "integer literal out of range"}
			}
			t = token{kind: tInt, pos: i, raw: s[i:j], i: v}
			i = j
		case isIdentStart(c):
			j := i + 1
			for j < len(s) && (isIdentStart(s[j]) || isDigit(s[j])) {
				j++
			}
			t = token{kind: tIdent, pos: i, raw: s[i:j], text: lowerASCII(s[i:j])}
			i = j
		default:
			r, _ := utf8.DecodeRuneInString(s[i:])
			return &Error{i, fmt.Sprintf("unexpected character %q", r)}
		}
		if err := p.add(t); err != nil {
			return err
		}
	}
	p.toks = append(p.toks, token{kind: tEOF, pos: len(s)})
	return nil
}

func (p *parser) peek() token { return p.toks[p.i] }

func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}

func (p *parser) isWord(w string) bool {
	t := p.peek()
	return t.kind == tIdent && t.text == w
}

func (p *parser) expect(k tokKind, what string) (token, error) {
	t := p.next()
	if t.kind != k {
		return t, p.errorf(t, "expected %s, found %s", what, t.describe())
	}
	return t, nil
}

func (p *parser) enter(t token) error {
	p.depth++
	if p.depth > MaxDepth {
		return p.errorf(t, "the filter is nested deeper than %d", MaxDepth)
	}
	return nil
}

func (p *parser) leave() { p.depth-- }

// parseOr: and-expressions joined by 'or' (lowest precedence).
func (p *parser) parseOr() (*expr, error) {
	return p.parseLogical("or", p.parseAnd, func(a, b bool) bool { return a || b })
}

// parseAnd: comparisons joined by 'and'.
func (p *parser) parseAnd() (*expr, error) {
	return p.parseLogical("and", p.parseComparison, func(a, b bool) bool { return a && b })
}

// parseLogical parses operands joined by the keyword word. Both sides are
// always evaluated, as the service does.
func (p *parser) parseLogical(word string, operand func() (*expr, error), combine func(a, b bool) bool) (*expr, error) {
	left, err := operand()
	if err != nil {
		return nil, err
	}
	for p.isWord(word) {
		op := p.next()
		right, err := operand()
		if err != nil {
			return nil, err
		}
		if err := p.needBool(op, left, right); err != nil {
			return nil, err
		}
		l, r := left.eval, right.eval
		left = &expr{typ: kBool, pos: left.pos, eval: func(c Connection) value {
			a, b := l(c), r(c)
			return boolValue(combine(a.b, b.b))
		}}
	}
	return left, nil
}

// parseList parses a parenthesised, comma-separated list of expressions,
// after its '(' (open); empty lists are allowed where allowEmpty.
func (p *parser) parseList(open token, allowEmpty bool) ([]*expr, error) {
	if err := p.enter(open); err != nil {
		return nil, err
	}
	var items []*expr
	if !allowEmpty || p.peek().kind != tRParen {
		for {
			e, err := p.parseOr()
			if err != nil {
				return nil, err
			}
			items = append(items, e)
			if p.peek().kind != tComma {
				break
			}
			p.next()
		}
	}
	if _, err := p.expect(tRParen, "')' or ','"); err != nil {
		return nil, err
	}
	p.leave()
	return items, nil
}

func (p *parser) needBool(op token, operands ...*expr) error {
	for _, e := range operands {
		if e.typ != kBool {
			return p.errorf(op, "'%s' needs boolean operands, found %s at position %d", op.raw, e.typ, e.pos)
		}
	}
	return nil
}

var comparisons = map[string]bool{"eq": true, "ne": true, "gt": true, "ge": true, "lt": true, "le": true}

// parseComparison: a unary expression, optionally compared or tested with
// 'in'.
func (p *parser) parseComparison() (*expr, error) {
	left, err := p.parseUnary()
	if err != nil {
		return nil, err
	}
	t := p.peek()
	switch {
	case t.kind == tIdent && comparisons[t.text]:
		p.next()
		right, err := p.parseUnary()
		if err != nil {
			return nil, err
		}
		return p.compare(t, left, right)
	case t.kind == tIdent && t.text == "in":
		p.next()
		return p.parseIn(t, left)
	}
	return left, nil
}

func (p *parser) compare(op token, left, right *expr) (*expr, error) {
	l, r := left.eval, right.eval
	switch op.text {
	case "eq", "ne":
		if left.typ != right.typ && left.typ != kNull && right.typ != kNull || left.typ == kCollection || right.typ == kCollection {
			return nil, p.errorf(op, "cannot compare %s with %s", left.typ, right.typ)
		}
		want := op.text == "eq"
		return &expr{typ: kBool, pos: left.pos, eval: func(c Connection) value {
			return boolValue(equal(l(c), r(c)) == want)
		}}, nil
	}
	for _, e := range []*expr{left, right} {
		if e.typ != kInt && e.typ != kNull {
			return nil, p.errorf(op, "'%s' compares integers, found %s at position %d", op.raw, e.typ, e.pos)
		}
	}
	cmp := map[string]func(a, b int64) bool{
		"gt": func(a, b int64) bool { return a > b },
		"ge": func(a, b int64) bool { return a >= b },
		"lt": func(a, b int64) bool { return a < b },
		"le": func(a, b int64) bool { return a <= b },
	}[op.text]
	return &expr{typ: kBool, pos: left.pos, eval: func(c Connection) value {
		a, b := l(c), r(c)
		if a.kind != kInt || b.kind != kInt {
			return boolFalse // a null operand never orders
		}
		return boolValue(cmp(a.i, b.i))
	}}, nil
}

func equal(a, b value) bool {
	if a.kind != b.kind {
		return false
	}
	switch a.kind {
	case kBool:
		return a.b == b.b
	case kInt:
		return a.i == b.i
	case kString:
		return a.s == b.s
	}
	return true // null eq null
}

// parseIn: after 'in', a parenthesised list of values or the groups
// collection (bare or parenthesised).
func (p *parser) parseIn(op token, left *expr) (*expr, error) {
	if left.typ == kCollection || left.typ == kBool {
		return nil, p.errorf(op, "'in' tests a string or integer, found %s", left.typ)
	}
	var items []*expr
	if p.isWord("groups") {
		g, err := p.parsePrimary()
		if err != nil {
			return nil, err
		}
		items = []*expr{g}
	} else {
		open, err := p.expect(tLParen, "'(' or groups after 'in'")
		if err != nil {
			return nil, err
		}
		if items, err = p.parseList(open, false); err != nil {
			return nil, err
		}
	}
	l := left.eval
	if len(items) == 1 && items[0].typ == kCollection {
		if left.typ != kString && left.typ != kNull {
			return nil, p.errorf(op, "only a string can be in groups, found %s", left.typ)
		}
		return &expr{typ: kBool, pos: left.pos, eval: func(c Connection) value {
			v := l(c)
			return boolValue(v.kind == kString && c.InGroup(v.s))
		}}, nil
	}
	evals := make([]func(Connection) value, len(items))
	for i, it := range items {
		if it.typ != left.typ && it.typ != kNull && left.typ != kNull || it.typ == kCollection {
			return nil, p.errorf(op, "list item %d is %s, the left side %s", i+1, it.typ, left.typ)
		}
		evals[i] = it.eval
	}
	return &expr{typ: kBool, pos: left.pos, eval: func(c Connection) value {
		v := l(c)
		found := false
		for _, e := range evals {
			if equal(v, e(c)) {
				found = true
			}
		}
		return boolValue(found)
	}}, nil
}

// parseUnary: 'not' binds tighter than comparisons.
func (p *parser) parseUnary() (*expr, error) {
	if !p.isWord("not") {
		return p.parsePrimary()
	}
	op := p.next()
	if err := p.enter(op); err != nil {
		return nil, err
	}
	defer p.leave()
	operand, err := p.parseUnary()
	if err != nil {
		return nil, err
	}
	if operand.typ != kBool {
		return nil, p.errorf(op, "'not' needs a boolean operand, found %s (write not (…) around a comparison)", operand.typ)
	}
	e := operand.eval
	return &expr{typ: kBool, pos: op.pos, eval: func(c Connection) value { return boolValue(!e(c).b) }}, nil
}

func constant(v value, pos int) *expr {
	return &expr{typ: v.kind, pos: pos, eval: func(Connection) value { return v }}
}

func (p *parser) parsePrimary() (*expr, error) {
	t := p.next()
	switch t.kind {
	case tString:
		return constant(value{kind: kString, s: t.text}, t.pos), nil
	case tInt:
		return constant(value{kind: kInt, i: t.i}, t.pos), nil
	case tLParen:
		if err := p.enter(t); err != nil {
			return nil, err
		}
		e, err := p.parseOr()
		if err != nil {
			return nil, err
		}
		if _, err := p.expect(tRParen, "')'"); err != nil {
			return nil, err
		}
		p.leave()
		return e, nil
	case tIdent:
		switch t.text {
		case "true":
			return constant(boolTrue, t.pos), nil
		case "false":
			return constant(boolFalse, t.pos), nil
		case "null":
			return constant(null, t.pos), nil
		case "userid":
			return stringField(t.pos, Connection.UserID), nil
		case "protocol":
			return stringField(t.pos, Connection.Protocol), nil
		case "connectionid":
			return &expr{typ: kString, pos: t.pos, eval: func(c Connection) value {
				return value{kind: kString, s: c.ConnectionID()}
			}}, nil
		case "groups":
			return &expr{typ: kCollection, pos: t.pos, eval: func(Connection) value { return value{kind: kCollection} }}, nil
		}
		if p.peek().kind == tLParen {
			return p.parseCall(t)
		}
		return nil, p.errorf(t, "unknown identifier '%s'", t.raw)
	}
	return nil, p.errorf(t, "expected a value, found %s", t.describe())
}

// stringField is a nullable string identifier: "" reads as null.
func stringField(pos int, get func(Connection) string) *expr {
	return &expr{typ: kString, pos: pos, eval: func(c Connection) value {
		if s := get(c); s != "" {
			return value{kind: kString, s: s}
		}
		return null
	}}
}
