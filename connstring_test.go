package pubsub_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/embedwps/pubsub"
)

const secretKey = "SECRET-0123456789abcdefghijklmnopqrstuvwxyz"

// TestConnectionStringRedacted: Redacted and slog show everything but the
// key; String is the whole connection string, which parses back.
func TestConnectionStringRedacted(t *testing.T) {
	cs, err := pubsub.ParseConnectionString("Endpoint=https://example.com;AccessKey=" + secretKey + ";Version=1.0;")
	if err != nil {
		t.Fatal(err)
	}
	const want = "Endpoint=https://example.com;AccessKey=***;Version=1.0;"
	if got := cs.Redacted(); got != want {
		t.Fatalf("Redacted() = %q, want %q", got, want)
	}
	if got := (pubsub.ConnectionString{Endpoint: "http://x"}).Redacted(); got != "Endpoint=http://x;AccessKey=;Version=1.0;" {
		t.Fatalf("no key: %q", got)
	}
	if back, err := pubsub.ParseConnectionString(cs.String()); err != nil || back != cs {
		t.Fatalf("String() %q parses to %+v, %v", cs.String(), back, err)
	}
	var out bytes.Buffer
	for _, h := range []slog.Handler{slog.NewTextHandler(&out, nil), slog.NewJSONHandler(&out, nil)} {
		slog.New(h).Info("starting", "connectionString", cs, slog.Group("config", "cs", cs))
	}
	if strings.Contains(out.String(), secretKey) || strings.Count(out.String(), "AccessKey=***") != 4 {
		t.Fatalf("logged:\n%s", out.String())
	}
}

// TestParseConnectionStringErrorsHideTheKey: a malformed connection string
// is reported without quoting any part of it, which may be the key.
func TestParseConnectionStringErrorsHideTheKey(t *testing.T) {
	for _, s := range []string{
		"Endpoint=http://localhost:8080;" + secretKey + ";Version=1.0;", // the key without its name
		secretKey,
		"AccessKey=" + secretKey,
		"Endpoint=" + secretKey + ";AccessKey=" + secretKey,
		"Endpoint=ftp://" + secretKey + ";AccessKey=" + secretKey,
		"Endpoint=http://%zz" + secretKey + ";AccessKey=" + secretKey,
	} {
		_, err := pubsub.ParseConnectionString(s)
		if !errors.Is(err, pubsub.ErrInvalidConnectionString) {
			t.Errorf("%q: %v, want ErrInvalidConnectionString", s, err)
			continue
		}
		if strings.Contains(err.Error(), "SECRET") {
			t.Errorf("the error shows the key: %v", err)
		}
	}
}
