package pubsub

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
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
// replaces the endpoint's port, and Version is ignored.
func ParseConnectionString(s string) (ConnectionString, error) {
	var cs ConnectionString
	port := ""
	for _, part := range strings.Split(strings.TrimSpace(s), ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return cs, fmt.Errorf("%w: %q is not key=value", ErrInvalidConnectionString, part)
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
		return cs, fmt.Errorf("%w: Endpoint and AccessKey are required", ErrInvalidConnectionString)
	}
	u, err := url.Parse(cs.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return cs, fmt.Errorf("%w: Endpoint must be an http or https URL", ErrInvalidConnectionString)
	}
	if port != "" {
		u.Host = u.Hostname() + ":" + port
		cs.Endpoint = u.String()
	}
	return cs, nil
}

// String formats the connection string as Azure prints it.
func (cs ConnectionString) String() string {
	return "Endpoint=" + cs.Endpoint + ";AccessKey=" + cs.AccessKey + ";Version=1.0;"
}

// sha1Thumbprint is a certificate's thumbprint as Azure reports it.
func sha1Thumbprint(der []byte) string {
	sum := sha1.Sum(der)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}
