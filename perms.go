package pubsub

import (
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

// Permission is a group permission a connection can hold (client spec §4).
type Permission uint8

// The permissions of Azure Web PubSub.
const (
	// PermissionJoinLeaveGroup allows joining and leaving a group.
	PermissionJoinLeaveGroup Permission = iota
	// PermissionSendToGroup allows publishing to a group.
	PermissionSendToGroup
	numPermissions
)

// String returns the name the REST API uses for the permission.
func (p Permission) String() string {
	switch p {
	case PermissionJoinLeaveGroup:
		return "joinLeaveGroup"
	case PermissionSendToGroup:
		return "sendToGroup"
	}
	return fmt.Sprintf("Permission(%d)", uint8(p))
}

// ParsePermission maps "joinLeaveGroup" or "sendToGroup" (any case) to a
// Permission.
func ParsePermission(s string) (Permission, error) {
	switch {
	case strings.EqualFold(s, "joinLeaveGroup"):
		return PermissionJoinLeaveGroup, nil
	case strings.EqualFold(s, "sendToGroup"):
		return PermissionSendToGroup, nil
	}
	return 0, fmt.Errorf("%w: %q", ErrInvalidPermission, s)
}

// Limits on permissions, as the official emulator enforces them.
const (
	maxLiteralRules   = 1000
	maxPatterns       = 10
	maxPatternLength  = 1024
	maxPatternStars   = 5
	rolePrefix        = "webpubsub."
	roleJoinLeave     = "joinLeaveGroup"
	roleSend          = "sendToGroup"
	roleJoinLeaveWild = "joinLeaveGroups."
	roleSendWild      = "sendToGroups."
)

// permissions is one connection's group permissions. A literal rule beats
// everything: granted (true) or revoked (false, which denies the group even
// where a broader role would allow it, until it is granted again).
type permissions struct {
	mu       sync.RWMutex
	all      [numPermissions]bool
	literal  [numPermissions]map[string]bool
	patterns [numPermissions][]groupPattern
}

// newPermissions parses the role strings of a token or a connect response.
// Strings that are not webpubsub roles are ignored, as the service does.
func newPermissions(roles []string) (*permissions, error) {
	p := &permissions{}
	for _, role := range roles {
		if len(role) < len(rolePrefix) || !strings.EqualFold(role[:len(rolePrefix)], rolePrefix) {
			continue
		}
		rest := role[len(rolePrefix):]
		if err := p.addRole(rest); err != nil {
			return nil, fmt.Errorf("%w: role %q: %v", ErrInvalidPermission, role, err)
		}
	}
	return p, nil
}

func (p *permissions) addRole(rest string) error {
	for perm, names := range [numPermissions][2]string{
		PermissionJoinLeaveGroup: {roleJoinLeave, roleJoinLeaveWild},
		PermissionSendToGroup:    {roleSend, roleSendWild},
	} {
		name, wild := names[0], names[1]
		switch {
		case strings.EqualFold(rest, name):
			p.all[perm] = true
			return nil
		case len(rest) > len(name)+1 && strings.EqualFold(rest[:len(name)+1], name+"."):
			// Everything after the second dot is the group, dots included.
			return p.grant(Permission(perm), rest[len(name)+1:])
		case len(rest) > len(wild) && strings.EqualFold(rest[:len(wild)], wild):
			if len(p.patterns[perm]) >= maxPatterns {
				return fmt.Errorf("more than %d wildcard roles", maxPatterns)
			}
			pat, err := compileGroupPattern(rest[len(wild):])
			if err != nil {
				return err
			}
			p.patterns[perm] = append(p.patterns[perm], pat)
			return nil
		}
	}
	return nil // an unknown webpubsub.* role grants nothing
}

// allows reports whether the connection may use perm on group. This is the one
// place a permission is checked.
func (p *permissions) allows(perm Permission, group string) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if v, ok := p.literal[perm][group]; ok {
		return v
	}
	if p.all[perm] {
		return true
	}
	for _, pat := range p.patterns[perm] {
		if pat.match(group) {
			return true
		}
	}
	return false
}

// allowsAll reports whether perm is held on every group.
func (p *permissions) allowsAll(perm Permission) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.all[perm]
}

