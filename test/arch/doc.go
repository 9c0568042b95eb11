// Package arch enforces the dependency rules of ARCHITECTURE.md as tests, so a change that breaks one
// fails `make test` rather than waiting for review.
package arch
