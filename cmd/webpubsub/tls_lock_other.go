//go:build !unix

package main

// lockDir does not lock where flock is missing: two servers making the
// local CA at the same instant may then disagree on it.
func lockDir(string) (unlock func(), err error) { return func() {}, nil }