// grant allows perm on group, or on every group when group is empty.
func (p *permissions) grant(perm Permission, group string) error {
	if perm >= numPermissions {
		return ErrInvalidPermission
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if group == "" {
		p.all[perm] = true
		// Granting every group lifts earlier literal revocations.
		for g, v := range p.literal[perm] {
			if !v {
				delete(p.literal[perm], g)
			}
		}
		return nil
	}
	return p.setLiteral(perm, group, true)
}

// revoke denies perm on group, or removes it from every group when group is
// empty.
func (p *permissions) revoke(perm Permission, group string) error {
	if perm >= numPermissions {
		return ErrInvalidPermission
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if group == "" {
		p.all[perm] = false
		p.literal[perm] = nil
		p.patterns[perm] = nil
		return nil
	}
	return p.setLiteral(perm, group, false)
}

func (p *permissions) setLiteral(perm Permission, group string, v bool) error {
	if p.literal[perm] == nil {
		p.literal[perm] = make(map[string]bool)
	}
	if _, ok := p.literal[perm][group]; !ok && len(p.literal[perm]) >= maxLiteralRules {
		return ErrTooManyPermissions
	}
	p.literal[perm][group] = v
	return nil
}

// groupPattern is a compiled wildcard group role (concept-wildcard-group-roles):
// ? is one character but '.', * is any run without '.', ** any run at all,
// and \ escapes \, * and ?. Matching is case-sensitive.
type groupPattern []patternToken

type patternToken struct {
	kind byte // 'l' literal, '?' one, '*' star, 'D' double star
	r    rune
}

// String is the pattern as a role names it.
func (p groupPattern) String() string {
	var b strings.Builder
	for _, t := range p {
		switch t.kind {
		case 'l':
			if t.r == '\\' || t.r == '*' || t.r == '?' {
				b.WriteByte('\\')
			}
			b.WriteRune(t.r)
		case 'D':
			b.WriteString("**")
		default:
			b.WriteByte(t.kind)
		}
	}
	return b.String()
}

func compileGroupPattern(s string) (groupPattern, error) {
	if s == "" || len(s) > maxPatternLength {
		return nil, fmt.Errorf("a wildcard pattern must be 1 to %d characters", maxPatternLength)
	}
	var toks groupPattern
	stars := 0
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch r {
		case '\\':
			if i >= len(s) || (s[i] != '\\' && s[i] != '*' && s[i] != '?') {
				return nil, fmt.Errorf(`'\' must escape '\', '*' or '?'`)
			}
			toks = append(toks, patternToken{'l', rune(s[i])})
			i++
		case '?':
			toks = append(toks, patternToken{kind: '?'})
		case '*':
			if i < len(s) && s[i] == '*' {
				i++
				stars += 2
				toks = append(toks, patternToken{kind: 'D'})
			} else {
				stars++
				toks = append(toks, patternToken{kind: '*'})
			}
		default:
			toks = append(toks, patternToken{'l', r})
		}
	}
	if stars > maxPatternStars {
		return nil, fmt.Errorf("at most %d '*' in a wildcard pattern", maxPatternStars)
	}
	return toks, nil
}

// match runs the pattern as an NFA over the runes of group: linear in
// len(group) × len(pattern), whatever the stars.
func (p groupPattern) match(group string) bool {
	cur := make([]bool, len(p)+1)
	next := make([]bool, len(p)+1)
	cur[0] = true
	p.closure(cur)
	for _, c := range group {
		clear(next)
		any := false
		for t, on := range cur[:len(p)] {
			if !on {
				continue
			}
			switch tok := p[t]; tok.kind {
			case 'l':
				if c == tok.r {
					next[t+1], any = true, true
				}
			case '?':
				if c != '.' {
					next[t+1], any = true, true
				}
			case '*':
				if c != '.' {
					next[t], any = true, true
				}
			case 'D':
				next[t], any = true, true
			}
		}
		if !any {
			return false
		}
		p.closure(next)
		cur, next = next, cur
	}
	return cur[len(p)]
}

// closure lets star tokens match the empty string.
func (p groupPattern) closure(set []bool) {
	for t := range p {
		if set[t] && (p[t].kind == '*' || p[t].kind == 'D') {
			set[t+1] = true
		}
	}
}
