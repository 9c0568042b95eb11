package policy

import (
	"errors"
	"fmt"
	"strings"
)

// ErrBadTemplate is wrapped by ValidatePath errors.
var ErrBadTemplate = errors.New("invalid path template")

// IsTemplate reports whether p uses Istio's path template syntax.
func IsTemplate(p string) bool { return strings.Contains(p, "{") || strings.Contains(p, "}") }

// ValidatePath checks an AuthorizationPolicy path as istiod does: a template must start with "/",
// operators must be whole segments, only {*} and {**} exist, {**} must be the last segment, and a
// template may not mix in the "*" prefix/suffix wildcards.
func ValidatePath(p string) error {
	if !IsTemplate(p) {
		return nil
	}
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("%w %q: must start with /", ErrBadTemplate, p)
	}
	if strings.HasPrefix(p, "*") || strings.HasSuffix(p, "*") && !strings.HasSuffix(p, "{**}") && !strings.HasSuffix(p, "{*}") {
		return fmt.Errorf("%w %q: cannot mix * wildcards with templates", ErrBadTemplate, p)
	}
	segs := strings.Split(p[1:], "/")
	for i, s := range segs {
		switch {
		case s == "{*}":
		case s == "{**}":
			if i != len(segs)-1 {
				return fmt.Errorf("%w %q: {**} must be the last segment", ErrBadTemplate, p)
			}
		case strings.ContainsAny(s, "{}*"):
			return fmt.Errorf("%w %q: segment %q: operators must be a whole segment {*} or {**}", ErrBadTemplate, p, s)
		}
	}
	return nil
}

// MatchTemplate matches path against a validated template: {*} matches exactly one non-empty segment,
// {**} one or more segments (it may span "/"), other segments match literally. The query string is
// not part of path.
func MatchTemplate(tmpl, path string) bool {
	if !strings.HasPrefix(path, "/") || !strings.HasPrefix(tmpl, "/") {
		return false
	}
	tsegs := strings.Split(tmpl[1:], "/")
	rest := path[1:]
	for i, t := range tsegs {
		if t == "{**}" && i == len(tsegs)-1 {
			// One or more segments: a non-empty remainder.
			return rest != ""
		}
		seg, tail, more := strings.Cut(rest, "/")
		switch t {
		case "{*}":
			if seg == "" {
				return false
			}
		default:
			if seg != t {
				return false
			}
		}
		if i == len(tsegs)-1 {
			return !more
		}
		if !more {
			return false
		}
		rest = tail
	}
	return false
}

// MatchString matches v with Istio's string syntax: "*" (present), "prefix*", "*suffix", or exact.
func MatchString(pattern, v string) bool {
	switch {
	case pattern == "*":
		return v != ""
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(v, pattern[:len(pattern)-1])
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(v, pattern[1:])
	}
	return v == pattern
}

// MatchPath matches a request path against an AuthorizationPolicy path (template or string syntax).
func MatchPath(pattern, path string) bool {
	if IsTemplate(pattern) {
		return MatchTemplate(pattern, path)
	}
	return MatchString(pattern, path)
}
