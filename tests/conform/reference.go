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
	if t == nil {
		return fmt.Errorf("conform: dtype %v is not registered", dt)
	}
	k := t.Kernel(op)
	if k == nil {
		return fmt.Errorf("conform: %v has no op %v", t.Name, op)
	}
	k.ReduceAt(kernel.Generic, nil, dst, srcs)
	k.Finish(dst, len(srcs))
	return nil
}
