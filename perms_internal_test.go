package pubsub

import (
	"regexp"
	"strings"
	"testing"
)

// patternRegexp is a slow reference for groupPattern: the documented rules
// written as a regular expression.
func patternRegexp(p string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(p); i++ {
		switch {
		case p[i] == '\\' && i+1 < len(p):
			i++
			b.WriteString(regexp.QuoteMeta(p[i : i+1]))
		case p[i] == '*' && i+1 < len(p) && p[i+1] == '*':
			i++
			b.WriteString("(?s:.*)")
		case p[i] == '*':
			b.WriteString(`[^.]*`)
		case p[i] == '?':
			b.WriteString(`[^.]`)
		default:
			b.WriteString(regexp.QuoteMeta(p[i : i+1]))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

func FuzzGroupPattern(f *testing.F) {
	for _, seed := range [][2]string{
		{"chat-*", "chat-1"}, {"chat-*", "chat.1"}, {"a.**", "a.b.c"}, {"a.?1", "a.b1"},
		{`lit\*`, "lit*"}, {"**.x", "a.b.x"}, {"*?*", "ab"}, {"a*b*c", "aXbYc"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, pattern, group string) {
		pat, err := compileGroupPattern(pattern)
		if err != nil {
			return
		}
		if strings.ContainsRune(pattern+group, 0xFFFD) || !isASCII(pattern) || !isASCII(group) {
			return // the reference works on bytes
		}
		if got, want := pat.match(group), patternRegexp(pattern).MatchString(group); got != want {
			t.Fatalf("pattern %q on %q: match %v, reference %v", pattern, group, got, want)
		}
	})
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func TestPermissionsLiteralRuleLimit(t *testing.T) {
	p, _ := newPermissions(nil)
	for i := 0; i < maxLiteralRules; i++ {
		if err := p.grant(PermissionSendToGroup, strings.Repeat("g", i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.grant(PermissionSendToGroup, "one-more"); err != ErrTooManyPermissions {
		t.Fatalf("rule %d: %v", maxLiteralRules+1, err)
	}
	// Changing an existing rule is always possible.
	if err := p.revoke(PermissionSendToGroup, "g"); err != nil {
		t.Fatal(err)
	}
}
