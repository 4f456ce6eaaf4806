// Package tests holds gocoll's cross-backend conformance suite: real
// processes (internal/proctest) meet through dispatch.Init and run every
// case of the spec (tests/conform) on every backend dispatch offers, at
// 1 to 8 ranks, plus the errors every backend must give: ranks that
// disagree on a collective's arguments, and a rank that never arrives.
//
// Run it with
//
//	go test ./tests/            # every backend, np = 1..8 (a few minutes on 2 cores)
//	go test -short ./tests/     # np = 1, 2, 3, 8 with small sizes
//
// A backend that dispatch does not offer is skipped with a message saying so.
package tests
