package main

// HTTPS for the command: a certificate of the user's (-tls-cert, -tls-key),
// or a local development CA made once in the user's config directory and a
// localhost certificate it signs (-tls self-signed). Azure's server SDKs
// refuse an http:// endpoint unless the application opts in, so an Azure
// sample runs unchanged only against https://.

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// tlsFlags are the command's TLS flags; none set, plain HTTP.
type tlsFlags struct {
	mode, certFile, keyFile, dir string
}

func addTLSFlags(fs *flag.FlagSet) *tlsFlags {
	f := &tlsFlags{}
	fs.StringVar(&f.mode, "tls", "", `"self-signed": serve HTTPS with a localhost certificate signed by a local development CA, made once in -tls-dir and reused (trust its ca.pem, e.g. NODE_EXTRA_CA_CERTS=ca.pem)`)
	fs.StringVar(&f.certFile, "tls-cert", "", "PEM certificate (chain) file to serve HTTPS with; needs -tls-key")
	fs.StringVar(&f.keyFile, "tls-key", "", "PEM private key file of -tls-cert")
	fs.StringVar(&f.dir, "tls-dir", "", "folder of the local CA and certificate of -tls self-signed (default <user config dir>/webpubsub/tls)")
	return f
}

// config checks the flags and returns the server's TLS configuration, nil
// for plain HTTP. note gets, in self-signed mode, where the CA is and how
// to trust it.
func (f *tlsFlags) config(log *slog.Logger, note io.Writer) (*tls.Config, error) {
	switch {
	case f.mode != "" && f.mode != "self-signed":
		return nil, fmt.Errorf("-tls %q: the only mode is self-signed (for a certificate of your own, use -tls-cert and -tls-key)", f.mode)
	case f.mode != "" && (f.certFile != "" || f.keyFile != ""):
		return nil, errors.New("-tls self-signed and -tls-cert/-tls-key exclude each other")
	case (f.certFile == "") != (f.keyFile == ""):
		return nil, errors.New("-tls-cert and -tls-key go together: give both, the certificate and its private key")
	case f.dir != "" && f.mode == "":
		return nil, errors.New("-tls-dir needs -tls self-signed")
	}
	var cert tls.Certificate
	switch {
	case f.certFile != "":
		var err error
		if cert, err = tls.LoadX509KeyPair(f.certFile, f.keyFile); err != nil {
			return nil, fmt.Errorf("-tls-cert %s, -tls-key %s: %w", f.certFile, f.keyFile, err)
		}
		log.Info("TLS", "cert", f.certFile)
	case f.mode == "self-signed":
		dir := f.dir
		if dir == "" {
			cfg, err := os.UserConfigDir()
			if err != nil {
				return nil, fmt.Errorf("-tls self-signed: no user config directory for the local CA (%w); give one with -tls-dir", err)
			}
			dir = filepath.Join(cfg, "webpubsub", "tls")
		}
		lt, err := localTLS(dir, time.Now())
		if err != nil {
			return nil, err
		}
		cert = lt.cert
		log.Info("TLS with the local development CA", "ca", lt.caFile, "caCreated", lt.caCreated, "certIssued", lt.leafIssued, "certExpires", lt.cert.Leaf.NotAfter.Format(time.DateOnly))
		writeTrustNote(note, lt)
	default:
		return nil, nil
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		// HTTP/1.1 only: WebSocket upgrades need it (Hijack), and the
		// server's limits are made and tested for it.
		NextProtos: []string{"http/1.1"},
		MinVersion: tls.VersionTLS12,
	}, nil
}

// warnEndpointScheme warns when clients are told http:// but the server
// only speaks TLS (a -connection-string made for plain HTTP).
func warnEndpointScheme(log *slog.Logger, endpoint string, tlsOn bool) {
	if u, err := url.Parse(endpoint); err == nil && tlsOn && u.Scheme == "http" {
		log.Warn("the connection string's Endpoint is http:// but the server serves HTTPS: SDKs using it will fail; give it an https:// Endpoint", "endpoint", endpoint)
	}
}

// reachableAddr is the address clients are told for a listener on addr:
// 127.0.0.1 for an unspecified host (":8080" listens on all of them), a
// host that clients can dial and that the local certificate is for.
func reachableAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err == nil && ip != nil && ip.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}

