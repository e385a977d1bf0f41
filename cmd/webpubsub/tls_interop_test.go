package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/embedwps/pubsub"
	"github.com/embedwps/pubsub/internal/wstest"
)

// startBinary runs bin on a free port with args, with the test's
// environment less the variables that would change it, and returns the
// connection string it printed and its stderr.
func startBinary(t *testing.T, bin string, env []string, args ...string) (pubsub.ConnectionString, *logBuffer) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	cmd.Env = append(envWithout("WEBPUBSUB_CONNECTION_STRING", "WEBPUBSUB_NATS_URL", "WEBPUBSUB_NODE_ID"), env...)
	stderr := &logBuffer{}
	cmd.Stderr = stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }() // after the read: Wait closes stdout
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	if err != nil {
		t.Fatalf("no connection string: %v\n%s", err, stderr)
	}
	cs, err := pubsub.ParseConnectionString(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	return cs, stderr
}

// envWithout is the test's environment without the variables named.
func envWithout(names ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, n := range names {
			drop = drop || name == n
		}
		if !drop {
			env = append(env, kv)
		}
	}
	return env
}

// caTrust is what trusting the CA file means for every client.
var caTrust = []string{"NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "WEBSOCKET_CLIENT_CA_BUNDLE"}

// runNode runs a Node script of interop/ to its end with env added (and
// any CA trust of the test's own environment removed) and returns its JSON
// lines by step.
func runNode(t *testing.T, dir string, env []string, script string, args ...string) map[string]map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{script}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(envWithout(caTrust...), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node %s: %v\n%s", script, err, out)
	}
	steps := map[string]map[string]any{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("node printed %q", line)
		}
		steps[m["step"].(string)] = m
	}
	return steps
}

// rootsOf is a pool of the certificates in the PEM file name.
func rootsOf(t *testing.T, name string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(b) {
		t.Fatalf("%s holds no certificate", name)
	}
	return roots
}

// TestSelfSignedBinary: -tls self-signed makes its CA in the user's config
// directory, says where it is and how to trust it, prints an https://
// Endpoint, and serves REST and wss:// to a client that trusts the CA only.
// A second start reuses the CA.
func TestSelfSignedBinary(t *testing.T) {
	bin := buildServer(t)
	// os.UserConfigDir of the server, as this process (set first) sees it.
	config := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", config)
	t.Setenv("HOME", config)
	userConfig, err := os.UserConfigDir()
	if err != nil || !strings.HasPrefix(userConfig, config) {
		t.Fatalf("user config directory %s: %v", userConfig, err)
	}
	cs, stderr := startBinary(t, bin, nil, "-tls", "self-signed")
	if !strings.HasPrefix(cs.Endpoint, "https://127.0.0.1:") {
		t.Fatalf("Endpoint %s", cs.Endpoint)
	}
	caFile := filepath.Join(userConfig, "webpubsub", "tls", "ca.pem")
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the trust note", func() bool { return strings.Contains(stderr.String(), "NODE_EXTRA_CA_CERTS="+caFile) })
	if strings.Contains(stderr.String(), cs.AccessKey) {
		t.Fatal("the key is in the logs")
	}

	roots := rootsOf(t, caFile)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	defer tr.CloseIdleConnections()
	for _, host := range []string{"", "localhost"} {
		u := cs.Endpoint + "/api/health"
		if host != "" {
			_, port, _ := net.SplitHostPort(strings.TrimPrefix(cs.Endpoint, "https://"))
			u = "https://" + host + ":" + port + "/api/health"
		}
		req, _ := http.NewRequest("HEAD", u, nil)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.TLS == nil {
			t.Fatalf("%s: %d", u, resp.StatusCode)
		}
	}
	// Without the CA: refused (the system's roots do not have it).
	if _, err := http.Head(cs.Endpoint + "/api/health"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("an untrusted client: %v", err)
	}

	minter, _ := pubsub.New(pubsub.Config{Endpoint: cs.Endpoint, AccessKey: cs.AccessKey})
	url, _ := minter.ClientURL("chat", pubsub.TokenOptions{UserID: "u"})
	if !strings.HasPrefix(url, "wss://") {
		t.Fatalf("client URL %s", url)
	}
	c := wstest.DialTLS(t, url, &tls.Config{RootCAs: roots}, "json.webpubsub.azure.v1")
	if m := c.NextJSON(); m["event"] != "connected" || m["userId"] != "u" {
		t.Fatalf("first message %v", m)
	}

	// Again: the same CA, no new one to trust.
	_, stderr = startBinary(t, bin, nil, "-tls", "self-signed")
	eventually(t, "the trust note", func() bool { return strings.Contains(stderr.String(), "NODE_EXTRA_CA_CERTS=") })
	if again, _ := os.ReadFile(caFile); string(again) != string(caPEM) || strings.Contains(stderr.String(), "made a local development CA") {
		t.Fatalf("the second start made a new CA:\n%s", stderr)
	}
}

