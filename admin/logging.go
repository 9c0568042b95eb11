package admin

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
)

// Log levels beyond slog's four. LevelOff is above every level a logger emits.
const (
	LevelTrace = slog.LevelDebug - 4
	LevelOff   = slog.Level(1 << 20)
)

// DefaultLogger is the name that addresses Options.Level in a level spec (istioctl sends "level:<level>"
// for a bare level).
const DefaultLogger = "level"

// ParseLevel parses one of ztunnel's level names (off, error, warn, info, debug, trace) or the istioctl
// spellings warning and critical (error).
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "trace":
		return LevelTrace, nil
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error", "critical":
		return slog.LevelError, nil
	case "off":
		return LevelOff, nil
	}
	return 0, fmt.Errorf("%w %q", ErrInvalidLevel, s)
}

// LevelName is the inverse of ParseLevel, with slog's own names for levels in between.
func LevelName(l slog.Level) string {
	switch {
	case l == LevelTrace:
		return "trace"
	case l == slog.LevelDebug:
		return "debug"
	case l == slog.LevelInfo:
		return "info"
	case l == slog.LevelWarn:
		return "warn"
	case l == slog.LevelError:
		return "error"
	case l >= LevelOff:
		return "off"
	}
	return strings.ToLower(l.String())
}

// LevelChange is a parsed level spec: the levels to set, by logger name ("" is the default logger).
type LevelChange map[string]slog.Level

// ParseLevelSpec parses an Envoy/ztunnel-style spec: comma-separated clauses, each "<level>" (the default
// logger) or "<logger>:<level>" / "<logger>=<level>". Logger names must be in known (the default logger
// is always known, also as "level"). Later clauses win.
func ParseLevelSpec(spec string, known []string) (LevelChange, error) {
	out := LevelChange{}
	for clause := range strings.SplitSeq(spec, ",") {
		clause = strings.TrimSpace(clause)
		if clause == "" {
			return nil, fmt.Errorf("%w: empty clause in %q", ErrInvalidLevel, spec)
		}
		name, lvl := "", clause
		if i := strings.LastIndexAny(clause, ":="); i >= 0 {
			name, lvl = clause[:i], clause[i+1:]
		}
		l, err := ParseLevel(lvl)
		if err != nil {
			return nil, err
		}
		if name == DefaultLogger {
			name = ""
		}
		if name != "" && !slices.Contains(known, name) {
			return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownLogger, name, strings.Join(append([]string{DefaultLogger}, known...), ", "))
		}
		out[name] = l
	}
	return out, nil
}
