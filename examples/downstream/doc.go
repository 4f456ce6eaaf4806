// Package downstream shows a module outside gocoll generating its own,
// smaller typed API from its own spec with gentool (see README.md).
package downstream

//go:generate go tool gentool -spec spec.yaml -out internal
