package conform

import (
	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/kernels"
)

// referenceReduce computes dst = srcs[0] op srcs[1] op ... (in rank order)
// and applies the op's finishing step (avg's divide) once. It always runs
// the pure-Go kernels, so every backend and ISA level is held to the same
// reference while the process's active level stays what the backend uses.
func referenceReduce(dt core.DType, op core.Op, dst []byte, srcs [][]byte) error {
	if err := kernels.ReduceGeneric(dt, op, dst, srcs); err != nil {
		return err
	}
	return kernels.Finish(dt, op, dst, len(srcs))
}
