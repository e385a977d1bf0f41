//go:build unix

package main

import (
	"os"
	"syscall"
)

// lockDir holds an exclusive lock on the file name (made if missing) until
// unlock; another process waits for it.
func lockDir(name string) (unlock func(), err error) {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil // closing releases the lock
}
