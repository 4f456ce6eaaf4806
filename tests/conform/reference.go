package conform

import (
	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/kernels"
)

// referenceReduce computes dst = srcs[0] op srcs[1] op ... (in rank order)
// and applies the op's finishing step (avg's divide) once. It runs at the
// active ISA level: kernels exports no way to pick the pure-Go kernels
// without switching the whole process (SetISA), which would change what
// the backend under test runs too.
func referenceReduce(dt core.DType, op core.Op, dst []byte, srcs [][]byte) error {
	if err := kernels.Reduce(dt, op, dst, srcs); err != nil {
		return err
	}
	return kernels.Finish(dt, op, dst, len(srcs))
}
