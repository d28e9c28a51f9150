package dragonboat

import (
	"fmt"
	"sync"

	"github.com/lni/dragonboat/v4/logger"
)

// quietLogging silences Dragonboat's own logger, which is global to the
// process and otherwise prints every election and connection attempt. It
// runs once per process; if the process installed a logger factory of its
// own before the first New, that one is kept (Dragonboat panics when a
// factory is set twice, which quietLogging absorbs).
var quietLogging = sync.OnceFunc(func() {
	defer func() { _ = recover() }()
	logger.SetLoggerFactory(func(string) logger.ILogger { return quietLogger{} })
})

// quietLogger drops every message but Panicf, which still panics: Dragonboat
// relies on it to stop on invariant violations.
type quietLogger struct{}

func (quietLogger) SetLevel(logger.LogLevel)  {}
func (quietLogger) Debugf(string, ...any)     {}
func (quietLogger) Infof(string, ...any)      {}
func (quietLogger) Warningf(string, ...any)   {}
func (quietLogger) Errorf(string, ...any)     {}
func (quietLogger) Panicf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