// The local CA's names and lifetimes. A leaf lives 825 days, the longest
// Apple's platforms accept for a TLS server certificate, and is re-issued a
// month before it ends; the CA, trusted by hand, lives twenty years.
const (
	caCommonName  = "webpubsub local development CA"
	caValidity    = 20 * 365 * 24 * time.Hour
	leafValidity  = 825 * 24 * time.Hour
	leafRenewal   = 30 * 24 * time.Hour
	caCertName    = "ca.pem"
	caKeyName     = "ca-key.pem"
	leafCertName  = "localhost.pem"
	leafKeyName   = "localhost-key.pem"
	lockFileName  = ".lock"
	localhostName = "localhost"
)

// leafIPs are the addresses the leaf certificate is for, with localhost.
var leafIPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}

// localTLSFiles is the local CA and its current leaf certificate.
type localTLSFiles struct {
	caFile     string
	ca         *x509.Certificate
	cert       tls.Certificate // the leaf, Leaf set
	caCreated  bool            // the CA was made now: the user must trust it
	leafIssued bool            // the leaf was (re-)issued now
}

// localTLS loads the local CA of dir, making it the first time, and a leaf
// certificate for localhost it signed, issuing one when there is none
// usable. A CA that exists but cannot be used is an error, not replaced:
// the user may trust it, and a new one would silently break that.
func localTLS(dir string, now time.Time) (*localTLSFiles, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("-tls self-signed: %w", err)
	}
	// Nodes of a local cluster may start together with one folder: one
	// makes the CA, the others read it.
	unlock, err := lockDir(filepath.Join(dir, lockFileName))
	if err != nil {
		return nil, fmt.Errorf("-tls self-signed: locking %s: %w", dir, err)
	}
	defer unlock()

	lt := &localTLSFiles{caFile: filepath.Join(dir, caCertName)}
	ca, caKey, err := loadCA(dir, now)
	if err == errNoCA {
		ca, caKey, err = createCA(dir, now)
		lt.caCreated = true
	}
	if err != nil {
		return nil, err
	}
	lt.ca = ca
	if cert, err := loadLeaf(dir, ca, now); err == nil {
		lt.cert = cert
		return lt, nil
	}
	if lt.cert, err = issueLeaf(dir, ca, caKey, now); err != nil {
		return nil, err
	}
	lt.leafIssued = true
	return lt, nil
}

// errNoCA: neither of the CA's files is there (one alone is an error).
var errNoCA = errors.New("no local CA")

// loadCA reads the CA of dir; errNoCA when there is none.
func loadCA(dir string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	certFile, keyFile := filepath.Join(dir, caCertName), filepath.Join(dir, caKeyName)
	certPEM, errCert := os.ReadFile(certFile)
	keyPEM, errKey := os.ReadFile(keyFile)
	if errors.Is(errCert, fs.ErrNotExist) && errors.Is(errKey, fs.ErrNotExist) {
		return nil, nil, errNoCA
	}
	bad := func(err error) error {
		return fmt.Errorf("-tls self-signed: the local CA in %s cannot be used: %w; remove %s and %s to make a new one (and trust the new one instead)", dir, err, caCertName, caKeyName)
	}
	if err := errors.Join(errCert, errKey); err != nil {
		return nil, nil, bad(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, bad(err)
	}
	ca := pair.Leaf
	if !ca.IsCA {
		return nil, nil, bad(errors.New("its certificate is not a CA"))
	}
	if now.After(ca.NotAfter) {
		return nil, nil, bad(fmt.Errorf("it expired on %s", ca.NotAfter.Format(time.DateOnly)))
	}
	return ca, pair.PrivateKey.(crypto.Signer), nil
}

// createCA makes the CA: ECDSA P-256, name-constrained to the leaf's
// names, so that its key, if it leaked, could not impersonate any other
// site to a machine that trusts it.
func createCA(dir string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:                serial(),
		Subject:                     pkix.Name{CommonName: caCommonName, Organization: []string{"webpubsub local development"}},
		NotBefore:                   now.Add(-time.Hour), // clocks differ a little
		NotAfter:                    now.Add(caValidity),
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLenZero:              true,
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         []string{localhostName},
		PermittedIPRanges:           []*net.IPNet{{IP: net.IPv4(127, 0, 0, 0).To4(), Mask: net.CIDRMask(8, 32)}, {IP: net.IPv6loopback, Mask: net.CIDRMask(128, 128)}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	// The key first: a CA certificate without its key would be refused at
	// the next start.
	if err := writeFileAtomic(filepath.Join(dir, caKeyName), pemBytes("PRIVATE KEY", keyDER), 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(filepath.Join(dir, caCertName), pemBytes("CERTIFICATE", der), 0o644); err != nil {
		return nil, nil, err
	}
	return ca, key, nil
}

// loadLeaf reads the leaf of dir and checks that it can serve: its key
// matches, ca signed it for every local name, and it is not near its end.
func loadLeaf(dir string, ca *x509.Certificate, now time.Time) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, leafCertName), filepath.Join(dir, leafKeyName))
	if err != nil {
		return tls.Certificate{}, err
	}
	if cert.Leaf.NotAfter.Sub(now) < leafRenewal {
		return tls.Certificate{}, errors.New("near its end")
	}
	if err := verifyLocal(cert.Leaf, ca, now); err != nil {
		return tls.Certificate{}, err
	}
	return cert, nil
}

