package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tlsConfigOf parses args as the command's TLS flags and returns their
// configuration and the note written for the user.
func tlsConfigOf(t *testing.T, args ...string) (*tlsFlags, error, string) {
	t.Helper()
	fs := flag.NewFlagSet("webpubsub", flag.ContinueOnError)
	f := addTLSFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	var note bytes.Buffer
	_, err := f.config(slog.New(slog.NewTextHandler(io.Discard, nil)), &note)
	return f, err, note.String()
}

func TestTLSFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-tls-cert", "c.pem"}, "-tls-cert and -tls-key go together"},
		{[]string{"-tls-key", "k.pem"}, "-tls-cert and -tls-key go together"},
		{[]string{"-tls", "self-signed", "-tls-cert", "c.pem", "-tls-key", "k.pem"}, "exclude each other"},
		{[]string{"-tls", "selfsigned"}, `-tls "selfsigned": the only mode is self-signed`},
		{[]string{"-tls-dir", t.TempDir()}, "-tls-dir needs -tls self-signed"},
		{[]string{"-tls-cert", "missing.pem", "-tls-key", "missing-key.pem"}, "-tls-cert missing.pem, -tls-key missing-key.pem: open missing.pem: no such file"},
	} {
		if _, err, _ := tlsConfigOf(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.args, err, tc.want)
		}
	}
	if _, err, _ := tlsConfigOf(t); err != nil {
		t.Errorf("no flags: %v", err)
	}
}

// TestLocalTLSCreatedOnce: the first start makes the CA and the leaf with
// private permissions, later starts reuse both, and the CA verifies the
// leaf for every local name and nothing else.
func TestLocalTLSCreatedOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "webpubsub", "tls")
	now := time.Now()
	first, err := localTLS(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	if !first.caCreated || !first.leafIssued || first.caFile != filepath.Join(dir, "ca.pem") {
		t.Fatalf("first start: %+v", first)
	}
	for name, want := range map[string]os.FileMode{".": 0o700, "ca-key.pem": 0o600, "localhost-key.pem": 0o600, "ca.pem": 0o644, "localhost.pem": 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %v", name, fi.Mode().Perm(), err, want)
		}
	}
	ca := first.ca
	if ca.Subject.CommonName != "webpubsub local development CA" || !ca.IsCA || ca.NotAfter.Before(now.Add(10*365*24*time.Hour)) {
		t.Errorf("CA %v, until %v", ca.Subject, ca.NotAfter)
	}
	if pub, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key %T, want ECDSA P-256", ca.PublicKey)
	}

	// What a client does: trust ca.pem, nothing else.
	pemCA, _ := os.ReadFile(first.caFile)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemCA) {
		t.Fatal("ca.pem holds no certificate")
	}
	leaf := first.cert.Leaf
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "example.com"}); err == nil {
		t.Error("the leaf verifies for example.com")
	}
	if leaf.NotAfter.After(now.Add(826 * 24 * time.Hour)) {
		t.Errorf("leaf valid until %v: longer than clients accept", leaf.NotAfter)
	}

	second, err := localTLS(dir, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if second.caCreated || second.leafIssued || !second.ca.Equal(ca) || !second.cert.Leaf.Equal(leaf) {
		t.Fatalf("second start made new files: %+v", second)
	}
}

