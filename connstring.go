package pubsub

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
)

// ErrInvalidConnectionString is returned by ParseConnectionString.
var ErrInvalidConnectionString = errors.New("pubsub: invalid connection string")

// ConnectionString is an Azure Web PubSub connection string:
// Endpoint=http://localhost:8080;AccessKey=…;Version=1.0;
type ConnectionString struct {
	// Endpoint is the service's base URL, with the Port key applied.
	Endpoint  string
	AccessKey string
}

// ParseConnectionString parses a connection string the way Azure's SDKs do:
// keys are case-insensitive, values split at the first '=', a Port key
// replaces the endpoint's port, and Version is ignored. Its errors quote no
// part of s, which may be the key.
func ParseConnectionString(s string) (ConnectionString, error) {
	var cs ConnectionString
	port := ""
	parts := strings.Split(strings.TrimSpace(s), ";")
	for i, part := range parts {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return ConnectionString{}, fmt.Errorf("%w: part %d of %d (separated by ';') is not key=value", ErrInvalidConnectionString, i+1, len(parts))
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "endpoint":
			cs.Endpoint = strings.TrimRight(strings.TrimSpace(v), "/")
		case "accesskey":
			cs.AccessKey = strings.TrimSpace(v)
		case "port":
			port = strings.TrimSpace(v)
		}
	}
	if cs.Endpoint == "" || cs.AccessKey == "" {
		return ConnectionString{}, fmt.Errorf("%w: Endpoint and AccessKey are required", ErrInvalidConnectionString)
	}
	u, err := url.Parse(cs.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return ConnectionString{}, fmt.Errorf("%w: Endpoint must be an http or https URL", ErrInvalidConnectionString)
	}
	if port != "" {
		u.Host = u.Hostname() + ":" + port
		cs.Endpoint = u.String()
	}
	return cs, nil
}

// String formats the connection string as Azure prints it, with the
// access key: what a client of the service needs, and what
// ParseConnectionString reads back. Log or show Redacted instead.
func (cs ConnectionString) String() string {
	return "Endpoint=" + cs.Endpoint + ";AccessKey=" + cs.AccessKey + ";Version=1.0;"
}

// Redacted is String with the access key replaced by "***", for logs and
// errors, as url.URL.Redacted hides a password.
func (cs ConnectionString) Redacted() string {
	key := ""
	if cs.AccessKey != "" {
		key = "***"
	}
	return "Endpoint=" + cs.Endpoint + ";AccessKey=" + key + ";Version=1.0;"
}

// LogValue makes log/slog log the Redacted form: a ConnectionString passed
// to a logger never shows its key, with any handler.
func (cs ConnectionString) LogValue() slog.Value { return slog.StringValue(cs.Redacted()) }

// sha1Thumbprint is a certificate's thumbprint as Azure reports it.
func sha1Thumbprint(der []byte) string {
	sum := sha1.Sum(der)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}