// verifyLocal checks that ca signed leaf for localhost and each of leafIPs.
func verifyLocal(leaf, ca *x509.Certificate, now time.Time) error {
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, name := range append([]string{localhostName}, ipStrings()...) {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, CurrentTime: now}); err != nil {
			return err
		}
	}
	return nil
}

func ipStrings() []string {
	var s []string
	for _, ip := range leafIPs {
		s = append(s, ip.String())
	}
	return s
}

// issueLeaf makes a new key and a certificate for localhost signed by ca,
// and writes both to dir.
func issueLeaf(dir string, ca *x509.Certificate, caKey crypto.Signer, now time.Time) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	notAfter := now.Add(leafValidity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: localhostName, Organization: []string{"webpubsub local development"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{localhostName},
		IPAddresses:  leafIPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	certPEM, keyPEM := pemBytes("CERTIFICATE", der), pemBytes("PRIVATE KEY", keyDER)
	if err := writeFileAtomic(filepath.Join(dir, leafKeyName), keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := writeFileAtomic(filepath.Join(dir, leafCertName), certPEM, 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n.Add(n, big.NewInt(1)) // positive, never zero
}

func pemBytes(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// writeFileAtomic writes through a temporary file and a rename, so that a
// crash never leaves half a key behind; the file has perm from the start.
func writeFileAtomic(name string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename, nothing
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), name)
}

// writeTrustNote tells the user, on stderr, where the CA is and how each
// kind of client trusts it.
func writeTrustNote(w io.Writer, lt *localTLSFiles) {
	ca := lt.caFile
	var b bytes.Buffer
	if lt.caCreated {
		fmt.Fprintf(&b, "webpubsub: made a local development CA, %s; trust it once where your clients run:\n", ca)
	} else {
		fmt.Fprintf(&b, "webpubsub: HTTPS with a certificate of the local development CA %s; clients trust it with:\n", ca)
	}
	fmt.Fprintf(&b, "  Node:    NODE_EXTRA_CA_CERTS=%s node app.js\n", shellQuote(ca))
	fmt.Fprintf(&b, "  Python:  REQUESTS_CA_BUNDLE=%s (requests, the Azure SDK), SSL_CERT_FILE=%s (ssl, websocket-client)\n", shellQuote(ca), shellQuote(ca))
	fmt.Fprintf(&b, "  Go:      x509.CertPool.AppendCertsFromPEM of it in tls.Config.RootCAs (or SSL_CERT_FILE=%s on Linux)\n", shellQuote(ca))
	fmt.Fprintf(&b, "  Browser or OS: import it as a trusted certificate authority (it can only vouch for localhost, 127.0.0.0/8 and ::1)\n")
	w.Write(b.Bytes())
}

// shellQuote quotes s for a POSIX shell when it needs quoting.
func shellQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\n'\"\\$`&|;<>()*?[]#~=%!{}") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
