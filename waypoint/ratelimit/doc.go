// Package ratelimit is the L7 waypoint's local rate limiter: Envoy's local rate limit token bucket
// (full at start, TokensPerFill added every FillInterval up to MaxTokens, one token per request). The
// clock is passed in, so decisions are deterministic in tests.
//
// It imports no other Ambit package.
package ratelimit