// TestTLSAzureNodeSDK: an Azure app's code, unchanged (no
// allowInsecureConnection), against cmd/webpubsub -tls self-signed: the
// official server SDK over https and the official client over wss, the CA
// trusted through NODE_EXTRA_CA_CERTS. Without it, the SDK refuses the
// certificate: TLS is verified.
func TestTLSAzureNodeSDK(t *testing.T) {
	dir := wstest.Interop(t, "../../interop")
	tlsDir := t.TempDir()
	cs, _ := startBinary(t, buildServer(t), nil, "-tls", "self-signed", "-tls-dir", tlsDir)
	checkNodeApp(t, dir, cs, filepath.Join(tlsDir, "ca.pem"))

	steps := runNode(t, dir, nil, "tls-sdk.mjs", cs.String(), "certificate-error")
	e := steps["certificate-error"]
	if e == nil || e["code"] != "UNABLE_TO_VERIFY_LEAF_SIGNATURE" {
		t.Fatalf("without the CA: %v", steps)
	}
}

// TestTLSCertKeyNodeSDK: -tls-cert and -tls-key serve a certificate the
// test made, and the same app runs against it.
func TestTLSCertKeyNodeSDK(t *testing.T) {
	dir := wstest.Interop(t, "../../interop")
	caFile, certFile, keyFile := testCertificate(t, t.TempDir())
	cs, _ := startBinary(t, buildServer(t), nil, "-tls-cert", certFile, "-tls-key", keyFile)
	if !strings.HasPrefix(cs.Endpoint, "https://") {
		t.Fatalf("Endpoint %s", cs.Endpoint)
	}
	checkNodeApp(t, dir, cs, caFile)
}

// checkNodeApp runs interop/tls-sdk.mjs trusting caFile and checks what
// its client received and what its server SDK saw.
func checkNodeApp(t *testing.T, dir string, cs pubsub.ConnectionString, caFile string) {
	t.Helper()
	steps := runNode(t, dir, []string{"NODE_EXTRA_CA_CERTS=" + caFile}, "tls-sdk.mjs", cs.String())
	want := "wss://" + strings.TrimPrefix(cs.Endpoint, "https://") + "/client/hubs/chat"
	if tok := steps["token"]; tok == nil || tok["url"] != want || tok["baseUrl"] != want {
		t.Fatalf("client URL %v, want %s", tok, want)
	}
	got := steps["received"]["received"]
	wantReceived := []any{
		map[string]any{"from": "server", "dataType": "text", "data": "hello over TLS"},
		map[string]any{"from": "alice", "dataType": "json", "data": map[string]any{"from": "alice"}},
	}
	if !reflect.DeepEqual(got, wantReceived) {
		t.Fatalf("the client received %v, want %v", got, wantReceived)
	}
	if e := steps["exists"]; e == nil || e["group"] != true || e["connection"] != true || e["user"] != true {
		t.Fatalf("exists: %v", e)
	}
	if steps["done"] == nil {
		t.Fatalf("the app did not finish: %v", steps)
	}
}

// testCertificate makes a CA and a certificate it signs for 127.0.0.1, as
// a user brings their own, and returns the three PEM files.
func testCertificate(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "test server"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for name, data := range map[string][]byte{caFile: pemBytes("CERTIFICATE", caDER), certFile: pemBytes("CERTIFICATE", der), keyFile: pemBytes("PRIVATE KEY", keyDER)} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caFile, certFile, keyFile
}
