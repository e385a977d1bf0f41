//go:build !unix

package wstest

// lockFile locks nothing outside Unix: run npm ci in interop/ first there.
func lockFile(string) (func(), error) { return func() {}, nil }
