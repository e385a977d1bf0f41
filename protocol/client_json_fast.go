package protocol

import (
	"bytes"
	"encoding/base64"
	"strconv"
	"unicode/utf8"
)

// decodeDataMessageFast decodes the frame a client receives most, a data
// message in the shape the service writes it ({"sequenceId":…,"type":
// "message","from":"group","group":…,"fromUserId":…,"dataType":"text",
// "data":…}, text or binary), without encoding/json, which spent most of a
// receiving client's time validating and unquoting a payload it had
// already scanned. Anything else (another key or type, whitespace, a
// duplicate key, a surrogate escape, invalid UTF-8) reports !ok, and
// DecodeJSONServerMessage decodes the frame the general way; a fuzz test
// checks that the two agree whenever this one answers.
func decodeDataMessageFast(frame []byte) (m ServerMessage, ok bool) {
	p := fastParser{b: frame}
	if !p.byte('{') {
		return m, false
	}
	var seen [7]bool
	var typ, from, dataType []byte
	var data []byte
	var hasData, hasGroup bool
	for first := true; ; first = false {
		if p.byte('}') {
			if first {
				return m, false
			}
			break
		}
		if !first && !p.byte(',') {
			return m, false
		}
		key, ok := p.plainString()
		if !ok || !p.byte(':') {
			return m, false
		}
		k := -1
		switch string(key) { // no copy: a conversion in a switch
		case "type":
			k = 0
			typ, ok = p.plainString()
		case "from":
			k = 1
			from, ok = p.plainString()
		case "group":
			k = 2
			var g []byte
			g, ok = p.string()
			m.Group, hasGroup = string(g), true
		case "fromUserId":
			k = 3
			if !p.literal("null") {
				var u []byte
				u, ok = p.string()
				m.FromUserID = string(u)
			}
		case "dataType":
			k = 4
			dataType, ok = p.plainString()
		case "data":
			k = 5
			data, ok = p.string()
			hasData = true
		case "sequenceId":
			k = 6
			m.SequenceID, ok = p.uint()
		}
		if k < 0 || !ok || seen[k] {
			return m, false
		}
		seen[k] = true
	}
	if p.i != len(p.b) || string(typ) != "message" || !hasData {
		return m, false
	}
	switch {
	case string(from) == "group" && hasGroup:
		m.Type = GroupMessage
	case string(from) == "server" && !hasGroup && !seen[3]:
		m.Type = ServerDataMessage
	default:
		return m, false
	}
	switch string(dataType) {
	case "text":
		m.DataType, m.Data = Text, data
	case "binary":
		b := make([]byte, base64.StdEncoding.DecodedLen(len(data)))
		n, err := base64.StdEncoding.Decode(b, data)
		if err != nil {
			return m, false
		}
		m.DataType, m.Data = Binary, b[:n]
	default:
		return m, false
	}
	return m, true
}

// fastParser reads the JSON the service writes: no whitespace.
type fastParser struct {
	b []byte
	i int
}

func (p *fastParser) byte(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *fastParser) literal(s string) bool {
	if len(p.b)-p.i >= len(s) && string(p.b[p.i:p.i+len(s)]) == s {
		p.i += len(s)
		return true
	}
	return false
}

// plainString reads a string without escapes or non-ASCII bytes (keys and
// the protocol's words), as a slice of the frame.
func (p *fastParser) plainString() ([]byte, bool) {
	if !p.byte('"') {
		return nil, false
	}
	start := p.i
	for p.i += plainPrefix(p.b[p.i:]); p.i < len(p.b); p.i++ {
		switch c := p.b[p.i]; {
		case c == '"':
			s := p.b[start:p.i]
			p.i++
			return s, true
		case c < 0x20 || c == '\\' || c >= 0x80:
			return nil, false
		}
	}
	return nil, false
}

// string reads a string into new bytes, unescaping it.
func (p *fastParser) string() ([]byte, bool) {
	if !p.byte('"') {
		return nil, false
	}
	// Its end first, so that the copy is made once.
	end, ascii := p.i, true
	for ; end < len(p.b); end++ {
		if end += plainPrefix(p.b[end:]); end >= len(p.b) {
			break
		}
		c := p.b[end]
		if c == '"' {
			break
		}
		switch {
		case c < 0x20:
			return nil, false
		case c >= 0x80:
			ascii = false
		case c == '\\':
			end++ // what it escapes cannot end the string
		}
	}
	if end >= len(p.b) {
		return nil, false
	}
	raw := p.b[p.i:end]
	p.i = end + 1
	if !ascii && !utf8.Valid(raw) {
		return nil, false // encoding/json makes invalid UTF-8 U+FFFD
	}
	out := make([]byte, 0, len(raw))
	for {
		i := bytes.IndexByte(raw, '\\')
		if i < 0 {
			return append(out, raw...), true
		}
		out = append(out, raw[:i]...)
		if i+1 >= len(raw) {
			return nil, false
		}
		esc := raw[i+1]
		raw = raw[i+2:]
		switch esc {
		case '"', '\\', '/':
			out = append(out, esc)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			if len(raw) < 4 {
				return nil, false
			}
			r, err := strconv.ParseUint(string(raw[:4]), 16, 16)
			if err != nil || r >= 0xD800 && r < 0xE000 {
				return nil, false // surrogates: the general way
			}
			raw = raw[4:]
			out = utf8.AppendRune(out, rune(r))
		default:
			return nil, false
		}
	}
}

// uint reads an unsigned integer that fits 64 bits, without sign, fraction
// or exponent.
func (p *fastParser) uint() (uint64, bool) {
	start := p.i
	for p.i < len(p.b) && '0' <= p.b[p.i] && p.b[p.i] <= '9' {
		p.i++
	}
	if p.i == start || p.i-start > 1 && p.b[start] == '0' {
		return 0, false
	}
	n, err := strconv.ParseUint(string(p.b[start:p.i]), 10, 64)
	return n, err == nil
}
