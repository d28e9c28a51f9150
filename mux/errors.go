package mux

import "errors"

// Errors returned by the Mux. Configuration errors (Config.Validate, SetVIP,
// SetSNATRanges, SetBackendState) are *ananta.ValidationError values naming
// the field; they match ananta.ErrInvalidConfig with errors.Is.
var (
	// ErrClosed is returned by Run and by the configuration methods after
	// Close.
	ErrClosed = errors.New("mux: closed")
	// ErrRunning is returned by Run when the Mux is already running.
	ErrRunning = errors.New("mux: already running")
	// ErrUnknownVIP is returned by DeleteVIP, SetSNATRanges and
	// SetBackendState for a VIP that SetVIP has not configured.
	ErrUnknownVIP = errors.New("mux: unknown VIP")
	// ErrUnknownBackend is returned by SetBackendState for a DIP and port
	// that no endpoint of the VIP has.
	ErrUnknownBackend = errors.New("mux: unknown backend")
)
