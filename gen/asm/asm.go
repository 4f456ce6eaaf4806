// Package asm emits the AVX2 and AVX-512 reduction kernels with avo.
package asm

import "github.com/gocoll/gocoll/gen/spec"

// Generate writes the amd64 kernels for s into dir (the generated kernels
// package): reduce_amd64.s, reduce_amd64.go and reduce_other.go. See the
// contract in generated/kernels' doc comment.
func Generate(s *spec.Spec, dir string) error {
	_ = s
	_ = dir
	return nil // filled in by the kernels work (issue 2)
}
