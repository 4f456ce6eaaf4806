package conform

import (
	"fmt"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/kernel"
)

// referenceReduce computes dst = srcs[0] op srcs[1] op ... (in rank order)
// and applies the op's finishing step (avg's divide) once. It always runs
// the pure-Go kernels, so every backend and ISA level is held to the same
// reference while the process's active level stays what the backend uses.
func referenceReduce(dt core.DType, op core.Op, dst []byte, srcs [][]byte) error {
	t := core.LookupType(dt)
	if t == nil || t.Kernel(op) == nil {
		return fmt.Errorf("conform: %w: no kernel for %v %v", core.ErrUnsupported, dt, op)
	}
	k := t.Kernel(op)
	k.ReduceAt(kernel.Generic, nil, dst, srcs)
	k.Finish(dst, len(srcs))
	return nil
}
