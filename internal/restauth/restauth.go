// Package restauth lets rest/ check a server access token with the
// service's keys and endpoint without the root package exporting them: the
// root package sets these functions when it is initialised.
package restauth

// ValidateToken checks a REST access token against svc (a *pubsub.Service):
// signed with one of its keys, in date, with an aud that audience accepts.
var ValidateToken func(svc any, raw string, audience func(aud string) bool) error

// Endpoint returns svc's public base URL, without a trailing slash.
var Endpoint func(svc any) string
