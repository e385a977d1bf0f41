package filter

import (
	"strings"
	"unicode/utf8"
)

// function describes a built-in function: its argument types and result.
type function struct {
	args   []kind // kString arguments also take null
	result kind
	builds bool // it builds text, within MaxText
	// apply gets the evaluated arguments; string arguments may be null.
	apply func(c Connection, args [3]value) value
}

// caseFn is tolower or toupper: it builds a copy of its argument (null
// past MaxText).
func caseFn(f func(string) string) function {
	return function{args: []kind{kString}, result: kString, builds: true, apply: func(c Connection, a [3]value) value {
		if a[0].kind != kString || !build(c, len(a[0].s)) {
			return null
		}
		return value{kind: kString, s: f(a[0].s)}
	}}
}

func predicate(f func(s, p string) bool) function {
	return function{args: []kind{kString, kString}, result: kBool, apply: func(_ Connection, a [3]value) value {
		if a[0].kind != kString || a[1].kind != kString {
			return boolFalse
		}
		return boolValue(f(a[0].s, a[1].s))
	}}
}

var functions = map[string]function{
	"tolower": caseFn(strings.ToLower),
	"toupper": caseFn(strings.ToUpper),
	"trim": {args: []kind{kString}, result: kString, apply: func(_ Connection, a [3]value) value {
		if a[0].kind != kString {
			return null
		}
		return value{kind: kString, s: strings.TrimSpace(a[0].s)} // a slice of it: nothing built
	}},
	"startswith": predicate(strings.HasPrefix),
	"endswith":   predicate(strings.HasSuffix),
	"contains":   predicate(strings.Contains),
	"concat": {args: []kind{kString, kString}, result: kString, builds: true, apply: func(c Connection, a [3]value) value {
		if a[0].kind != kString || a[1].kind != kString || !build(c, len(a[0].s)+len(a[1].s)) {
			return null
		}
		return value{kind: kString, s: a[0].s + a[1].s}
	}},
	"indexof": {args: []kind{kString, kString}, result: kInt, apply: func(_ Connection, a [3]value) value {
		if a[0].kind != kString || a[1].kind != kString {
			return value{kind: kInt, i: -1}
		}
		i := strings.Index(a[0].s, a[1].s)
		if i > 0 {
			i = utf8.RuneCountInString(a[0].s[:i]) // a character index, not a byte index
		}
		return value{kind: kInt, i: int64(i)}
	}},
}

// parseCall parses name(args…) after the name.
func (p *parser) parseCall(name token) (*expr, error) {
	args, err := p.parseList(p.next(), true) // after the '('
	if err != nil {
		return nil, err
	}

	switch name.text {
	case "length":
		return p.length(name, args)
	case "substring":
		return p.substring(name, args)
	}
	fn, ok := functions[name.text]
	if !ok {
		return nil, p.errorf(name, "unknown function '%s'", name.raw)
	}
	p.builds = p.builds || fn.builds
	if len(args) != len(fn.args) {
		return nil, p.errorf(name, "%s takes %d arguments, found %d", name.raw, len(fn.args), len(args))
	}
	for i, a := range args {
		if a.typ != fn.args[i] && a.typ != kNull {
			return nil, p.errorf(name, "argument %d of %s must be a %s, found %s", i+1, name.raw, fn.args[i], a.typ)
		}
	}
	return call(name.pos, fn.result, args, fn.apply), nil
}

func call(pos int, result kind, args []*expr, apply func(Connection, [3]value) value) *expr {
	evals := make([]func(Connection) value, len(args))
	for i, a := range args {
		evals[i] = a.eval
	}
	return &expr{typ: result, pos: pos, eval: func(c Connection) value {
		var vals [3]value // an array, passed by value: no allocation per match
		for i, e := range evals {
			vals[i] = e(c)
		}
		return apply(c, vals)
	}}
}

// length takes a string (characters; null stays null) or the groups
// collection (how many groups the connection is in).
func (p *parser) length(name token, args []*expr) (*expr, error) {
	if len(args) != 1 {
		return nil, p.errorf(name, "length takes 1 argument, found %d", len(args))
	}
	switch args[0].typ {
	case kCollection:
		return &expr{typ: kInt, pos: name.pos, eval: func(c Connection) value {
			return value{kind: kInt, i: int64(c.GroupCount())}
		}}, nil
	case kString, kNull:
		return call(name.pos, kInt, args, func(_ Connection, a [3]value) value {
			if a[0].kind != kString {
				return null
			}
			return value{kind: kInt, i: int64(utf8.RuneCountInString(a[0].s))}
		}), nil
	}
	return nil, p.errorf(name, "length takes a string or groups, found %s", args[0].typ)
}

// substring(s, start[, length]) counts characters; out-of-range bounds are
// clamped rather than failing the whole send.
func (p *parser) substring(name token, args []*expr) (*expr, error) {
	if len(args) != 2 && len(args) != 3 {
		return nil, p.errorf(name, "substring takes 2 or 3 arguments, found %d", len(args))
	}
	if args[0].typ != kString && args[0].typ != kNull {
		return nil, p.errorf(name, "argument 1 of substring must be a string, found %s", args[0].typ)
	}
	for i, a := range args[1:] {
		if a.typ != kInt {
			return nil, p.errorf(name, "argument %d of substring must be an integer, found %s", i+2, a.typ)
		}
	}
	n := len(args)
	return call(name.pos, kString, args, func(_ Connection, a [3]value) value {
		if a[0].kind != kString || a[1].kind != kInt || n == 3 && a[2].kind != kInt {
			return null
		}
		s := a[0].s
		chars := int64(utf8.RuneCountInString(s))
		start := clamp(a[1].i, 0, chars)
		end := chars
		if n == 3 && max(a[2].i, 0) < end-start {
			end = start + max(a[2].i, 0)
		}
		return value{kind: kString, s: s[byteOffset(s, start):byteOffset(s, end)]} // a slice: nothing built
	}), nil
}

func clamp(v, lo, hi int64) int64 { return min(max(v, lo), hi) }

// byteOffset is where character i of s starts (len(s) past the end).
func byteOffset(s string, i int64) int {
	for off := range s {
		if i == 0 {
			return off
		}
		i--
	}
	return len(s)
}