// TestLocalTLSLeafReissued: a leaf missing, unreadable, near its end or
// signed by another CA is issued again by the same CA.
func TestLocalTLSLeafReissued(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	first, err := localTLS(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	other, err := localTLS(t.TempDir(), now)
	if err != nil {
		t.Fatal(err)
	}
	otherLeaf, _ := os.ReadFile(filepath.Join(filepath.Dir(other.caFile), "localhost.pem"))
	otherKey, _ := os.ReadFile(filepath.Join(filepath.Dir(other.caFile), "localhost-key.pem"))
	for _, tc := range []struct {
		name  string
		spoil func()
		at    time.Time
	}{
		{"missing", func() { os.Remove(filepath.Join(dir, "localhost.pem")) }, now},
		{"key missing", func() { os.Remove(filepath.Join(dir, "localhost-key.pem")) }, now},
		{"unreadable", func() { os.WriteFile(filepath.Join(dir, "localhost.pem"), []byte("garbage"), 0o644) }, now},
		{"near its end", func() {}, now.Add(leafValidity - 10*24*time.Hour)},
		{"another CA's", func() {
			os.WriteFile(filepath.Join(dir, "localhost.pem"), otherLeaf, 0o644)
			os.WriteFile(filepath.Join(dir, "localhost-key.pem"), otherKey, 0o600)
		}, now},
	} {
		before, _ := os.ReadFile(filepath.Join(dir, "localhost.pem"))
		tc.spoil()
		got, err := localTLS(dir, tc.at)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got.caCreated || !got.ca.Equal(first.ca) || !got.leafIssued {
			t.Fatalf("%s: %+v, want the same CA and a new leaf", tc.name, got)
		}
		if err := verifyLocal(got.cert.Leaf, first.ca, tc.at); err != nil {
			t.Fatalf("%s: the new leaf: %v", tc.name, err)
		}
		after, _ := os.ReadFile(filepath.Join(dir, "localhost.pem"))
		if bytes.Equal(before, after) {
			t.Fatalf("%s: localhost.pem not rewritten", tc.name)
		}
	}
}

// TestLocalTLSBrokenCA: a CA that is there but unusable is an error that
// says what to do, never silently replaced (the user may trust it).
func TestLocalTLSBrokenCA(t *testing.T) {
	dir := t.TempDir()
	if _, err := localTLS(dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	os.Remove(filepath.Join(dir, "ca-key.pem"))
	_, err := localTLS(dir, time.Now())
	if err == nil || !strings.Contains(err.Error(), "cannot be used") || !strings.Contains(err.Error(), "remove ca.pem and ca-key.pem") {
		t.Fatalf("CA key missing: %v", err)
	}
	if now, _ := os.ReadFile(filepath.Join(dir, "ca.pem")); !bytes.Equal(now, caPEM) {
		t.Fatal("ca.pem replaced")
	}
	if _, err := localTLS(dir, time.Now().Add(caValidity+time.Hour)); err == nil {
		t.Fatal("an expired CA was used")
	}
}

// TestTLSSelfSignedNote: the user is told where the CA is and how Node,
// Python and a browser trust it.
func TestTLSSelfSignedNote(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "my tls")
	_, err, note := tlsConfigOf(t, "-tls", "self-signed", "-tls-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	ca := "'" + filepath.Join(dir, "ca.pem") + "'"
	for _, want := range []string{"made a local development CA", "NODE_EXTRA_CA_CERTS=" + ca, "REQUESTS_CA_BUNDLE=" + ca, "SSL_CERT_FILE=" + ca, "Browser or OS"} {
		if !strings.Contains(note, want) {
			t.Errorf("note lacks %q:\n%s", want, note)
		}
	}
	if _, err, note = tlsConfigOf(t, "-tls", "self-signed", "-tls-dir", dir); err != nil || strings.Contains(note, "made a") || !strings.Contains(note, "NODE_EXTRA_CA_CERTS=") {
		t.Fatalf("second start: %v\n%s", err, note)
	}
}

func TestReachableAddr(t *testing.T) {
	for in, want := range map[string]string{
		"[::]:8080":      "127.0.0.1:8080",
		"0.0.0.0:8443":   "127.0.0.1:8443",
		"127.0.0.1:8080": "127.0.0.1:8080",
		"[::1]:8080":     "[::1]:8080",
		"10.1.2.3:80":    "10.1.2.3:80",
	} {
		if got := reachableAddr(in); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
	if cs, err := connectionString("", "https", "[::]:8443"); err != nil || cs.Endpoint != "https://127.0.0.1:8443" {
		t.Errorf("all interfaces: %+v %v", cs, err)
	}
}

// TestEndpointSchemeWarning: an http:// Endpoint on a TLS server is
// warned about; an https:// one behind plain HTTP (a TLS load balancer in
// front) is not.
func TestEndpointSchemeWarning(t *testing.T) {
	for _, tc := range []struct {
		endpoint string
		tls      bool
		warn     bool
	}{
		{"http://localhost:8080", true, true},
		{"https://localhost:8080", true, false},
		{"https://lb.example.com", false, false},
		{"http://localhost:8080", false, false},
	} {
		var b bytes.Buffer
		warnEndpointScheme(slog.New(slog.NewTextHandler(&b, nil)), tc.endpoint, tc.tls)
		if got := strings.Contains(b.String(), "level=WARN"); got != tc.warn {
			t.Errorf("%s, TLS %v: warned %v\n%s", tc.endpoint, tc.tls, got, b.String())
		}
	}
}
