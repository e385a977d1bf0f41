//go:build !unix

package wstest

func setReadBuffer(uintptr, int) error { return nil } // the default buffer: a slow client takes longer to fill
