// Package testutil holds helpers shared by Ambit's tests: privilege checks, leak checks and polling.
// Production code never imports it.
package testutil
