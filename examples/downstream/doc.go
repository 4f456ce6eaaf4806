// Package downstream shows a module outside gocoll generating its own typed
// API and kernels from its own spec with gentool (see README.md): a subset
// of gocoll's dtypes plus complex64, which gocoll lacks, run through
// gocoll's runtime.
package downstream

//go:generate go tool gentool -spec spec.yaml -out internal
