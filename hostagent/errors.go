package hostagent

import "errors"

// Errors returned by this package. Returned errors may carry detail and
// match these sentinels with errors.Is.
var (
	// ErrInvalidConfig wraps every configuration error (Config.Validate,
	// EngineConfig.Validate, SetVIP, SetVM); the message names the field.
	ErrInvalidConfig = errors.New("hostagent: invalid config")
	// ErrUnknownVIP: the VIP is not configured.
	ErrUnknownVIP = errors.New("hostagent: unknown VIP")
	// ErrUnknownVM: the VM index or name is not configured.
	ErrUnknownVM = errors.New("hostagent: unknown VM")
	// ErrNoPool: no SNAT pool exists for the (VIP, DIP) pair: the VIP has
	// no SNAT, or the DIP is not a local backend of it.
	ErrNoPool = errors.New("hostagent: no SNAT pool for this VIP and DIP")
	// ErrRange: a SNAT port range that is empty, reversed, below
	// ananta.FirstSNATPort or overlapping a range the pool holds.
	ErrRange = errors.New("hostagent: invalid SNAT port range")
	// ErrClosed: the agent was closed.
	ErrClosed = errors.New("hostagent: closed")
	// ErrRunning: Run was called twice.
	ErrRunning = errors.New("hostagent: Run already called")
)
